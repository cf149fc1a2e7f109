//! The in-process event bus: entity changes and log activity, published by the controller and
//! read by whoever waits (run waiters, log followers, later `/events` and lifecycle triggers).
//! Subscribers that fall behind see `Lagged` and re-read the store: the bus wakes, the store
//! tells the truth.

use runplane_domain::RunState;
use tokio::sync::{broadcast, watch};

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
    /// Bumped after every commit that appended to the store's event log. A `watch` rather than
    /// a bus event: readers of `/events` only need "look again", and a watch coalesces
    /// bursts and never lags.
    appended: watch::Sender<u64>,
    /// Set once when the server shuts down: long requests (followed logs, `/events`, `?wait=`)
    /// end so that the graceful shutdown is not held open by them.
    closing: watch::Sender<bool>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(4096);
        let (appended, _) = watch::channel(0);
        let (closing, _) = watch::channel(false);
        EventBus {
            sender,
            appended,
            closing,
        }
    }

    pub fn publish(&self, event: BusEvent) {
        // No subscriber is fine: nobody is waiting.
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BusEvent> {
        self.sender.subscribe()
    }

    /// Says that the store's event log has grown (call it after the commit, never before: a
    /// woken reader must find what woke it).
    pub fn events_appended(&self) {
        self.appended
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Wakes on [`EventBus::events_appended`]. Mark it seen (`borrow_and_update`) before
    /// reading the store, then wait on `changed()`: an append after the read always wakes it.
    pub fn watch_appended(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Tells every long request to end: the server is shutting down.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`EventBus::close`] was called (at once if it already was).
    pub async fn closing(&self) {
        let mut closing = self.closing.subscribe();
        // An error means the bus itself is gone: that is closing too.
        let _ = closing.wait_for(|closed| *closed).await;
    }
}
