//! The local executor's agents: `runtime.rs` the `Agent` trait, the built-in agents and
//! `exec` plugins; `report.rs` the HTML, JUnit and JSON reports. The catalog of built-in
//! agents and their actions, which validation reads, is [`crate::spec::agents`].

pub mod report;
pub mod runtime;
