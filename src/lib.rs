//! orchestrator: a GitOps reconciler for test automation.
//!
//! # Layout
//! Data flows one way: a [`source`] reads a snapshot of manifest files, [`manifest`] parses
//! them into documents with source locations, [`schema`] validates them against the embedded
//! JSON Schemas plus the semantic rules, [`reconcile`] diffs the desired set against what the
//! [`store`] holds and applies the plan in one durable batch. [`cli`] is the command line on
//! top; [`config`] resolves the environment configuration.
//!
//! Invariants: `manifest`, `schema` and `reconcile::diff` do no IO; only `store` imports sled.

#![forbid(unsafe_code)]

pub mod agents;
pub mod api;
pub mod cli;
pub mod config;
pub mod controller;
pub mod cron;
pub mod dashboard;
pub mod diagnostics;
pub mod duration;
pub mod engine;
pub mod events;
pub mod lang;
pub mod logging;
pub mod manifest;
pub mod model;
pub mod monitor;
pub mod reconcile;
pub mod scheduler;
pub mod schema;
pub mod server;
pub mod source;
pub mod spec;
pub mod store;
pub mod triggers;
pub mod util;
