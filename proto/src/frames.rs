//! Protocol v1: the JSON frames exchanged over the WebSocket (`GET /v1/ws`).
//!
//! Every frame is a JSON object with a `"type"` tag. `docs/protocol.md` is the
//! human-readable contract; these types are the machine-checked one, shared by
//! the gateway and the client SDK so the two cannot drift.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{Address, ConvId, MsgId};

/// Largest text frame the gateway accepts; larger frames close the socket with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Close codes the gateway uses (4000–4999 is the application range).
pub mod close {
    /// Authentication failed, was missing for too long, or the token expired.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The client did not read fast enough: its bounded send queue filled up.
    /// Reconnect with backoff and resync from the last seq held.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// No frame (not even `ping`) for longer than the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// Frame larger than [`super::MAX_FRAME_BYTES`] (standard "message too big").
    pub const TOO_BIG: u16 = 1009;
    /// The gateway is draining (shutdown, scale-in, rollout): reconnect elsewhere.
    pub const GOING_AWAY: u16 = 1012;
    /// The user already holds the most connections a gateway takes per user
    /// (counted once the socket authenticated with its first frame; an
    /// upgrade with a bearer token is refused with HTTP 429 instead). Close
    /// one, or retry later with backoff.
    pub const TOO_MANY_CONNECTIONS: u16 = 4029;
    /// Frames kept coming after `rate_limited` answers: a whole frame burst
    /// of them (400 by default, at least 100) refused in a row. Reconnect
    /// with backoff and pace the frames.
    pub const FLOODING: u16 = 4030;
}

/// Frames a client sends. Parse with [`ClientFrame::from_json`]: serde's
/// internally tagged enums buffer their content, which cannot hold the raw
/// `body` of a `send`, so that variant is parsed on its own.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Must be the first frame unless the upgrade carried `Authorization: Bearer`.
    Auth { token: String },
    /// Send a message. `id` is the client's idempotency key.
    Send {
        conv: ConvId,
        id: MsgId,
        body: Box<RawValue>,
    },
    /// The message `seq` of `conv` reached this device.
    Ack { conv: ConvId, seq: u64 },
    /// The user has read `conv` up to `seq`.
    Read { conv: ConvId, seq: u64 },
    /// The user is typing in `conv` (ephemeral, rate-limited, never stored).
    Typing { conv: ConvId },
    /// Replay every message of `conv` after `after`, then answer `synced`.
    Sync { conv: ConvId, after: u64 },
    /// Follow a channel: replay its messages after `after` (default: none,
    /// only new ones), answer `subscribed`, then deliver new ones live.
    Subscribe {
        channel: ConvId,
        #[serde(default)]
        after: Option<u64>,
    },
    /// Stop following a channel; answers `unsubscribed`.
    Unsubscribe { channel: ConvId },
    /// Keep-alive and presence heartbeat.
    Ping {},
}

/// `{"type": ...}` of any frame; other fields are skipped unparsed.
#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendWire {
    #[serde(rename = "type")]
    _type: serde::de::IgnoredAny,
    conv: ConvId,
    id: MsgId,
    body: Box<RawValue>,
}

/// An `ack`, with the same rules as the enum's variant (every field
/// required, no others).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckWire {
    #[serde(rename = "type")]
    _type: serde::de::IgnoredAny,
    conv: ConvId,
    seq: u64,
}

impl ClientFrame {
    /// Parse one text frame.
    pub fn from_json(s: &str) -> Result<ClientFrame, serde_json::Error> {
        let tag: Tag<'_> = serde_json::from_str(s)?;
        match &*tag.ty {
            "send" => {
                let w: SendWire = serde_json::from_str(s)?;
                Ok(ClientFrame::Send {
                    conv: w.conv,
                    id: w.id,
                    body: w.body,
                })
            }
            // The most frequent frame, one per delivered message: parsed
            // straight into its fields, without the tagged enum's buffering
            // (a copy of every field before the variant is known).
            "ack" => {
                let w: AckWire = serde_json::from_str(s)?;
                Ok(ClientFrame::Ack {
                    conv: w.conv,
                    seq: w.seq,
                })
            }
            _ => serde_json::from_str(s),
        }
    }
}

/// Presence derived from the time since a user was last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    Online,
    Away,
    Offline,
}

/// A stored message as delivered to members.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    pub conv: ConvId,
    pub seq: u64,
    pub id: MsgId,
    pub from: Address,
    pub body: Box<RawValue>,
    /// Server time (Unix ms) at which the seq was assigned (for a relayed
    /// message: at which the gateway accepted it).
    pub ts: u64,
    /// Delivered through the fallback relay while Redis was unreachable:
    /// `seq` is 0 (none assigned yet) and nothing is acked. The same
    /// message comes again, sequenced, once Redis is back; clients keep
    /// one copy per `(conv, from, id)`. Absent on the wire when `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub relayed: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Frames the server sends. Parse with [`ServerFrame::from_json`]: the
/// derived `Deserialize` cannot hold the raw `body` of a `msg` (serde buffers
/// tagged-enum content) and fails on `msg` frames.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Authentication succeeded.
    Ready {
        user: Address,
        heartbeat_ms: u64,
    },
    /// A `send` was accepted: `seq` is assigned and the message is durable
    /// in the broker (or, with `relayed`, held by the gateway and relayed).
    Sent {
        id: MsgId,
        conv: ConvId,
        seq: u64,
        ts: u64,
        /// Accepted through the fallback relay while Redis was unreachable:
        /// `seq` is 0 until the message is sequenced (the sender then gets
        /// it as a `msg` with its seq). Absent when `false`.
        #[serde(default, skip_serializing_if = "is_false")]
        relayed: bool,
    },
    /// A message for this user. Acknowledge with `ack {conv, seq}`.
    Msg(Message),
    /// A member's delivered/read high-water marks in `conv` moved.
    Receipt {
        conv: ConvId,
        user: Address,
        delivered: u64,
        read: u64,
    },
    Typing {
        conv: ConvId,
        user: Address,
    },
    Presence {
        user: Address,
        status: PresenceStatus,
        /// Unix ms; 0 when the user was never seen.
        last_seen: u64,
    },
    /// Sent after the `msg` frames a `sync` replayed.
    Synced {
        conv: ConvId,
        /// `true` when every message after the requested seq up to the last
        /// replayed one was still available and was replayed.
        recovered: bool,
        /// The conversation's current last seq.
        last_seq: u64,
        /// The conversation's epoch. It changes when the server lost the
        /// conversation's recent state and rebuilt it from storage; a client
        /// holding messages of another epoch drops those above the stored
        /// history and syncs again (see docs/protocol.md).
        #[serde(default)]
        epoch: u64,
        /// Seqs up to this one are the same messages in every epoch; a
        /// client that held seqs above it from an earlier epoch drops them.
        #[serde(default)]
        epoch_base: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
        /// The `id` of the `send` (or the `conv`) the error refers to, if any.
        #[serde(default, skip_serializing_if = "Option::is_none", rename = "ref")]
        reference: Option<String>,
    },
    Pong {},
    /// A `subscribe` took effect: the replayed messages (if any) came
    /// before this; later ones arrive live, in seq order, without gaps.
    Subscribed {
        channel: ConvId,
        /// The channel's last seq when the replay ended.
        last_seq: u64,
        /// `false` when some messages after `after` are no longer available.
        recovered: bool,
    },
    /// An `unsubscribe` took effect.
    Unsubscribed {
        channel: ConvId,
    },
}

impl ServerFrame {
    /// Parse one text frame (client side). `msg` carries a raw `body`, which
    /// serde's tagged-enum buffering cannot hold, so it is parsed on its own.
    pub fn from_json(s: &str) -> Result<ServerFrame, serde_json::Error> {
        let tag: Tag<'_> = serde_json::from_str(s)?;
        if tag.ty == "msg" {
            return serde_json::from_str::<Message>(s).map(ServerFrame::Msg);
        }
        serde_json::from_str(s)
    }

    pub fn error(code: ErrorCode, message: impl Into<String>, reference: Option<String>) -> Self {
        ServerFrame::Error {
            code,
            message: message.into(),
            reference,
        }
    }

    /// Serialize to the JSON text sent on the wire.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every field is a string, number,
        // bool or already-valid raw JSON.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","code":"internal","message":"encode: {e}"}}"#)
        })
    }
}

/// Machine-readable error codes, shared by error frames and HTTP problem bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, unknown `type`, missing or invalid field.
    BadFrame,
    /// An HTTP request whose body, path or query is malformed or invalid.
    BadRequest,
    /// The request body is larger than the endpoint takes (HTTP 413).
    TooLarge,
    /// Missing, invalid or expired credentials.
    Unauthorized,
    /// Authenticated, but not allowed (e.g. not a member of the conversation).
    Forbidden,
    /// Too many requests; slow down.
    RateLimited,
    /// The referenced resource does not exist (or is not visible to the caller).
    NotFound,
    /// The request was well-formed but its content is unacceptable.
    Invalid,
    /// The channel name is reserved by the operator: only API keys create it.
    Reserved,
    /// The broker is unreachable or failed; retry with the same id.
    Unavailable,
    /// A bug on our side.
    Internal,
}

impl ErrorCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Reserved => "reserved",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse() {
        let f = ClientFrame::from_json(
            r#"{"type":"send","conv":"g:0123456789abcdef0123456789abcdef","id":"m1","body":{"text":"hi"}}"#,
        )
        .unwrap();
        match f {
            ClientFrame::Send { id, body, .. } => {
                assert_eq!(id.as_str(), "m1");
                assert_eq!(body.get(), r#"{"text":"hi"}"#);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ClientFrame::from_json(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping {}
        ));
        // Fields in any order, the tag anywhere.
        for ack in [
            r#"{"type":"ack","conv":"g:0123456789abcdef0123456789abcdef","seq":7}"#,
            r#"{"seq":7,"conv":"g:0123456789abcdef0123456789abcdef","type":"ack"}"#,
        ] {
            match ClientFrame::from_json(ack).unwrap() {
                ClientFrame::Ack { conv, seq } => {
                    assert_eq!(conv.as_str(), "g:0123456789abcdef0123456789abcdef");
                    assert_eq!(seq, 7);
                }
                other => panic!("{other:?}"),
            }
        }
        for bad in [
            r#"{"type":"nope"}"#,
            r#"{"type":"ack","conv":"x","seq":1}"#,
            r#"{"type":"ack","conv":"g:0123456789abcdef0123456789abcdef"}"#,
            r#"{"type":"ack","conv":"g:0123456789abcdef0123456789abcdef","seq":-1}"#,
            r#"{"type":"ack","conv":"g:0123456789abcdef0123456789abcdef","seq":"1"}"#,
            r#"{"type":"ack","conv":"g:0123456789abcdef0123456789abcdef","seq":1,"x":2}"#,
            r#"{"type":"ack","type":"ack","conv":"g:0123456789abcdef0123456789abcdef","seq":1}"#,
            r#"{"type":"send","conv":"g:0123456789abcdef0123456789abcdef","id":"m1"}"#,
            r#"{"type":"send","conv":"g:0123456789abcdef0123456789abcdef","id":"m1","body":1,"x":2}"#,
            r#"{"conv":"g:0123456789abcdef0123456789abcdef"}"#,
            "[]",
            "",
        ] {
            assert!(ClientFrame::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn msg_frames_round_trip_with_raw_bodies() {
        let text = r#"{"type":"msg","conv":"g:0123456789abcdef0123456789abcdef","seq":3,"id":"m1","from":"0x2c7536E3605D9C16a7a3D7b1898e529396a65c23","body":{"a":[1,"é"]},"ts":5}"#;
        let f = ServerFrame::from_json(text).unwrap();
        assert_eq!(f.to_json(), text);
        let p = ServerFrame::from_json(r#"{"type":"pong"}"#).unwrap();
        assert!(matches!(p, ServerFrame::Pong {}));
    }

    #[test]
    fn server_frames_serialize_flat() {
        let f = ServerFrame::error(ErrorCode::RateLimited, "slow down", Some("m1".into()));
        assert_eq!(
            f.to_json(),
            r#"{"type":"error","code":"rate_limited","message":"slow down","ref":"m1"}"#
        );
        assert_eq!(ServerFrame::Pong {}.to_json(), r#"{"type":"pong"}"#);
    }
}
