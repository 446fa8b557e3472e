//! Runs workflows: parameters, template expansion, the step DAG, processes, retries,
//! timeouts, cancellation, logs and durable run records.

pub mod admission;
pub mod agent_logs;
pub mod env;
pub mod executor;
pub mod expand;
pub mod impact;
pub mod junit;
pub mod log_tail;
pub mod machine;
pub mod mask;
pub mod process;
pub mod run;
pub mod runner;
pub mod settings;
pub mod test_results;
pub mod threads;
