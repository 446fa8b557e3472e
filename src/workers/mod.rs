//! Workers: step attempts run on other machines over NATS JetStream. The controller's
//! store stays the source of truth; JetStream carries attempts out and reports back.
//!
//! - [`protocol`]: streams, buckets, subjects and messages, and the connection;
//! - [`dispatch`]: the controller's executor for steps with `runs_on` (publish, claim,
//!   fence, lease, results);
//! - [`route`]: which executor an attempt goes to;
//! - [`registry`]: the controller's view of its workers (up, lost, drained), their events,
//!   and every worker that ever registered;
//! - [`worker`]: the `orchestrator worker` process;
//! - [`snapshot`]: the project packed for workers.

pub mod dispatch;
pub mod protocol;
pub mod registry;
pub mod route;
pub mod snapshot;
pub mod worker;
