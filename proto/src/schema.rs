//! JSON Schema documents of the wire types, generated from the types
//! themselves (`schemars` derives honouring the serde attributes), so the
//! schema is what serde reads and writes. They are checked in under
//! `proto/schema/` (`tests/schema.rs` fails when they differ from what this
//! code produces; `UPDATE_SCHEMA=1` rewrites them); the TypeScript SDK's
//! types are generated from them.
//!
//! Each document holds every type under `$defs`; its root names the types a
//! reader starts from. Schemas follow the deserializing side: a field the
//! reader defaults (`relayed`, `epoch`) is optional.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::frames::{self, ClientFrame, ServerFrame, close};
use crate::model::{Conversation, ConversationSummary, Member};
use crate::rest;

/// Draft 2020-12, definitions under `$defs`.
fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12().into_generator()
}

/// The WebSocket frames (`GET /v1/ws`): `ClientFrame`, `ServerFrame`, the
/// close codes and the largest frame.
pub fn frames() -> Value {
    let mut g = generator();
    let client = g.subschema_for::<ClientFrame>();
    let server = g.subschema_for::<ServerFrame>();
    let mut defs = g.take_definitions(true);
    defs.insert("CloseCode".into(), close_codes());
    document(
        "https://switchboard.dev/schema/v1/frames.json",
        "Switchboard WebSocket frames (protocol v1)",
        "Every text frame on GET /v1/ws is one JSON object with a \"type\": a ClientFrame from the client, a ServerFrame from the gateway. CloseCode lists the application close codes.",
        json!({"anyOf": [client.to_value(), server.to_value()]}),
        defs,
        json!({"maxFrameBytes": frames::MAX_FRAME_BYTES}),
    )
}

/// The REST bodies (`/v1/...`) and the conversation model they carry.
pub fn rest() -> Value {
    let mut g = generator();
    let roots = [
        g.subschema_for::<rest::NonceResponse>(),
        g.subschema_for::<rest::VerifyRequest>(),
        g.subschema_for::<rest::VerifyResponse>(),
        g.subschema_for::<rest::CreateConversation>(),
        g.subschema_for::<rest::CreateChannel>(),
        g.subschema_for::<Conversation>(),
        g.subschema_for::<ConversationSummary>(),
        g.subschema_for::<rest::ListPage>(),
        g.subschema_for::<rest::HistoryPage>(),
        g.subschema_for::<rest::AddMembers>(),
        g.subschema_for::<rest::AddedMembers>(),
        g.subschema_for::<Member>(),
        g.subschema_for::<rest::ErrorBody>(),
    ];
    let mut defs = g.take_definitions(true);
    // A type alias has no name of its own in schemars: give it one.
    let mut g2 = generator();
    let presence = <rest::PresenceMap as JsonSchema>::json_schema(&mut g2);
    let mut presence = presence.to_value();
    if let Some(o) = presence.as_object_mut() {
        o.insert(
            "description".into(),
            "GET /v1/presence?users=…: checksummed address → entry.".into(),
        );
    }
    defs.insert("PresenceMap".into(), presence);
    for (k, v) in g2.take_definitions(true) {
        defs.entry(k).or_insert(v);
    }
    let mut any: Vec<Value> = roots.into_iter().map(|s| s.to_value()).collect();
    any.push(json!({"$ref": "#/$defs/PresenceMap"}));
    document(
        "https://switchboard.dev/schema/v1/rest.json",
        "Switchboard REST bodies (protocol v1)",
        "Request and answer bodies of the /v1 REST API. Errors are ErrorBody with an HTTP status matching error.code.",
        json!({"anyOf": any}),
        defs,
        json!({}),
    )
}

/// The close codes of [`frames::close`], as integer constants with their
/// names (`title`) and meanings.
fn close_codes() -> Value {
    let codes = [
        (
            close::UNAUTHORIZED,
            "UNAUTHORIZED",
            "Authentication failed, was missing for too long, or the session expired or was revoked: sign in again, reconnect and sync.",
        ),
        (
            close::IDLE_TIMEOUT,
            "IDLE_TIMEOUT",
            "No frame (not even ping) for longer than the idle timeout.",
        ),
        (
            close::SLOW_CONSUMER,
            "SLOW_CONSUMER",
            "The client did not read fast enough: reconnect with backoff and sync.",
        ),
        (
            close::TOO_BIG,
            "TOO_BIG",
            "A frame larger than maxFrameBytes: do not resend it.",
        ),
        (
            close::GOING_AWAY,
            "GOING_AWAY",
            "The gateway is draining: reconnect (to any gateway) at once and sync.",
        ),
        (
            close::TOO_MANY_CONNECTIONS,
            "TOO_MANY_CONNECTIONS",
            "The user holds the most connections a gateway takes: close one or retry later with backoff.",
        ),
        (
            close::FLOODING,
            "FLOODING",
            "Frames kept coming through a burst of rate_limited answers: reconnect with backoff and pace the frames.",
        ),
    ];
    let one_of: Vec<Value> = codes
        .iter()
        .map(|(code, name, why)| json!({"type": "integer", "const": code, "title": name, "description": why}))
        .collect();
    json!({
        "description": "WebSocket close codes the gateway uses (4000-4999 is the application range).",
        "oneOf": one_of,
    })
}

fn document(
    id: &str,
    title: &str,
    description: &str,
    root: Value,
    defs: Map<String, Value>,
    extra: Value,
) -> Value {
    let mut doc = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": id,
        "title": title,
        "description": description,
    });
    if let (Some(d), Some(r)) = (doc.as_object_mut(), root.as_object()) {
        d.extend(r.clone());
        d.insert("$defs".into(), Value::Object(defs));
        if let Some(e) = extra.as_object()
            && !e.is_empty()
        {
            d.insert("x-switchboard".into(), Value::Object(e.clone()));
        }
    }
    sorted(doc)
}

/// Keys sorted at every level, so the text is the same whatever map
/// order serde_json was built with (`preserve_order` is a workspace-wide
/// feature another crate could turn on).
pub fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// The checked-in file name and content of every document.
pub fn documents() -> Vec<(&'static str, Value)> {
    vec![("frames.json", frames()), ("rest.json", rest())]
}

/// The text written to `proto/schema/<name>`: pretty JSON and a newline.
pub fn to_text(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}
