//! `switchboard-worker`: copies the shards' persistence streams into
//! PostgreSQL, exactly once in effect.
//!
//! The guarantee comes from the order of operations, not from distributed
//! transactions: an entry is acknowledged (`XACK`) only after the transaction
//! holding it committed, and every write is idempotent (messages by
//! `(conv, seq, ts)`, watermarks by `GREATEST`). A crash anywhere leaves the
//! entry pending; whoever claims it later writes it again, harmlessly.
//!
//! Layout: [`streams`] is the Redis side (consumer group, claims, dead
//! letters, trimming), [`run`] the loop, [`metrics`] and [`http`] the
//! `/metrics` and `/healthz` surface, [`cli`] the binary's arguments and
//! [`commands`] what its commands do.

pub mod cli;
pub mod commands;
pub mod http;
pub mod metrics;
mod run;
pub mod streams;

pub use run::{Worker, WorkerConfig, WorkerError, consumer_name};
