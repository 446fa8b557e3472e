//! What the integration tests share, so each test module holds only its tests: running the
//! binary in temporary projects ([`process`]), the one server harness ([`server`]), the one
//! HTTP client ([`http`]), the `/ws` stream ([`ws`]), polling with a deadline ([`poll`])
//! reading runs back and waiting for them to end ([`runs`]), git repositories to follow
//! ([`git`]), a server assembled in this process whose router is driven with `oneshot`
//! ([`in_process`]), nats-server and worker processes ([`nats`]), and the seeds and size
//! of the randomized reliability suites ([`chance`]).
//! Everything stays parallel-safe: temp dirs, port 0, nothing global.

pub(crate) mod chance;
pub(crate) mod git;
pub(crate) mod http;
pub(crate) mod in_process;
pub(crate) mod nats;
pub(crate) mod poll;
pub(crate) mod process;
pub(crate) mod runs;
pub(crate) mod server;
pub(crate) mod ws;

pub(crate) use chance::*;
pub(crate) use git::*;
pub(crate) use http::*;
pub(crate) use in_process::*;
pub(crate) use nats::*;
pub(crate) use poll::*;
pub(crate) use process::*;
pub(crate) use runs::*;
pub(crate) use server::*;
pub(crate) use ws::*;
