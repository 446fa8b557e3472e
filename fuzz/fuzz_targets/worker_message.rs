//! Fuzz target `worker_message`: see [`orchestrator_fuzz::worker_message`] for what it checks.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchestrator_fuzz::worker_message(data));
