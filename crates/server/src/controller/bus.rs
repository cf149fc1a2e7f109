//! The in-process event bus: entity changes and log activity, published by the controller and
//! read by whoever waits (run waiters, log followers, later `/events` and lifecycle triggers).
//! Subscribers that fall behind see `Lagged` and re-read the store: the bus wakes, the store
//! tells the truth.

use runplane_domain::RunState;
use tokio::sync::broadcast;

#[derive(Debug, Clone, PartialEq)]
pub enum BusEvent {
    RunChanged {
        project: String,
        run_id: String,
        state: RunState,
    },
    LogAppended {
        run_id: String,
        attempt: u32,
        end_offset: u64,
    },
}

impl BusEvent {
    pub fn run_id(&self) -> &str {
        match self {
            BusEvent::RunChanged { run_id, .. } | BusEvent::LogAppended { run_id, .. } => run_id,
        }
    }
}

#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<BusEvent>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(4096);
        EventBus { sender }
    }

    pub fn publish(&self, event: BusEvent) {
        // No subscriber is fine: nobody is waiting.
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BusEvent> {
        self.sender.subscribe()
    }
}
