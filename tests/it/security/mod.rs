//! The security suite: each way a default installation could be driven, read or worn down
//! by someone it should not serve, reproduced against a real server.
//!
//! - `http`: browsers and foreign hosts (Origin, Host, Content-Type), the API token on every
//!   read, generated tokens for non-loopback binds;
//! - `connections`: slow clients, connection caps, shutdown whatever clients do, webhook
//!   senders that push or flood, memory that comes back;
//! - `steps`: what a step sees (a clean environment, declared secrets masked) and that no
//!   step descendant outlives its step;
//! - `validation`: template injection into shell scripts, triggers without secrets, full
//!   disks, bounded logs, control characters in CLI output.

mod connections;
mod http;
mod steps;
mod validation;
