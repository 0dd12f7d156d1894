//! `switchboard-proto`: the vocabulary every Switchboard client and server
//! shares — ids, the WebSocket frames, the REST bodies, the conversation
//! model and wallet authentication (Sign-In with Ethereum, session tokens).
//!
//! It holds no engine: the Rust SDK depends on this crate alone, so an app
//! using the SDK compiles no Redis or PostgreSQL client. `docs/protocol.md`
//! is the human-readable contract; these types are the machine-checked one.

pub mod auth;
pub mod frames;
pub mod ids;
pub mod model;
pub mod rest;
pub mod schema;
pub mod time;
