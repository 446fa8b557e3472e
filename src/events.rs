//! The events a running server reports: a closed set of kinds, each published once the thing
//! it reports is durable, fanned out to WebSocket clients and anything else that listens.
//!
//! The bus is a bounded broadcast channel: a listener that falls behind loses the oldest
//! events and is told how many (see `api::ws`), so a slow listener never slows the sender.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::diagnostics::Diagnostic;
use crate::manifest::Kind;
pub use crate::model::{RunSummary, StepSummary};

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
    /// A worker registered, or came back after it was lost or restarted.
    WorkerConnected,
    /// A worker sent no heartbeat for the lease.
    WorkerLost,
    /// A worker stopped taking new work (drain, or stopping).
    WorkerDrained,
    /// A drained worker takes work again.
    WorkerResumed,
}

impl EventKind {
    /// Every kind, in a stable order.
    pub const ALL: [EventKind; 18] = [
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
        EventKind::WorkerConnected,
        EventKind::WorkerLost,
        EventKind::WorkerDrained,
        EventKind::WorkerResumed,
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
            EventKind::WorkerConnected => "worker_connected",
            EventKind::WorkerLost => "worker_lost",
            EventKind::WorkerDrained => "worker_drained",
            EventKind::WorkerResumed => "worker_resumed",
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

/// One event, with its typed payload: `{"type", "payload"}` on the wire.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum Event {
    /// A run was created and will start.
    WorkflowStarted(RunSummary),
    /// A run reached its final state.
    WorkflowCompleted(RunSummary),
    /// A step started.
    StepStarted(StepSummary),
    /// A step reached its final state.
    StepCompleted(StepSummary),
    /// A step failed an attempt and will be tried again.
    StepRetrying(StepRetrying),
    /// Lines a step wrote to its log.
    RunLog(LogChunk),
    /// An agent was switched on or off (payload: the agent as `GET /api/agents` shows it).
    AgentStatusChanged(Value),
    /// A schedule fired (or skipped a fire).
    ScheduleFired(ScheduleFired),
    /// An alert started firing (payload: the alert as `GET /api/alerts/{id}` shows it).
    AlertFiring(Value),
    /// A firing alert resolved (payload: the alert).
    AlertResolved(Value),
    /// A reconcile created, updated or pruned an object.
    ManifestApplied(ManifestChange),
    /// A manifest is invalid (or no longer parses): its last good version stays in force.
    ManifestInvalid(ManifestInvalid),
    /// A reconcile finished.
    SyncCompleted(SyncCompleted),
    /// A system sample (payload: the sample as `GET /api/system/metrics` shows it).
    SystemMetrics(Value),
    /// A worker registered or came back (payload: the worker as `GET /api/workers/{name}`
    /// shows it).
    WorkerConnected(Value),
    /// A worker's record was not renewed for the lease.
    WorkerLost(Value),
    /// A worker takes no new work.
    WorkerDrained(Value),
    /// A drained worker takes work again.
    WorkerResumed(Value),
}

impl Event {
    /// Its kind, as subscriptions name it.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::WorkflowStarted(_) => EventKind::WorkflowStarted,
            Event::WorkflowCompleted(_) => EventKind::WorkflowCompleted,
            Event::StepStarted(_) => EventKind::StepStarted,
            Event::StepCompleted(_) => EventKind::StepCompleted,
            Event::StepRetrying(_) => EventKind::StepRetrying,
            Event::RunLog(_) => EventKind::RunLog,
            Event::AgentStatusChanged(_) => EventKind::AgentStatusChanged,
            Event::ScheduleFired(_) => EventKind::ScheduleFired,
            Event::AlertFiring(_) => EventKind::AlertFiring,
            Event::AlertResolved(_) => EventKind::AlertResolved,
            Event::ManifestApplied(_) => EventKind::ManifestApplied,
            Event::ManifestInvalid(_) => EventKind::ManifestInvalid,
            Event::SyncCompleted(_) => EventKind::SyncCompleted,
            Event::SystemMetrics(_) => EventKind::SystemMetrics,
            Event::WorkerConnected(_) => EventKind::WorkerConnected,
            Event::WorkerLost(_) => EventKind::WorkerLost,
            Event::WorkerDrained(_) => EventKind::WorkerDrained,
            Event::WorkerResumed(_) => EventKind::WorkerResumed,
        }
    }
}

/// A step's retry: the step, and when the next attempt starts.
#[derive(Debug, Clone, Serialize)]
pub struct StepRetrying {
    /// The step as it stands after the failed attempt.
    #[serde(flatten)]
    pub step: StepSummary,
    /// The delay before the next attempt.
    pub retry_in_ms: u64,
}

/// Lines of a step log.
#[derive(Debug, Clone, Serialize)]
pub struct LogChunk {
    /// The run.
    pub run_id: String,
    /// The step.
    pub step: String,
    /// The text (at most 64 KiB).
    pub text: String,
    /// Where the text starts in the log, in bytes.
    pub offset: u64,
}

/// A schedule's fire.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleFired {
    /// The schedule's id.
    pub schedule: String,
    /// The instant it was due (RFC 3339).
    pub due: String,
    /// How late the fire was.
    pub lateness_ms: i64,
    /// The run it started.
    pub run_id: Option<String>,
    /// Why it started none.
    pub skipped: Option<String>,
}

/// An object a reconcile changed.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestChange {
    /// Its kind.
    pub kind: Kind,
    /// Its id.
    pub id: String,
    /// `created`, `updated` or `pruned`; `invalid` or `kept` for [`ManifestInvalid`].
    pub change: &'static str,
    /// The source revision.
    pub revision: String,
}

/// An object whose manifest is invalid, with what is wrong in its file.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestInvalid {
    /// The object.
    #[serde(flatten)]
    pub object: ManifestChange,
    /// The diagnostics of its file.
    pub diagnostics: Vec<Diagnostic>,
}

/// What a reconcile did.
#[derive(Debug, Clone, Serialize)]
pub struct SyncCompleted {
    /// `start`, `change`, `resync`, `poll`, `api`, ...
    pub reason: String,
    /// The source revision.
    pub revision: String,
    /// Objects created.
    pub created: usize,
    /// Objects updated.
    pub updated: usize,
    /// Objects pruned.
    pub pruned: usize,
    /// Objects unchanged.
    pub unchanged: usize,
    /// Invalid documents.
    pub invalid: usize,
    /// Errors.
    pub errors: usize,
    /// Warnings.
    pub warnings: usize,
    /// How long it took.
    pub duration_ms: u64,
}

/// An event as published: `{"type", "payload", "timestamp", "sequence"}` on the wire.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
    /// Its kind (the `type` on the wire).
    #[serde(skip)]
    pub kind: EventKind,
    /// When, RFC 3339 with milliseconds.
    pub timestamp: String,
    /// Position in the bus, increasing by one per event.
    pub sequence: u64,
}

/// A cheap-to-clone handle on the event bus.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Published>>,
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
    pub fn publish(&self, event: Event) {
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        let sequence = self
            .sequence
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let event = Published {
            kind: event.kind(),
            event,
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            sequence,
        };
        // No listener is not an error.
        let _ = self.sender.send(Arc::new(event));
    }

    /// A new listener, hearing events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
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
                        bus.publish(Event::SystemMetrics(Value::from(n)));
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
            bus.publish(Event::SystemMetrics(Value::from(n)));
        }
        match listener.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(missed)) => assert_eq!(missed, 4),
            other => panic!("expected a lag, got {other:?}"),
        }
        let next = listener.try_recv().unwrap();
        assert!(matches!(&next.event, Event::SystemMetrics(n) if n.as_i64() == Some(4)));
        assert_eq!(next.sequence, 5);
    }

    #[test]
    fn an_event_is_its_type_payload_timestamp_and_sequence_on_the_wire() {
        let bus = EventBus::new(16);
        let mut listener = bus.subscribe();
        bus.publish(Event::ScheduleFired(ScheduleFired {
            schedule: "sch_1".into(),
            due: "2026-01-01T00:00:00+00:00".into(),
            lateness_ms: 3,
            run_id: Some("run_1".into()),
            skipped: None,
        }));
        let published = listener.try_recv().unwrap();
        assert_eq!(published.kind, EventKind::ScheduleFired);
        let wire = serde_json::to_value(&*published).unwrap();
        let keys: Vec<&String> = wire.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["type", "payload", "timestamp", "sequence"]);
        assert_eq!(wire["type"], "schedule_fired");
        assert_eq!(
            wire["payload"],
            serde_json::json!({"schedule": "sch_1", "due": "2026-01-01T00:00:00+00:00",
                "lateness_ms": 3, "run_id": "run_1", "skipped": null})
        );
        assert_eq!(wire["sequence"], 1);
    }
}
