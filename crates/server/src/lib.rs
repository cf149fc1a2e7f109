//! The control plane (ARCHITECTURE.md): the REST API ([`api`]) and the [`controller`] that is the
//! only writer of run state — dispatcher, reconciler, event bus — wired over a `Store`, the
//! runtimes and the frameworks by [`Server`].
//!
//! Depends on every library crate; nothing depends on it but the `runplane` binary. It never
//! knows which runtime or framework it talks to beyond their traits.

pub mod api;
pub mod artifacts;
pub mod catalog;
pub mod controller;
pub mod failpoints;
mod frameworks;
pub mod gateway;
pub mod inspector;
pub mod options;
pub mod resolver;
pub mod secrets;
mod server;

pub use options::ServerOptions;
pub use server::{Server, ServerError};
