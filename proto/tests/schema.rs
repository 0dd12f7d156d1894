//! The checked-in JSON Schema documents (`proto/schema/*.json`) are exactly
//! what the code produces, so the TypeScript SDK generated from them cannot
//! drift from the Rust types. `UPDATE_SCHEMA=1 cargo test -p
//! switchboard-proto --test schema` rewrites them after a wire type changed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde_json::{Value, json};
use switchboard_proto::frames::{ClientFrame, ErrorCode, Message, ServerFrame};
use switchboard_proto::schema;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schema")
}

#[test]
fn checked_in_schemas_match_the_code() {
    let update = std::env::var_os("UPDATE_SCHEMA").is_some();
    let mut stale = Vec::new();
    for (name, doc) in schema::documents() {
        let path = dir().join(name);
        let want = schema::to_text(&doc);
        if update {
            std::fs::write(&path, &want).unwrap();
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "proto/schema/{stale:?} differ from the code: run \
         UPDATE_SCHEMA=1 cargo test -p switchboard-proto --test schema, then \
         regenerate the TypeScript types (sdk/js: npm run gen)"
    );
}

/// A minimal validator for the subset of JSON Schema the documents use
/// (type, enum/const, pattern-free string bounds, properties/required/
/// additionalProperties, anyOf/oneOf, $ref): enough to show that frames
/// serde writes satisfy their schema and frames serde refuses do not.
fn valid(root: &Value, s: &Value, v: &Value) -> bool {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        return valid(root, &root["$defs"][name], v);
    }
    if s == &Value::Bool(true) {
        return true;
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(t) => vec![t.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "array" => v.is_array(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            return false;
        }
    }
    if let Some(c) = s.get("const")
        && c != v
    {
        return false;
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        return false;
    }
    if let (Some(min), Some(n)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64())
        && n < min
    {
        return false;
    }
    if let Some(s_) = v.as_str() {
        let len = s_.chars().count() as u64;
        if s.get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len > m)
            || s.get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
        {
            return false;
        }
    }
    if let Some(o) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        if let Some(req) = s.get("required").and_then(Value::as_array)
            && req
                .iter()
                .any(|k| !o.contains_key(k.as_str().unwrap_or("")))
        {
            return false;
        }
        for (k, fv) in o {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => {
                    if !valid(root, ps, fv) {
                        return false;
                    }
                }
                None => {
                    if s.get("additionalProperties") == Some(&Value::Bool(false)) {
                        return false;
                    }
                }
            }
        }
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array)
        && !all.iter().all(|x| valid(root, x, v))
    {
        return false;
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(|x| valid(root, x, v))
    {
        return false;
    }
    if let Some(one) = s.get("oneOf").and_then(Value::as_array)
        && one.iter().filter(|x| valid(root, x, v)).count() != 1
    {
        return false;
    }
    true
}

#[test]
fn frames_serde_writes_satisfy_the_schema() {
    let doc = schema::frames();
    let client = json!({"$ref": "#/$defs/ClientFrame"});
    let server = json!({"$ref": "#/$defs/ServerFrame"});
    let g = "g:0123456789abcdef0123456789abcdef";
    let a = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23";
    for text in [
        format!(r#"{{"type":"send","conv":"{g}","id":"m1","body":{{"text":"hi"}}}}"#),
        r#"{"type":"subscribe","channel":"ch:news"}"#.to_string(),
        r#"{"type":"subscribe","channel":"ch:news","after":3}"#.to_string(),
        r#"{"type":"ping"}"#.to_string(),
        r#"{"type":"auth","token":"v1.x"}"#.to_string(),
    ] {
        ClientFrame::from_json(&text).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(valid(&doc, &client, &v), "{text}");
    }
    // Unknown fields, missing fields and bad ids: serde refuses, so must the schema.
    for text in [
        format!(r#"{{"type":"send","conv":"{g}","id":"m1","body":1,"x":2}}"#),
        format!(r#"{{"type":"send","conv":"{g}","id":"m1"}}"#),
        format!(
            r#"{{"type":"send","conv":"{g}","id":"{}","body":1}}"#,
            "x".repeat(65)
        ),
        r#"{"type":"nope"}"#.to_string(),
    ] {
        assert!(ClientFrame::from_json(&text).is_err(), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(!valid(&doc, &client, &v), "{text}");
    }
    let msg = Message {
        conv: g.parse().unwrap(),
        seq: 3,
        id: "m1".parse().unwrap(),
        from: a.parse().unwrap(),
        body: serde_json::value::RawValue::from_string("[1]".into()).unwrap(),
        ts: 5,
        relayed: false,
    };
    for f in [
        ServerFrame::Msg(msg),
        ServerFrame::error(ErrorCode::RateLimited, "slow", Some("m1".into())),
        ServerFrame::Pong {},
        ServerFrame::Synced {
            conv: g.parse().unwrap(),
            recovered: true,
            last_seq: 3,
            epoch: 0,
            epoch_base: 0,
        },
        ServerFrame::Ready {
            user: a.parse().unwrap(),
            heartbeat_ms: 30000,
        },
    ] {
        let v: Value = serde_json::from_str(&f.to_json()).unwrap();
        assert!(valid(&doc, &server, &v), "{v}");
    }
    let v =
        json!({"type": "msg", "conv": g, "seq": 1, "id": "m", "from": "0x12", "body": 1, "ts": 1});
    assert!(!valid(&doc, &server, &v), "a short address");
}
