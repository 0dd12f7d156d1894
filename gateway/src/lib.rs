//! `switchboard-gateway`: the server clients talk to. A message's way
//! through it: a transport (`ws`, `http`, `ably`, and the `sse` reader)
//! parses a request and authenticates the caller; the chat `service` decides
//! (membership, seeding, idempotency, which engine answers) and calls the
//! engines (`switchboard_core`'s broker and store); the broker routes the
//! stored message to the recipients' gateways, whose `hub` queues it on
//! each recipient's connection; the transport writes it, following the seq
//! `cursor`. `server` wires the router, start-up and drain; `report` feeds
//! the operator's autoscaler. While Redis is unreachable, a configured
//! fallback `relay` carries messages between gateways instead (the rules in
//! `service::relay`, the background tasks in `degraded`).
//!
//! The binary (`switchboard dev`, `switchboard-gateway`) only parses
//! configuration and calls [`Gateway::start`]; tests start gateways
//! in-process the same way.

pub mod ably;
mod admit;
pub mod api;
pub mod args;
pub mod config;
pub mod cors;
pub mod cursor;
mod degraded;
pub mod http;
pub mod hub;
pub mod keys;
pub mod launch;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod relay;
mod report;
pub mod server;
pub mod service;
pub mod sse;
pub mod state;
pub mod ws;

pub use config::GatewayConfig;
pub use relay::{RelayConfig, RelayConfigError};
pub use server::{Gateway, GatewayError, router};
