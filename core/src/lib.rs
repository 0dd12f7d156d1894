//! `switchboard-core`: everything the gateway, the worker, the client SDK and the
//! operator share — ids, the wire protocol, wallet authentication and the broker
//! engines that order and fan out messages.

pub mod auth;
pub mod broker;
pub mod ids;
pub mod protocol;
pub mod relay;
pub mod store;
pub mod time;
