//! The Ably-compatible REST subset, so any Ably REST client can publish to
//! and read history from a Switchboard channel (and another cluster can use
//! this gateway as its fallback relay). What is served:
//!
//! - `POST /channels/{name}/messages`: one message object or an array; the
//!   fields `id`, `name`, `data`, `encoding`, `clientId`, `extras` are kept
//!   (others, such as the SDK's `action` and `size`, are ignored); idempotent
//!   by message `id`; answers `201 {"channel", "messageId", "serials"}`.
//! - `GET /channels/{name}/messages`: history, `limit` (1–1000, default
//!   100), `direction` (`backwards`, the default, or `forwards`), `start` /
//!   `end` (Unix ms, inclusive), pages linked with `Link: <./messages?…>;
//!   rel="next"` as Ably clients expect.
//! - `GET /sse` (and `/event-stream`): Ably's SSE subscribe to one or more
//!   channels, with `rewind` and resume by `lastEvent` / `Last-Event-ID`
//!   (the stream is `crate::sse`'s reader with this module's event format).
//!
//! **Auth**: HTTP Basic with an API key `keyName:keySecret` from the
//! gateway's configuration (`--api-key`, repeatable). A key may publish to
//! and subscribe to every channel — whatever its publishers and visibility:
//! keys are the operator's, trusted like the server — unless it was
//! configured as `keyName:keySecret:pattern|pattern…` (a channel name, or a
//! prefix ending in `*`), which limits it to matching channels (else 40160).
//! A channel named here that does not exist yet is created as a public
//! channel owned by the caller, unless the caller is a wallet and the name
//! is reserved (`--reserved-channel`): 40160, nothing created. `Authorization: Bearer <session token>` (or
//! base64 of it, as Ably SDKs send tokens; `accessToken=` for SSE) calls as
//! the signed-in wallet, with exactly its channel rights. A key acts as the address
//! `keccak256("switchboard-api-key:" + keyName)[12..]` (its messages'
//! `from`). Errors are Ably `ErrorInfo` bodies (`{"error": {"code",
//! "statusCode", "message", "href"}}`, content type exactly
//! `application/json`, plus `x-ably-errorcode` / `x-ably-errormessage`
//! headers): 40101 bad or missing credentials (an unknown key name too), 40160 the
//! key may not publish to that channel, 40000 bad request, 50000 / 50003
//! server trouble.
//!
//! **Names**: the Ably channel `name` is the Switchboard channel
//! `ch:<name>`, so names are 1–64 characters of `[A-Za-z0-9_.:-]`.
//!
//! **Bodies**: a message published here is stored with a body holding its
//! Ably fields (`{"id","name","data","encoding","clientId","extras"}`, absent
//! ones left out), which is also what WebSocket and SSE subscribers get.
//! History returns such bodies as they were; a message sent over WebSocket
//! comes back as `{"id": <its id>, "data": <its body as JSON text>,
//! "encoding": "json"}`. Each has `timestamp` (the seq's server time) and
//! `serial` (the seq, as text).

mod auth;
mod error;
mod history;
mod message;
mod publish;
mod sse;

pub use self::error::{AblyError, ErrorInfo, ErrorInfoBody};
pub use self::history::{HistoryQuery, history};
pub use self::message::{InMessage, MAX_BATCH, OutMessage, PublishBody, msg_id_of, parse_publish};
pub use self::publish::{MAX_PUBLISH_BYTES, Published, publish};
pub use self::sse::{SseQuery, sse};
