//! Runs workflows: parameters, template expansion, the step DAG, processes, retries,
//! timeouts, cancellation, logs and durable run records.

pub mod model;
