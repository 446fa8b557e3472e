//! Fuzz target `test_results`: see [`orchestrator_fuzz::test_results`] for what it checks.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchestrator_fuzz::test_results(data));
