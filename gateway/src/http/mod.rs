//! The HTTP transport: REST endpoints and Switchboard's own SSE streams.
//! Each file parses its requests, asks the chat service, and answers JSON
//! (errors as `problem`'s `{"error": {"code", "message"}}`).
//!
//! | file | endpoints |
//! |---|---|
//! | `auth` | `GET /v1/auth/nonce`, `POST /v1/auth/verify`, `POST /v1/auth/revoke`, `POST /v1/users/{address}/revoke`; the `Authed` caller of the others |
//! | `conversations` | `/v1/conversations` (create, list), `/{id}`, `/{id}/messages`, `/{id}/members` |
//! | `channels` | `POST /v1/channels` |
//! | `presence` | `GET /v1/presence` |
//! | `events` | `GET /v1/conversations/{id}/events`, `GET /v1/channels/{id}/events` (SSE) |
//! | `ops` | `/healthz`, `/readyz`, `/metrics` |
//! | `params`, `problem` | request parsing and bounds; error answers |

pub mod auth;
pub mod channels;
pub mod conversations;
pub mod events;
pub mod ops;
pub mod params;
pub mod presence;
pub mod problem;
