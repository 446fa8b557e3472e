//! Fuzz target `webhook`: see [`orchestrator_fuzz::webhook`] for what it checks.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchestrator_fuzz::webhook(data));
