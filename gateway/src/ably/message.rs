//! Ably messages and Switchboard messages: what a publish stores (its Ably
//! fields, as they came), the idempotency key an Ably message id becomes,
//! and how a stored message reads back as an Ably message.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha3::{Digest, Keccak256};
use switchboard_proto::frames::Message;
use switchboard_proto::ids::MsgId;

/// One message as an Ably client publishes it.
#[derive(Debug, Deserialize, Serialize)]
pub(super) struct InMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) encoding: Option<String>,
    #[serde(default, rename = "clientId", skip_serializing_if = "Option::is_none")]
    pub(super) client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) extras: Option<Value>,
}

/// The idempotency key of an Ably message id: itself when it fits
/// [`MsgId`]'s alphabet, else a hash of it (Ably ids are base64 and may hold
/// `+` and `/`).
pub(super) fn msg_id_of(ably_id: &str) -> MsgId {
    ably_id.parse::<MsgId>().unwrap_or_else(|_| {
        let h = Keccak256::digest(ably_id.as_bytes());
        let hex: String = h.iter().take(20).map(|b| format!("{b:02x}")).collect();
        format!("a.{hex}")
            .parse()
            .unwrap_or_else(|_| MsgId::random())
    })
}

/// A stored message as an Ably message.
pub(super) fn ably_message(m: &Message) -> Value {
    let fields = ["id", "name", "data", "encoding", "clientId", "extras"];
    let body: Option<Map<String, Value>> = serde_json::from_str(m.body.get()).ok();
    let mut out = match body {
        // Published through this API: its Ably fields as they came.
        Some(obj) if obj.contains_key("id") && obj.keys().all(|k| fields.contains(&k.as_str())) => {
            obj
        }
        // Anything else: the body as JSON text, which Ably clients decode.
        _ => {
            let mut o = Map::new();
            o.insert("id".into(), json!(m.id.as_str()));
            o.insert("data".into(), json!(m.body.get()));
            o.insert("encoding".into(), json!("json"));
            o
        }
    };
    out.insert("timestamp".into(), json!(m.ts));
    out.insert("serial".into(), json!(m.seq.to_string()));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ably_ids_become_message_ids() {
        assert_eq!(msg_id_of("Y03VYTCePv8q:0").as_str(), "Y03VYTCePv8q:0");
        let hashed = msg_id_of("a+b/c==:1");
        assert!(hashed.as_str().starts_with("a."), "{hashed}");
        assert_eq!(hashed, msg_id_of("a+b/c==:1"), "stable");
    }
}
