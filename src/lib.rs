//! orchestrator: a GitOps reconciler for test automation.
//!
//! # Layout
//! Data flows one way: a [`source`] reads a snapshot of manifest files, [`manifest`] parses
//! them into documents with source locations, [`schema`] validates them against the embedded
//! JSON Schemas plus the semantic rules, [`reconcile`] diffs the desired set against what the
//! [`store`] holds and applies the plan in one durable batch. The [`engine`]'s runner executes
//! runs through an executor ([`agents`] holds the local one); the [`controller`],
//! [`scheduler`], [`triggers`] and [`monitor`] work on it; [`api`] serves it; [`cli`] is the
//! command line and [`server`] wires `orchestrator start` together.
//!
//! Modules are layered (ARCHITECTURE.md, enforced by `tests/layers.rs`): base ([`util`],
//! [`model`], [`diagnostics`], [`duration`]) → language ([`manifest`], [`cron`], [`lang`]) →
//! spec ([`spec`], [`schema`], [`logging`], [`config`]) → storage ([`store`], [`source`],
//! [`events`]) → [`reconcile`] → [`engine`] → services → http ([`api`], [`dashboard`]) →
//! top ([`cli`], [`server`]); an import never points up.
//!
//! Invariants: `manifest`, `lang`, `spec`, `schema` and `reconcile::diff` do no IO; only
//! `store` imports sled.

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
pub mod workers;
