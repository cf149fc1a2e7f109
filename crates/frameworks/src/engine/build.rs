//! Image builds on the engine: the context assembled as a tar stream, the engine's builder
//! run on it, its output into the run's log, the image tagged (and pushed) or nothing left.

use super::EngineFramework;
use crate::ExecutionId;
use runplane_domain::Build;

impl EngineFramework {
    pub(super) async fn start_build(
        &self,
        _execution: &ExecutionId,
        _build: &Build,
    ) -> Result<(), String> {
        Err("builds are not supported on the engine framework yet".into())
    }
}
