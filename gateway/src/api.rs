//! The public HTTP API as one table: every endpoint's method, path,
//! handler and documentation. `server::router` mounts exactly these, and
//! `GET /v1/openapi.json` describes exactly these (`openapi`), so an
//! endpoint is served and documented, or neither. Adding a route means
//! adding a row here.
//!
//! Not in the table: the internal listener's `/metrics` (another port) and
//! the dev server's fixed files (`GatewayConfig::static_files`).

use std::sync::LazyLock;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, delete, get, post};
use switchboard_proto::ids::{Address, ConvId};
use switchboard_proto::model::Conversation;
use switchboard_proto::rest::{
    AddMembers, AddedMembers, CreateChannel, CreateConversation, HistoryPage, ListPage,
    NonceResponse, PresenceMap, VerifyRequest, VerifyResponse,
};
use switchboard_proto::schema::to_text;

use crate::ably;
use crate::http::{auth, channels, conversations, events, ops, presence};
use crate::openapi::{Auth, Content, Operation, Surface, document};
use crate::state::AppRef;
use crate::ws;

/// One row of the table.
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    pub handler: MethodRouter<AppRef>,
    pub op: Operation,
}

fn row(
    method: Method,
    path: &'static str,
    handler: MethodRouter<AppRef>,
    op: Operation,
) -> Endpoint {
    Endpoint {
        method,
        path,
        handler,
        op,
    }
}

const CONV: &str = "A conversation id: dm:<address>:<address> (lowercase, sorted), g:<32 hex digits> or ch:<name>.";

/// Every endpoint, in the order the document lists them.
pub fn endpoints() -> Vec<Endpoint> {
    use Surface::{Ably, Native, Probe};
    vec![
        // Sign-in and sign-out.
        row(
            Method::GET,
            "/v1/auth/nonce",
            get(auth::nonce),
            Operation::new(Native, "auth", "A single-use sign-in nonce")
                .describe("Put it in the EIP-4361 message signed for POST /v1/auth/verify; it expires after a few minutes.")
                .json::<NonceResponse>(200, "A fresh nonce."),
        ),
        row(
            Method::POST,
            "/v1/auth/verify",
            post(auth::verify),
            Operation::new(Native, "auth", "Sign in with a wallet signature")
                .describe("An EIP-4361 (Sign-In with Ethereum) message naming this gateway's domain and a nonce from GET /v1/auth/nonce, and its personal_sign signature. Answers a session token for every other endpoint and the WebSocket.")
                .body::<VerifyRequest>()
                .json::<VerifyResponse>(200, "Signed in.")
                .error(401, "The signature, the domain, the nonce or the message's times are wrong."),
        ),
        row(
            Method::POST,
            "/v1/auth/revoke",
            post(auth::revoke_own),
            Operation::new(Native, "auth", "Sign out everywhere")
                .describe("Every session of the caller issued until now is refused from now on (this one included); open sockets and streams on every gateway close with 4001.")
                .auth(Auth::Session)
                .answer(204, "Signed out.", Content::Empty),
        ),
        row(
            Method::POST,
            "/v1/users/{address}/revoke",
            post(auth::revoke_user),
            Operation::new(Native, "auth", "Sign a user out everywhere (operators)")
                .describe("Needs an API key that is not limited to some channels.")
                .auth(Auth::ApiKey)
                .path::<Address>("address", "The wallet to sign out.")
                .answer(204, "Signed out.", Content::Empty),
        ),
        // Conversations.
        row(
            Method::POST,
            "/v1/conversations",
            post(conversations::create),
            Operation::new(Native, "conversations", "Create a group")
                .describe("A group of the caller (its admin) and members. Direct conversations need no creation: their id is dm:<a>:<b>.")
                .auth(Auth::Session)
                .body::<CreateConversation>()
                .json::<Conversation>(201, "The group.")
                .error(403, "A member limit or rule refuses it."),
        ),
        row(
            Method::GET,
            "/v1/conversations",
            get(conversations::list),
            Operation::new(Native, "conversations", "The caller's conversations")
                .describe("Newest activity first, with unread counts, paged by an opaque cursor.")
                .auth(Auth::Session)
                .query::<conversations::ListQuery>()
                .json::<ListPage>(200, "One page."),
        ),
        row(
            Method::GET,
            "/v1/conversations/{id}",
            get(conversations::get),
            Operation::new(Native, "conversations", "A conversation and its members")
                .describe("Members (or, for a channel, readers) only; anyone else gets the same 404 as for a missing conversation.")
                .auth(Auth::Session)
                .path::<ConvId>("id", CONV)
                .json::<Conversation>(200, "The conversation.")
                .error(404, "No such conversation, or the caller may not read it."),
        ),
        row(
            Method::GET,
            "/v1/conversations/{id}/messages",
            get(conversations::history),
            Operation::new(Native, "conversations", "History")
                .describe("Without after or before: the newest page. The caller's own messages carry their delivery status.")
                .auth(Auth::Session)
                .path::<ConvId>("id", CONV)
                .query::<conversations::HistoryQuery>()
                .json::<HistoryPage>(200, "Ascending by seq.")
                .error(404, "No such conversation, or the caller may not read it."),
        ),
        row(
            Method::POST,
            "/v1/conversations/{id}/members",
            post(conversations::add_members),
            Operation::new(Native, "conversations", "Add members to a group")
                .describe("Group admins only.")
                .auth(Auth::Session)
                .path::<ConvId>("id", CONV)
                .body::<AddMembers>()
                .json::<AddedMembers>(200, "Who was not a member before.")
                .error(403, "The caller is not an admin, or the group is full.")
                .error(404, "No such conversation, or the caller is not a member."),
        ),
        row(
            Method::DELETE,
            "/v1/conversations/{id}/members/{address}",
            delete(conversations::remove_member),
            Operation::new(Native, "conversations", "Leave a group, or remove a member")
                .describe("Anyone may leave; only admins remove others.")
                .auth(Auth::Session)
                .path::<ConvId>("id", CONV)
                .path::<Address>("address", "The member to remove (the caller, to leave).")
                .answer(204, "Removed.", Content::Empty)
                .error(403, "The caller is not an admin.")
                .error(404, "No such conversation, or no such member."),
        ),
        row(
            Method::GET,
            "/v1/conversations/{id}/events",
            get(events::conversation),
            Operation::new(Native, "realtime", "A conversation as Server-Sent Events")
                .describe("For readers that only read (EventSource, curl -N). Events: id <seq>, event message with the WebSocket msg frame as data; one event synced after the replay; :keepalive comments every 15 s; event close before the server ends the stream. Resume with Last-Event-ID or ?after=<seq>.")
                .auth(Auth::SessionOrQuery)
                .path::<ConvId>("id", CONV)
                .query::<events::EventsQuery>()
                .answer(200, "The stream.", Content::EventStream)
                .error(404, "No such conversation, or the caller may not read it."),
        ),
        // Channels and presence.
        row(
            Method::POST,
            "/v1/channels",
            post(channels::create),
            Operation::new(Native, "channels", "Create a channel")
                .describe("The channel ch:<name>, owned (and publishable) by the caller.")
                .auth(Auth::Session)
                .body::<CreateChannel>()
                .json::<Conversation>(201, "The channel.")
                .error(403, "The name is reserved for API keys.")
                .error(409, "The channel exists."),
        ),
        row(
            Method::GET,
            "/v1/channels/{id}/events",
            get(events::channel),
            Operation::new(Native, "realtime", "A channel as Server-Sent Events")
                .describe("As the conversation stream, for a channel named ch:<name> or <name>.")
                .auth(Auth::SessionOrQuery)
                .path::<String>("id", "The channel: ch:<name> or <name>.")
                .query::<events::EventsQuery>()
                .answer(200, "The stream.", Content::EventStream)
                .error(404, "No such channel, or the caller may not read it."),
        ),
        row(
            Method::GET,
            "/v1/presence",
            get(presence::presence),
            Operation::new(Native, "presence", "Presence of a list of users")
                .auth(Auth::Session)
                .query::<presence::PresenceQuery>()
                .json::<PresenceMap>(200, "Checksummed address → status and last-seen time."),
        ),
        row(
            Method::GET,
            "/v1/ws",
            get(ws::upgrade),
            Operation::new(Native, "realtime", "The WebSocket")
                .describe("Upgrade to the WebSocket protocol: JSON text frames described by the frames JSON Schema (https://switchboard.dev/schema/v1/frames.json). Authenticate with an auth frame first, or with Authorization: Bearer on the upgrade.")
                .answer(101, "Switching to the WebSocket protocol.", Content::Empty)
                .error(400, "Not a WebSocket handshake.")
                .error(401, "The upgrade's Bearer token is invalid, expired or revoked.")
                .error(426, "The connection cannot be upgraded (e.g. HTTP/2 without extended CONNECT)."),
        ),
        row(
            Method::GET,
            "/v1/openapi.json",
            get(openapi_json),
            Operation::new(Native, "meta", "This document")
                .answer(200, "OpenAPI 3.1.", Content::Json(crate::openapi::schema::<serde_json::Value>)),
        ),
        // The Ably-compatible subset.
        row(
            Method::POST,
            "/channels/{name}/messages",
            post(ably::publish).layer(DefaultBodyLimit::max(ably::MAX_PUBLISH_BYTES)),
            Operation::new(Ably, "ably", "Publish (Ably REST)")
                .describe("One message or an array of 1 to 100; idempotent by message id. A channel named here that does not exist yet is created as a public channel owned by the caller (unless the name is reserved).")
                .auth(Auth::Ably)
                .path::<String>("name", "The Ably channel name: the Switchboard channel ch:<name>.")
                .body::<ably::PublishBody>()
                .json::<ably::Published>(201, "Stored.")
                .error(413, "The body is larger than 1 MiB (40009)."),
        ),
        row(
            Method::GET,
            "/channels/{name}/messages",
            get(ably::history),
            Operation::new(Ably, "ably", "History (Ably REST)")
                .describe("Pages linked with Link: <./messages?…>; rel=\"next\", as Ably clients expect.")
                .auth(Auth::Ably)
                .path::<String>("name", "The Ably channel name.")
                .query::<ably::HistoryQuery>()
                .json::<Vec<ably::OutMessage>>(200, "Newest first unless direction=forwards."),
        ),
        row(
            Method::GET,
            "/sse",
            get(ably::sse),
            Operation::new(Ably, "ably", "Subscribe (Ably SSE)")
                .describe("id: a cursor over every channel of the stream (pass back as lastEvent or Last-Event-ID); data: the Ably message with its channel (enveloped), or only its data. Without lastEvent or rewind only new messages come.")
                .auth(Auth::AblyStream)
                .query::<ably::SseQuery>()
                .answer(200, "The stream.", Content::EventStream),
        ),
        row(
            Method::GET,
            "/event-stream",
            get(ably::sse),
            Operation::new(Ably, "ably", "Subscribe (Ably SSE, second path)")
                .describe("The same as GET /sse.")
                .auth(Auth::AblyStream)
                .query::<ably::SseQuery>()
                .answer(200, "The stream.", Content::EventStream),
        ),
        // Probes.
        row(
            Method::GET,
            "/healthz",
            get(ops::healthz),
            Operation::new(Probe, "probes", "Liveness").answer(
                200,
                "The process serves HTTP.",
                Content::Text,
            ),
        ),
        row(
            Method::GET,
            "/readyz",
            get(ops::readyz),
            Operation::new(Probe, "probes", "Readiness")
                .describe("Not draining, and the broker answers. In relay mode the gateway stays ready and the body says why it is degraded.")
                .answer(200, "Ready (the body may say degraded).", Content::Text)
                .error(503, "Draining, or the broker does not answer."),
        ),
    ]
}

/// The endpoints of `surface`, mounted on one router.
pub fn router_of(surface: Surface) -> Router<AppRef> {
    endpoints()
        .into_iter()
        .filter(|e| e.op.surface == surface)
        // Two rows of one path merge into one method router (axum panics
        // on two handlers for one method and path: a table bug).
        .fold(Router::new(), |r, e| r.route(e.path, e.handler))
}

/// The document of [`endpoints`].
pub fn openapi() -> serde_json::Value {
    let eps = endpoints();
    document(
        eps.iter().map(|e| (&e.method, e.path, &e.op)),
        crate::openapi::schema::<ably::ErrorInfoBody>,
    )
}

/// Built once: the table does not change while the process runs.
static OPENAPI_TEXT: LazyLock<String> = LazyLock::new(|| to_text(&openapi()));

/// `GET /v1/openapi.json`.
async fn openapi_json() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], OPENAPI_TEXT.as_str())
}
