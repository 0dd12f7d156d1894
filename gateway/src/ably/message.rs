//! Ably messages and Switchboard messages: what a publish stores (its Ably
//! fields, as they came), the idempotency key an Ably message id becomes,
//! and how a stored message reads back as an Ably message.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha3::{Digest, Keccak256};
use switchboard_proto::frames::Message;
use switchboard_proto::ids::MsgId;

use super::AblyError;

/// Messages one publish may carry.
pub const MAX_BATCH: usize = 100;

/// One message as an Ably client publishes it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct InMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(default, rename = "clientId", skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extras: Option<Value>,
}

/// A publish body: one message object or an array of 1 to [`MAX_BATCH`]
/// of them. Everything else is a 40000 naming the problem. Pure, so the
/// fuzz target `ably_publish` drives it with arbitrary bytes.
pub fn parse_publish(body: &[u8]) -> Result<Vec<InMessage>, AblyError> {
    let parsed: Value = serde_json::from_slice(body)
        .map_err(|e| AblyError::bad_request(format!("the body is not JSON: {e}")))?;
    let list: Vec<InMessage> = match parsed {
        Value::Array(items) => items
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>(),
        one @ Value::Object(_) => serde_json::from_value(one).map(|m| vec![m]),
        _ => {
            return Err(AblyError::bad_request(
                "the body must be a message or an array of messages",
            ));
        }
    }
    .map_err(|e| AblyError::bad_request(format!("invalid message: {e}")))?;
    if list.is_empty() {
        return Err(AblyError::bad_request("no messages to publish"));
    }
    if list.len() > MAX_BATCH {
        return Err(AblyError::bad_request(format!(
            "at most {MAX_BATCH} messages per publish (got {})",
            list.len()
        )));
    }
    Ok(list)
}

/// The idempotency key of an Ably message id: itself when it fits
/// [`MsgId`]'s alphabet, else a hash of it (Ably ids are base64 and may hold
/// `+` and `/`).
pub fn msg_id_of(ably_id: &str) -> MsgId {
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

    /// Found by the `ably_publish` fuzz target: a number with more digits
    /// than a float holds came back as a neighbouring float once stored and
    /// read again (serde_json's default float parsing may be off by one
    /// ulp; the workspace turns on `float_roundtrip`).
    #[test]
    fn long_numbers_in_data_survive_a_round_trip() {
        let body = br#"{"data":{"k":[18888888888888880000000000000000000000000000000000000000000000000000000000005124095576030431004,2]}}"#;
        let first = parse_publish(body).unwrap_or_default();
        assert_eq!(first.len(), 1);
        let text = serde_json::to_string(&first[0]).unwrap_or_default();
        assert_eq!(
            parse_publish(text.as_bytes()).unwrap_or_default(),
            first,
            "{text}"
        );
    }
}
