//! `switchboard-client`: the Rust SDK for Switchboard gateways.
//!
//! - `http://` / `ws://` and `https://` / `wss://` gateways: TLS is rustls
//!   with the platform's trust store; [`Tls::with_ca_file`] adds a private
//!   CA ([`SignInOptions::tls`], [`ClientOptions::tls`]).
//! - [`sign_in`]: Sign-In with Ethereum (EIP-4361, `personal_sign`) for a
//!   session token; [`create_group`] and [`get_conversation`] over REST.
//! - [`Client::connect`]: a background task owns the WebSocket. It
//!   authenticates with the `auth` frame, acks every `msg`, surfaces each
//!   message once and in seq order per conversation (duplicates are acked
//!   again, gaps are filled by `sync`), resyncs every conversation it follows
//!   after each reconnect, reconnects with exponential backoff and full jitter
//!   (also after a drain, 1012, or a slow-consumer close, 4008) and stops only
//!   when the server refuses the session (4001) or the app closes it.
//! - [`Client::send`] puts a message in the outbox, which is written in order
//!   whenever a connection is up; a send interrupted by a disconnect is
//!   written again with the same id, and the server's dedupe makes that
//!   exactly-once.
//!
//! ```no_run
//! # async fn demo(key: k256::ecdsa::SigningKey, peer: switchboard_proto::ids::Address) -> Result<(), switchboard_client::ClientError> {
//! use switchboard_client::{Client, ClientOptions, Event, SignInOptions, sign_in};
//! use switchboard_proto::ids::ConvId;
//!
//! let base = "http://127.0.0.1:8080";
//! let session = sign_in(base, &key, &SignInOptions::default()).await?;
//! let mut client = Client::connect(base, &session, ClientOptions::default()).await?;
//! let conv = ConvId::direct(&session.address, &peer).map_err(|e| switchboard_client::ClientError::Protocol(e.to_string()))?;
//! let sent = client.send(&conv, serde_json::json!({"text": "gm"})).await?;
//! println!("seq {}", sent.seq);
//! while let Some(ev) = client.next_event().await {
//!     if let Event::Message(m) = ev {
//!         println!("{} from {}: {}", m.seq, m.from, m.body.get());
//!     }
//! }
//! # Ok(()) }
//! ```

mod backoff;
mod client;
mod conn;
mod error;
mod event;
mod options;
mod outbox;
mod relayed;
mod rest;
mod signin;
mod tls;
mod tracker;

pub use client::{Client, ClientHandle, PendingSend};
pub use error::ClientError;
pub use event::Event;
pub use options::ClientOptions;
pub use outbox::Sent;
pub use rest::{create_group, get_conversation};
pub use signin::{Session, SignInOptions, sign_in};
pub use switchboard_proto::frames::{ErrorCode, Message, PresenceStatus};
pub use switchboard_proto::model::Conversation;
pub use tls::{MAX_CA_FILE_BYTES, Tls};
