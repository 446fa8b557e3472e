//! The language layer: the one `{{ }}` template language ([`template`]) and the one
//! expression language ([`expr`]) with its two dialects, step `if:` conditions
//! ([`if_condition`]) and alert conditions ([`condition`]); the names a trigger parameter's
//! templates may use ([`delivery_template`]).
//!
//! Pure functions of their inputs; they import only the base layer (`util`). The schema
//! layer validates manifests with them, the engine, triggers and alerts render and evaluate
//! with them, each supplying what its names are worth.

pub mod condition;
pub mod delivery_template;
pub mod expr;
pub mod if_condition;
pub mod template;
