//! Fuzz target `manifest`: see [`orchestrator_fuzz::manifest`] for what it checks.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchestrator_fuzz::manifest(data));
