//! `switchboard-gateway`: the axum server clients talk to — WebSocket protocol
//! v1, sign-in and conversation REST endpoints, the local connection hub,
//! delivery with acks and retries, presence, graceful drain and the
//! connection reports the operator's autoscaler reads.
//!
//! The binary (`switchboard dev`, later `switchboard-gateway`) only parses
//! configuration and calls [`Gateway::start`]; tests start gateways in-process
//! the same way.

pub mod ably;
pub mod config;
mod conn;
pub mod conversations;
pub mod history;
pub mod hub;
pub mod metrics;
pub mod presence;
pub mod problem;
pub mod relay;
mod report;
pub mod rest;
pub mod server;
pub mod sse;
pub mod state;

pub use config::GatewayConfig;
pub use relay::{RelayConfig, RelayConfigError};
pub use server::{Gateway, GatewayError, router};
