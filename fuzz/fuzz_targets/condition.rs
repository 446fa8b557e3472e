//! Fuzz target `condition`: see [`orchestrator_fuzz::condition`] for what it checks.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchestrator_fuzz::condition(data));
