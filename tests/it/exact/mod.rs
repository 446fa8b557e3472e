//! Everyday paths a new user and the ecosystem's own tools take, each checked for the exact
//! answer: validation and partial applies, the guide's walkthrough, runs and their reports,
//! the CLI's contracts, and promtool, openapi-spec-validator, schemathesis,
//! check-jsonschema and a JUnit reader run against what the orchestrator produces.

mod alert_editor;
mod cli;
pub(crate) mod ecosystem;
mod runs;
mod validation;
mod walkthrough;
