//! The events a running server reports: a closed set of kinds, each published once the thing
//! it reports is durable, fanned out to WebSocket clients and anything else that listens.
//!
//! The bus is a bounded broadcast channel: a listener that falls behind loses the oldest
//! events and is told how many (see `api::ws`), so a slow listener never slows the sender.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

/// Every kind of event, as named on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A run was created and will start (payload: the run).
    WorkflowStarted,
    /// A run reached its final state (payload: the run, with `status`).
    WorkflowCompleted,
    /// A step started.
    StepStarted,
    /// A step reached its final state.
    StepCompleted,
    /// An attempt of a step failed and it will be retried.
    StepRetrying,
    /// Lines a step wrote to its log (sent only to clients that subscribe to it).
    RunLog,
    /// An agent was switched on or off.
    AgentStatusChanged,
    /// A schedule fired.
    ScheduleFired,
    /// An alert started firing.
    AlertFiring,
    /// A firing alert resolved.
    AlertResolved,
    /// A manifest was applied: an object was created, changed or pruned.
    ManifestApplied,
    /// A manifest is invalid; its last good version stays in force.
    ManifestInvalid,
    /// A reconcile of the source finished.
    SyncCompleted,
    /// Periodic system metrics.
    SystemMetrics,
}

impl EventKind {
    /// Every kind, in a stable order.
    pub const ALL: [EventKind; 14] = [
        EventKind::WorkflowStarted,
        EventKind::WorkflowCompleted,
        EventKind::StepStarted,
        EventKind::StepCompleted,
        EventKind::StepRetrying,
        EventKind::RunLog,
        EventKind::AgentStatusChanged,
        EventKind::ScheduleFired,
        EventKind::AlertFiring,
        EventKind::AlertResolved,
        EventKind::ManifestApplied,
        EventKind::ManifestInvalid,
        EventKind::SyncCompleted,
        EventKind::SystemMetrics,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::WorkflowStarted => "workflow_started",
            EventKind::WorkflowCompleted => "workflow_completed",
            EventKind::StepStarted => "step_started",
            EventKind::StepCompleted => "step_completed",
            EventKind::StepRetrying => "step_retrying",
            EventKind::RunLog => "run_log",
            EventKind::AgentStatusChanged => "agent_status_changed",
            EventKind::ScheduleFired => "schedule_fired",
            EventKind::AlertFiring => "alert_firing",
            EventKind::AlertResolved => "alert_resolved",
            EventKind::ManifestApplied => "manifest_applied",
            EventKind::ManifestInvalid => "manifest_invalid",
            EventKind::SyncCompleted => "sync_completed",
            EventKind::SystemMetrics => "system_metrics",
        }
    }

    /// The kind with this wire name.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether clients get this kind without asking for it by name.
    pub fn sent_by_default(self) -> bool {
        self != EventKind::RunLog
    }
}

/// One event: `{"type", "payload", "timestamp"}` on the wire.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The details.
    pub payload: Value,
    /// When, RFC 3339 with milliseconds.
    pub timestamp: String,
    /// Position in the bus, increasing by one per event.
    pub sequence: u64,
}

/// A cheap-to-clone handle on the event bus.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Event>>,
    sequence: Arc<std::sync::atomic::AtomicU64>,
    /// Held from taking a sequence number to sending: events enter the channel in the
    /// order of their numbers, even when threads publish at once.
    order: Arc<std::sync::Mutex<()>>,
}

impl EventBus {
    /// A bus that keeps up to `capacity` events for each listener that falls behind.
    pub fn new(capacity: usize) -> EventBus {
        let (sender, _) = broadcast::channel(capacity.max(16));
        EventBus {
            sender,
            sequence: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            order: Arc::new(std::sync::Mutex::new(())),
        }
    }

    /// Publishes an event. Call only once what it reports is durable.
    pub fn publish(&self, kind: EventKind, payload: Value) {
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        let sequence = self
            .sequence
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let event = Event {
            kind,
            payload,
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            sequence,
        };
        // No listener is not an error.
        let _ = self.sender.send(Arc::new(event));
    }

    /// A new listener, hearing events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }

    /// Events published so far.
    pub fn published(&self) -> u64 {
        self.sequence.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_serialize_by_wire_name() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                Value::from(kind.as_str())
            );
        }
        assert_eq!(EventKind::parse("workflow_finished"), None);
    }

    #[test]
    fn events_published_at_once_from_threads_arrive_in_sequence_order() {
        let bus = EventBus::new(1024);
        let mut listener = bus.subscribe();
        let reader = std::thread::spawn(move || {
            let (mut received, mut last) = (0u64, None);
            loop {
                match listener.blocking_recv() {
                    Ok(event) => {
                        if let Some(last) = last {
                            assert!(event.sequence > last, "{} after {last}", event.sequence);
                        }
                        last = Some(event.sequence);
                        received += 1;
                    }
                    // What was missed is counted; the order is checked from here on.
                    Err(broadcast::error::RecvError::Lagged(missed)) => received += missed,
                    Err(broadcast::error::RecvError::Closed) => return received,
                }
            }
        });
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for n in 0..20_000 {
                        bus.publish(EventKind::StepStarted, Value::from(n));
                    }
                });
            }
        });
        drop(bus);
        assert_eq!(reader.join().unwrap(), 160_000);
    }

    #[test]
    fn a_listener_that_falls_behind_is_told_how_much_it_missed() {
        let bus = EventBus::new(16);
        let mut listener = bus.subscribe();
        for n in 0..20 {
            bus.publish(EventKind::StepStarted, Value::from(n));
        }
        match listener.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(missed)) => assert_eq!(missed, 4),
            other => panic!("expected a lag, got {other:?}"),
        }
        let next = listener.try_recv().unwrap();
        assert_eq!(next.payload, Value::from(4));
        assert_eq!(next.sequence, 5);
    }
}
