//! Ably messages and Switchboard messages: what a publish stores (its Ably
//! fields, as they came), the idempotency key an Ably message id becomes,
//! and how a stored message reads back as an Ably message.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha3::{Digest, Keccak256};
use switchboard_proto::frames::Message;
use switchboard_proto::ids::MsgId;

use super::AblyError;

/// Messages one publish may carry.
pub const MAX_BATCH: usize = 100;

/// One message as an Ably client publishes it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
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

// What a publish body is, for the API's document. `parse_publish` reads
// the same shape by hand so each refusal can say what is wrong (an untagged
// enum's error names no field); a test below holds the two together.
/// A publish body: one message, or an array of them.
#[derive(JsonSchema)]
#[serde(untagged)]
pub enum PublishBody {
    One(InMessage),
    Batch(#[schemars(length(min = 1, max = MAX_BATCH))] Vec<InMessage>),
}

/// A message as history and SSE give it back: its Ably fields, the seq's
/// server time and the seq.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct OutMessage {
    #[serde(flatten)]
    pub fields: InMessage,
    /// Unix ms.
    pub timestamp: u64,
    /// The seq, as text.
    pub serial: String,
    /// On SSE streams with `enveloped` (the default): the channel's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
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
pub(super) fn ably_message(m: &Message) -> OutMessage {
    let fields = ["id", "name", "data", "encoding", "clientId", "extras"];
    let published = serde_json::from_str::<Map<String, Value>>(m.body.get())
        .ok()
        .filter(|o| o.contains_key("id") && o.keys().all(|k| fields.contains(&k.as_str())))
        .and_then(|o| serde_json::from_value::<InMessage>(Value::Object(o)).ok());
    let fields = published.unwrap_or_else(|| {
        // Anything else: the body as JSON text, which Ably clients decode.
        InMessage {
            id: Some(m.id.as_str().to_string()),
            data: Some(Value::String(m.body.get().to_string())),
            encoding: Some("json".into()),
            ..InMessage::default()
        }
    });
    OutMessage {
        fields,
        timestamp: m.ts,
        serial: m.seq.to_string(),
        channel: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented shape and the hand-written parser agree: what one
    /// takes, the other takes (the batch bound included).
    #[test]
    fn publish_body_documents_what_parse_publish_takes() {
        let many = format!("[{}]", vec!["{}"; MAX_BATCH + 1].join(","));
        for body in [
            r#"{"id":"a","data":1}"#,
            r#"[{"name":"n"},{"data":"x"}]"#,
            r#"{}"#,
            r#"[]"#,
            r#"5"#,
            r#"{"id":5}"#,
            r#"[{"data":1},3]"#,
            many.as_str(),
        ] {
            // The schema's two branches: an object that is an InMessage, or
            // an array of 1 to MAX_BATCH of them.
            let documented = match serde_json::from_str::<Value>(body) {
                Ok(one @ Value::Object(_)) => serde_json::from_value::<InMessage>(one).is_ok(),
                Ok(many @ Value::Array(_)) => serde_json::from_value::<Vec<InMessage>>(many)
                    .is_ok_and(|v| (1..=MAX_BATCH).contains(&v.len())),
                _ => false,
            };
            assert_eq!(documented, parse_publish(body.as_bytes()).is_ok(), "{body}");
        }
    }

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
