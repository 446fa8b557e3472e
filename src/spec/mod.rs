//! The specification layer: what validated manifests mean, shared by validation below the
//! store and the subsystems above it, without IO. `agents.rs` the built-in agent catalog;
//! `params.rs` a workflow's parameter declarations checked and resolved; `git.rs` the git
//! source's URL, branch and path checks; `trigger.rs` a Trigger's cross-field rules and
//! globs; `schedule.rs` a Schedule compiled for firing; `alert.rs` an Alert compiled for
//! evaluation; `workflow.rs` the typed `WorkflowSpec` the engine reads, compiled once per run;
//! `impact.rs` impact selection's decision (suites' `paths` globs against changed files).

pub mod agents;
pub mod alert;
pub mod git;
pub mod impact;
pub mod params;
pub mod quarantine;
pub mod schedule;
pub mod trigger;
pub mod workflow;
