//! Typed specs: what the subsystems read of a validated manifest, compiled once from its
//! `serde_json::Value` so that they read fields instead of looking keys up.

pub mod workflow;
