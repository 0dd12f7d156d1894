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
//!
//! The names are written by Lua (the send and mark scripts) and read here,
//! so they are defined once, in [`fields`] and [`kind`]: the scripts name
//! them through placeholders ([`LUA_PLACEHOLDERS`]) filled in when their
//! text is built, and a unit test of the broker fails if a script writes a
//! field that is not one of these constants.

use std::collections::HashMap;

use serde_json::value::RawValue;

use crate::store::WatermarkUpdate;
use switchboard_proto::frames::Message;
use switchboard_proto::ids::{Address, ConvId, MsgId};

/// Field names of a persistence-stream entry.
pub mod fields {
    /// The entry's kind: one of [`super::kind`].
    pub const KIND: &str = "t";
    pub const CONV: &str = "conv";
    pub const SEQ: &str = "seq";
    pub const ID: &str = "id";
    pub const FROM: &str = "from";
    pub const BODY: &str = "body";
    pub const TS: &str = "ts";
    pub const USER: &str = "user";
    pub const DELIVERED: &str = "delivered";
    pub const READ: &str = "read";

    /// Every field of a message entry.
    pub const MESSAGE: [&str; 7] = [KIND, CONV, SEQ, ID, FROM, BODY, TS];
    /// Every field of a watermark entry.
    pub const WATERMARK: [&str; 5] = [KIND, CONV, USER, DELIVERED, READ];
}

/// Values of [`fields::KIND`].
pub mod kind {
    pub const MESSAGE: &str = "msg";
    pub const WATERMARK: &str = "wm";
}

/// Fields the worker adds when it moves an entry to the dead-letter stream
/// (next to the entry's own fields).
pub mod dead_fields {
    /// The entry's id in its persistence stream.
    pub const SRC_ID: &str = "src_id";
    /// Why it could not be persisted.
    pub const REASON: &str = "reason";
    /// How often it was delivered.
    pub const ATTEMPTS: &str = "attempts";
}

/// The placeholders Lua scripts use for the names above (`{{F_CONV}}` in a
/// script stands for [`fields::CONV`]), for [`super::lua::render`].
pub const LUA_PLACEHOLDERS: &[(&str, &str)] = &[
    ("F_KIND", fields::KIND),
    ("F_CONV", fields::CONV),
    ("F_SEQ", fields::SEQ),
    ("F_ID", fields::ID),
    ("F_FROM", fields::FROM),
    ("F_BODY", fields::BODY),
    ("F_TS", fields::TS),
    ("F_USER", fields::USER),
    ("F_DELIVERED", fields::DELIVERED),
    ("F_READ", fields::READ),
    ("K_MESSAGE", kind::MESSAGE),
    ("K_WATERMARK", kind::WATERMARK),
    ("D_SRC_ID", dead_fields::SRC_ID),
    ("D_REASON", dead_fields::REASON),
    ("D_ATTEMPTS", dead_fields::ATTEMPTS),
];

/// The worker's consumer group on every persistence stream.
pub const WORKER_GROUP: &str = "sb-worker";

/// Dead letters kept per shard (approximately): past it the oldest go, so a
/// flood of refused entries cannot fill Redis. Watch `dead_letter_size`.
pub const DEAD_LETTER_MAX_LEN: usize = 100_000;

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
pub fn parse_entry(entry: &HashMap<String, String>) -> Result<PersistEntry, String> {
    let get = |k: &str| {
        entry
            .get(k)
            .map(String::as_str)
            .ok_or_else(|| format!("missing field {k:?}"))
    };
    let num = |k: &str| -> Result<u64, String> {
        get(k)?
            .parse::<u64>()
            .map_err(|e| format!("field {k:?}: {e}"))
    };
    // Parse field `k` as a `T`; the error names the field.
    fn parsed<T: std::str::FromStr>(k: &str, v: &str) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        v.parse::<T>().map_err(|e| format!("field {k:?}: {e}"))
    }
    let conv: ConvId = parsed(fields::CONV, get(fields::CONV)?)?;
    match get(fields::KIND)? {
        kind::MESSAGE => Ok(PersistEntry::Message(Message {
            conv,
            seq: num(fields::SEQ)?,
            id: parsed::<MsgId>(fields::ID, get(fields::ID)?)?,
            from: parsed::<Address>(fields::FROM, get(fields::FROM)?)?,
            body: RawValue::from_string(get(fields::BODY)?.to_string())
                .map_err(|e| format!("field {:?}: {e}", fields::BODY))?,
            ts: num(fields::TS)?,
            relayed: false,
        })),
        kind::WATERMARK => Ok(PersistEntry::Watermark(WatermarkUpdate {
            conv,
            user: parsed::<Address>(fields::USER, get(fields::USER)?)?,
            delivered: num(fields::DELIVERED)?,
            read: num(fields::READ)?,
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
