//! `switchboard-core`: the engines behind the chat service — the broker
//! (ordering, idempotency, fan-out routing; in memory or on Redis), the
//! durable store (PostgreSQL) — and the contracts between binaries (the
//! relay file, reserved channel patterns, CORS origins) and what every
//! binary does alike to be observed (logging, `switchboard_build_info`). The
//! wire vocabulary (ids, frames, auth, the conversation
//! model) is `switchboard-proto`, which clients use alone.

pub mod broker;
pub mod cors;
pub mod env;
pub mod redact;
pub mod relay;
pub mod reserved;
pub mod startup;
pub mod store;
pub mod telemetry;

pub use redact::redact_url;
