//! Services on the engine: one container per replica, each publishing its port on loopback,
//! probed for readiness, restarted when it exits, scaled up and down.

use super::EngineFramework;
use crate::ExecutionId;
use runplane_domain::Service;

impl EngineFramework {
    pub(super) async fn start_service(
        &self,
        _execution: &ExecutionId,
        _service: &Service,
    ) -> Result<(), String> {
        Err("services are not supported on the engine framework yet".into())
    }
}
