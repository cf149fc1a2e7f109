//! The channel framework events travel on to the controller: bounded, so that a controller
//! that falls behind slows the frameworks down instead of letting memory grow, and coalescing
//! log appends, so that a chatty job cannot fill it.
//!
//! `LogAppended { end_offset }` says where the log ends now: a newer one says everything an
//! older one did. So when the newest queued event of an execution is a log append, the next
//! log append of that execution replaces its offset in place and takes no room. Every other
//! event (`Started`, `Replicas`, `Exited`, `Lost`, ...) takes one place in the queue, in the
//! order sent; when the queue is full, [`EventSender::send`] waits for room (backpressure) and
//! nothing is dropped. A log append queued before a lifecycle event of its execution stays
//! before it (it is no longer the newest, so later appends queue behind the lifecycle event).
//!
//! A log append that needs a place of its own waits for room like any event: it is the first
//! since the controller took the last one, so a chatty job waits at most once per turn of the
//! controller, and its log writer (on its own thread) with it, never a tokio worker.

use crate::{EventKind, ExecutionId, FrameworkEvent};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// How many events the server's channel holds before senders wait.
pub const DEFAULT_CAPACITY: usize = 4096;

/// A bounded, log-coalescing channel of `capacity` (at least 1) events.
pub fn channel(capacity: usize) -> (EventSender, EventReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            front_seq: 0,
            log_tail: HashMap::new(),
            senders: 1,
            receiver_alive: true,
            capacity: capacity.max(1),
        }),
        readable: Notify::new(),
        writable: Notify::new(),
    });
    (
        EventSender {
            shared: shared.clone(),
        },
        EventReceiver { shared },
    )
}

/// The receiver is gone; the event that could not be sent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the framework event receiver is gone")]
pub struct SendError(pub Box<FrameworkEvent>);

/// Why [`EventReceiver::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    #[error("no event queued")]
    Empty,
    #[error("every sender is gone")]
    Disconnected,
}

struct Shared {
    state: Mutex<State>,
    /// An event was queued, or the last sender went away.
    readable: Notify,
    /// Room was made, or the receiver went away.
    writable: Notify,
}

struct State {
    queue: VecDeque<FrameworkEvent>,
    /// The sequence number of the queue's front event (each queued event gets the next one).
    front_seq: u64,
    /// The executions whose newest queued event is a log append: that event's sequence number.
    log_tail: HashMap<ExecutionId, u64>,
    senders: usize,
    receiver_alive: bool,
    capacity: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sends framework events; cloned freely (one per task, thread or framework).
pub struct EventSender {
    shared: Arc<Shared>,
}

impl Clone for EventSender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        EventSender {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        if state.senders == 0 {
            drop(state);
            self.shared.readable.notify_one();
        }
    }
}

impl EventSender {
    /// Queues `event`, waiting while the channel is full (a log append that can be merged into
    /// the execution's queued one never waits). Fails only once the receiver is gone.
    pub async fn send(&self, event: FrameworkEvent) -> Result<(), SendError> {
        let mut event = Box::new(event);
        loop {
            let writable = self.shared.writable.notified();
            tokio::pin!(writable);
            // Registered before looking, so that room made in between still wakes us.
            writable.as_mut().enable();
            match self.try_send(event) {
                Ok(()) => return Ok(()),
                Err(Full::Closed(event)) => return Err(SendError(event)),
                Err(Full::Waiting(back)) => event = back,
            }
            writable.await;
        }
    }

    /// Sends `kind` about `execution`; an event nobody receives any more (the server is
    /// shutting down) is dropped.
    pub async fn emit(&self, execution: &ExecutionId, kind: EventKind) {
        let event = FrameworkEvent {
            execution: execution.clone(),
            kind,
        };
        if self.send(event).await.is_err() {
            tracing::debug!(?execution, "event receiver gone; dropping event");
        }
    }

    /// [`send`](Self::send) from a thread that is not a tokio worker (a log writer's).
    pub fn blocking_send(&self, event: FrameworkEvent) -> Result<(), SendError> {
        futures::executor::block_on(self.send(event))
    }

    fn try_send(&self, event: Box<FrameworkEvent>) -> Result<(), Full> {
        let mut state = self.shared.lock();
        if !state.receiver_alive {
            return Err(Full::Closed(event));
        }
        if let EventKind::LogAppended { end_offset } = event.kind {
            if let Some(seq) = state.log_tail.get(&event.execution).copied() {
                let at = (seq - state.front_seq) as usize;
                if let Some(EventKind::LogAppended { end_offset: queued }) =
                    state.queue.get_mut(at).map(|queued| &mut queued.kind)
                {
                    *queued = (*queued).max(end_offset);
                    return Ok(());
                }
            }
        }
        if state.queue.len() >= state.capacity {
            return Err(Full::Waiting(event));
        }
        let seq = state.front_seq + state.queue.len() as u64;
        if matches!(event.kind, EventKind::LogAppended { .. }) {
            state.log_tail.insert(event.execution.clone(), seq);
        } else {
            state.log_tail.remove(&event.execution);
        }
        state.queue.push_back(*event);
        drop(state);
        self.shared.readable.notify_one();
        Ok(())
    }
}

/// A sender for code that cannot wait (a watcher's synchronous handler, a log writer's
/// thread): events queue here in the order pushed, log appends coalescing as in the channel,
/// and one task forwards them, waiting on the channel as [`EventSender::send`] does. What it
/// holds while the channel is full is bounded by the executions' lifecycle changes, not by
/// how much they log.
#[cfg(feature = "kubernetes")]
#[derive(Clone)]
pub(crate) struct Outbox {
    queue: EventSender,
}

#[cfg(feature = "kubernetes")]
impl Outbox {
    /// Starts the forwarding task (on the current runtime); it ends with the last clone.
    pub(crate) fn new(events: EventSender) -> Outbox {
        let (queue, mut queued) = channel(usize::MAX);
        tokio::spawn(async move {
            while let Some(event) = queued.recv().await {
                if events.send(event).await.is_err() {
                    tracing::debug!("event receiver gone; dropping framework events");
                    return;
                }
            }
        });
        Outbox { queue }
    }

    pub(crate) fn push(&self, event: FrameworkEvent) {
        // Never full: its capacity is unbounded.
        let _ = self.queue.try_send(Box::new(event));
    }
}

enum Full {
    Waiting(Box<FrameworkEvent>),
    Closed(Box<FrameworkEvent>),
}

/// Receives framework events, in the order they were queued.
pub struct EventReceiver {
    shared: Arc<Shared>,
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_alive = false;
        state.queue.clear();
        state.log_tail.clear();
        drop(state);
        self.shared.writable.notify_waiters();
    }
}

impl EventReceiver {
    /// The next event; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<FrameworkEvent> {
        let shared = self.shared.clone();
        loop {
            let readable = shared.readable.notified();
            tokio::pin!(readable);
            readable.as_mut().enable();
            match self.try_recv() {
                Ok(event) => return Some(event),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => readable.await,
            }
        }
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Result<FrameworkEvent, TryRecvError> {
        let mut state = self.shared.lock();
        let Some(event) = state.queue.pop_front() else {
            return Err(if state.senders == 0 {
                TryRecvError::Disconnected
            } else {
                TryRecvError::Empty
            });
        };
        let seq = state.front_seq;
        state.front_seq += 1;
        if state.log_tail.get(&event.execution) == Some(&seq) {
            state.log_tail.remove(&event.execution);
        }
        drop(state);
        self.shared.writable.notify_one();
        Ok(event)
    }

    /// Changes how many events the channel holds (at least 1). A server raises it while
    /// frameworks recover executions before anything receives (recovery reports a couple of
    /// events per execution without waiting for room), and lowers it back afterwards.
    pub fn set_capacity(&self, capacity: usize) {
        self.shared.lock().capacity = capacity.max(1);
        self.shared.writable.notify_waiters();
    }

    /// How many events are queued.
    pub fn len(&self) -> usize {
        self.shared.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn event(run: &str, kind: EventKind) -> FrameworkEvent {
        FrameworkEvent {
            execution: ExecutionId {
                run_id: run.into(),
                attempt: 1,
            },
            kind,
        }
    }

    fn log(run: &str, end_offset: u64) -> FrameworkEvent {
        event(run, EventKind::LogAppended { end_offset })
    }

    fn lost(run: &str, message: &str) -> FrameworkEvent {
        event(
            run,
            EventKind::Lost {
                message: message.into(),
            },
        )
    }

    fn drain(receiver: &mut EventReceiver) -> Vec<FrameworkEvent> {
        std::iter::from_fn(|| receiver.try_recv().ok()).collect()
    }

    #[tokio::test]
    async fn log_appends_of_one_execution_collapse_into_the_latest() {
        let (sender, mut receiver) = channel(8);
        sender.send(event("a", EventKind::Started)).await.unwrap();
        for end in 1..=1000 {
            sender.send(log("a", end)).await.unwrap();
            sender.send(log("b", end * 2)).await.unwrap();
        }
        assert_eq!(
            receiver.len(),
            3,
            "one place per execution's log, whatever the volume"
        );
        assert_eq!(
            drain(&mut receiver),
            vec![
                event("a", EventKind::Started),
                log("a", 1000),
                log("b", 2000)
            ]
        );
        // Once taken, the next append queues anew.
        sender.send(log("a", 1001)).await.unwrap();
        assert_eq!(drain(&mut receiver), vec![log("a", 1001)]);
    }

    #[tokio::test]
    async fn a_log_append_never_moves_past_a_lifecycle_event() {
        let (sender, mut receiver) = channel(8);
        sender.send(log("a", 10)).await.unwrap();
        sender.send(event("a", EventKind::Started)).await.unwrap();
        sender.send(log("a", 20)).await.unwrap();
        sender.send(log("a", 30)).await.unwrap();
        sender.send(lost("a", "gone")).await.unwrap();
        sender.send(log("a", 40)).await.unwrap();
        assert_eq!(
            drain(&mut receiver),
            vec![
                log("a", 10),
                event("a", EventKind::Started),
                log("a", 30),
                lost("a", "gone"),
                log("a", 40),
            ]
        );
    }

    #[tokio::test]
    async fn lifecycle_events_keep_their_order_across_executions() {
        let (sender, mut receiver) = channel(64);
        let mut sent = Vec::new();
        for i in 0..20 {
            let run = if i % 2 == 0 { "a" } else { "b" };
            let event = lost(run, &i.to_string());
            sent.push(event.clone());
            sender.send(event).await.unwrap();
            sender.send(log(run, i)).await.unwrap();
        }
        let lifecycle: Vec<FrameworkEvent> = drain(&mut receiver)
            .into_iter()
            .filter(|e| !matches!(e.kind, EventKind::LogAppended { .. }))
            .collect();
        assert_eq!(lifecycle, sent);
    }

    #[tokio::test]
    async fn the_capacity_is_respected_and_a_full_channel_makes_senders_wait() {
        let (sender, mut receiver) = channel(3);
        for i in 0..3 {
            sender.send(lost("a", &i.to_string())).await.unwrap();
        }
        // A merged log append needs no room, a new one does.
        let blocked = tokio::spawn({
            let sender = sender.clone();
            async move {
                for i in 3..6 {
                    sender.send(lost("a", &i.to_string())).await.unwrap();
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!blocked.is_finished(), "the sender waits for room");
        assert_eq!(receiver.len(), 3, "nothing beyond the capacity");

        let mut received = Vec::new();
        while received.len() < 6 {
            received.push(receiver.recv().await.unwrap());
            assert!(receiver.len() <= 3);
        }
        blocked.await.unwrap();
        let expected: Vec<FrameworkEvent> = (0..6).map(|i| lost("a", &i.to_string())).collect();
        assert_eq!(received, expected, "nothing dropped, nothing reordered");
    }

    #[tokio::test]
    async fn a_log_append_that_needs_room_waits_too() {
        let (sender, mut receiver) = channel(1);
        sender.send(lost("a", "first")).await.unwrap();
        let waiting = tokio::spawn({
            let sender = sender.clone();
            async move { sender.send(log("b", 5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        assert_eq!(receiver.recv().await, Some(lost("a", "first")));
        waiting.await.unwrap().unwrap();
        assert_eq!(receiver.recv().await, Some(log("b", 5)));
    }

    #[tokio::test]
    async fn blocking_senders_work_from_plain_threads() {
        let (sender, mut receiver) = channel(2);
        let thread = std::thread::spawn(move || {
            for i in 0..10 {
                sender.blocking_send(lost("a", &i.to_string())).unwrap();
            }
        });
        let mut received = Vec::new();
        while let Some(event) = receiver.recv().await {
            received.push(event);
        }
        thread.join().unwrap();
        assert_eq!(
            received.len(),
            10,
            "all of them, then None once the sender is gone"
        );
    }

    #[tokio::test]
    async fn senders_fail_once_the_receiver_is_gone() {
        let (sender, receiver) = channel(1);
        sender.send(lost("a", "queued")).await.unwrap();
        let waiting = tokio::spawn({
            let sender = sender.clone();
            async move { sender.send(lost("a", "waiting")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(receiver);
        assert_eq!(
            waiting.await.unwrap(),
            Err(SendError(Box::new(lost("a", "waiting"))))
        );
        assert!(sender.send(log("a", 1)).await.is_err());
    }
}
