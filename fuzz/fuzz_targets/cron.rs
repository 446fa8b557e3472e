//! Fuzz target `cron`: see [`orchestrator_fuzz::cron`] for what it checks.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchestrator_fuzz::cron(data));
