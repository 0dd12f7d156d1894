//! The fallback relay: how gateways keep chat flowing while Redis is
//! unreachable, through Ably or another Switchboard cluster.
//!
//! | file | what |
//! |---|---|
//! | `config` | `relay.json` plus the API key, validated into a [`RelayConfig`] |
//! | `client` | the relay's HTTP API: publish (Ably REST) and subscribe (Ably SSE), hosts tried in turn |
//! | `sse` | a bounded reader of the `text/event-stream` the relay answers |
//! | `wire` | what one gateway publishes for the others: the [`Envelope`] and the channel name |
//! | `spool` | the messages a gateway accepted in relay mode, held until Redis gives them a seq |
//!
//! The rules (when to relay, who may send, reconciliation) are the chat
//! service's (`service::relay`); the background tasks that watch Redis and
//! read the relay are `crate::degraded`'s. This module knows nothing of
//! either: it moves bytes and holds messages.

mod client;
mod config;
mod spool;
mod sse;
mod wire;

pub use self::client::{RelayClient, RelayError};
pub use self::config::*;
pub use self::spool::{Held, Spool, SpoolFull};
pub use self::wire::{Envelope, EnvelopeError, EnvelopeSealer, channel_name};
