//! The persistence streams: how the send and mark scripts hand messages and
//! watermark changes to the worker (`sb:{<shard>}:persist`, one per logical
//! shard, consumer group [`WORKER_GROUP`]), and how the worker reads them back.
//!
//! Entry fields (all strings, as Redis stores them):
//!
//! | `t` | other fields |
//! |---|---|
//! | `msg` | `conv`, `seq`, `id`, `from` (lowercase address), `body` (JSON text), `ts` (Unix ms) |
//! | `wm` | `conv`, `user`, `delivered`, `read` |

use std::collections::HashMap;

use serde_json::value::RawValue;

use crate::store::WatermarkUpdate;
use switchboard_proto::frames::Message;
use switchboard_proto::ids::{Address, ConvId, MsgId};

/// The worker's consumer group on every persistence stream.
pub const WORKER_GROUP: &str = "sb-worker";

/// The persistence stream of logical shard `shard`.
pub fn persist_stream_key(shard: u16) -> String {
    format!("sb:{{{shard}}}:persist")
}

/// Where entries that failed too often go, next to their stream (same hash
/// tag, so moving one is a single-slot script).
pub fn dead_letter_key(shard: u16) -> String {
    format!("sb:{{{shard}}}:dead")
}

/// One decoded stream entry.
#[derive(Debug, Clone)]
pub enum PersistEntry {
    Message(Message),
    Watermark(WatermarkUpdate),
}

/// Decode an entry's fields. The error names the offending field, for the
/// dead-letter reason and the log line.
pub fn parse_entry(fields: &HashMap<String, String>) -> Result<PersistEntry, String> {
    let get = |k: &str| {
        fields
            .get(k)
            .map(String::as_str)
            .ok_or_else(|| format!("missing field {k:?}"))
    };
    let num = |k: &str| -> Result<u64, String> {
        get(k)?
            .parse::<u64>()
            .map_err(|e| format!("field {k:?}: {e}"))
    };
    let conv: ConvId = get("conv")?
        .parse()
        .map_err(|e| format!("field \"conv\": {e}"))?;
    match get("t")? {
        "msg" => Ok(PersistEntry::Message(Message {
            conv,
            seq: num("seq")?,
            id: get("id")?
                .parse::<MsgId>()
                .map_err(|e| format!("field \"id\": {e}"))?,
            from: get("from")?
                .parse::<Address>()
                .map_err(|e| format!("field \"from\": {e}"))?,
            body: RawValue::from_string(get("body")?.to_string())
                .map_err(|e| format!("field \"body\": {e}"))?,
            ts: num("ts")?,
        })),
        "wm" => Ok(PersistEntry::Watermark(WatermarkUpdate {
            conv,
            user: get("user")?
                .parse::<Address>()
                .map_err(|e| format!("field \"user\": {e}"))?,
            delivered: num("delivered")?,
            read: num("read")?,
        })),
        other => Err(format!("unknown entry type {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn decodes_messages_and_watermarks_and_names_bad_fields() {
        let a = "0x1111111111111111111111111111111111111111";
        let b = "0x2222222222222222222222222222222222222222";
        let conv = format!("dm:{a}:{b}");
        let m = parse_entry(&fields(&[
            ("t", "msg"),
            ("conv", &conv),
            ("seq", "7"),
            ("id", "m-1"),
            ("from", a),
            ("body", r#"{"x": 1}"#),
            ("ts", "123"),
        ]))
        .unwrap();
        match m {
            PersistEntry::Message(m) => {
                assert_eq!((m.seq, m.ts, m.body.get()), (7, 123, r#"{"x": 1}"#));
            }
            other => panic!("{other:?}"),
        }
        let w = parse_entry(&fields(&[
            ("t", "wm"),
            ("conv", &conv),
            ("user", b),
            ("delivered", "3"),
            ("read", "2"),
        ]))
        .unwrap();
        assert!(matches!(w, PersistEntry::Watermark(w) if w.delivered == 3 && w.read == 2));

        let err = parse_entry(&fields(&[("t", "msg"), ("conv", &conv), ("seq", "x")])).unwrap_err();
        assert!(err.contains("\"seq\""), "{err}");
        let err = parse_entry(&fields(&[("t", "zz"), ("conv", &conv)])).unwrap_err();
        assert!(err.contains("unknown entry type"), "{err}");
        let err = parse_entry(&fields(&[("t", "msg")])).unwrap_err();
        assert!(err.contains("missing field \"conv\""), "{err}");
    }
}
