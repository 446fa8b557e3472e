//! The local executor and its agents: `local.rs` the `LocalExecutor` the engine hands step
//! attempts to; `runtime.rs` the `Agent` trait, the built-in agents and `exec` plugins;
//! `report.rs` the HTML, JUnit and JSON reports. The catalog of built-in
//! agents and their actions, which validation reads, is [`crate::spec::agents`].

pub mod local;
pub mod report;
pub mod runtime;
