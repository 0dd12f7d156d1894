//! The OpenAPI document (`GET /v1/openapi.json`): checked in as
//! `proto/schema/openapi.json` and exactly what the code produces
//! (`UPDATE_SCHEMA=1 cargo test -p switchboard-gateway --test openapi`
//! rewrites it), served as is, and true of the running gateway: every
//! documented operation reaches its handler, and what the handler answers a
//! caller without credentials or input is among the answers documented.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use base64::Engine as _;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use switchboard_gateway::api;
use switchboard_proto::ids::ConvId;
use switchboard_proto::schema::to_text;

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto/schema/openapi.json")
}

#[test]
fn checked_in_document_matches_the_code() {
    let want = to_text(&api::openapi());
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(checked_in(), &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(checked_in()).unwrap_or_default();
    assert!(
        have == want,
        "proto/schema/openapi.json differs from the code: run \
         UPDATE_SCHEMA=1 cargo test -p switchboard-gateway --test openapi"
    );
}

#[test]
fn every_operation_is_described() {
    let doc = api::openapi();
    let paths = doc["paths"].as_object().unwrap();
    let mut seen = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            seen += 1;
            let at = format!("{method} {path}");
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{at}"
            );
            assert!(!op["responses"].as_object().unwrap().is_empty(), "{at}");
            // Every {param} of the path is a documented path parameter, and
            // nothing else is.
            let in_path: Vec<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            let documented: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .filter_map(|p| p["name"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(in_path, documented, "{at}");
        }
    }
    assert_eq!(seen, api::endpoints().len(), "one operation per row");
    // Every reference resolves.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for r in text.split("\"$ref\":\"").skip(1) {
        let r = r.split('"').next().unwrap();
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("a reference outside the components: {r}"));
        assert!(schemas.contains_key(name), "{r} does not resolve");
    }
}

#[tokio::test]
async fn the_gateway_serves_it_and_answers_as_it_says() {
    let gw = start_gateway(&Backend::memory(), fast_config()).await;
    let base = http(&gw);
    let c = reqwest::Client::new();
    let served = c
        .get(format!("{base}/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served: Value = served.json().await.unwrap();
    assert_eq!(served, api::openapi());

    // Each operation, called without credentials and without input: it
    // reaches a handler (not the 404 of an unknown path, not a 405), and
    // the status is one the document lists for it.
    for (path, item) in served["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let url = format!("{base}{}", example_path(path));
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = c.request(m, &url).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            let at = format!("{method} {path} → {status} {body}");
            assert!(!body.contains("no such endpoint"), "not mounted: {at}");
            assert_ne!(status, 405, "mounted for another method: {at}");
            let listed = op["responses"].as_object().unwrap();
            assert!(
                listed.contains_key(&status.to_string()),
                "an answer the document does not list: {at}"
            );
        }
    }
    gw.shutdown().await;
}

/// Every answer a real exchange produces has the schema the document gives
/// for its operation and status: sign-in, groups, the list, history,
/// members, presence, channels, the Ably publish and history, and errors of
/// both kinds. A field renamed in a handler but not in the document fails
/// here.
#[tokio::test]
async fn answers_have_the_documented_schemas() {
    const KEY: &str = "app.key1:s3cret";
    let cfg = switchboard_gateway::GatewayConfig {
        api_keys: vec![KEY.parse().unwrap()],
        ..fast_config()
    };
    let gw = start_gateway(&Backend::memory(), cfg).await;
    let base = http(&gw);
    let doc = api::openapi();
    let check = Checker {
        doc: &doc,
        c: reqwest::Client::new(),
        base: &base,
    };
    let (alice, bob) = (Wallet::random(), Wallet::random());
    let token = login(&base, &alice).await;
    login(&base, &bob).await;
    let bearer = format!("Bearer {token}");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(KEY)
    );

    check
        .call("get", "/v1/auth/nonce", "/v1/auth/nonce", None, None, 200)
        .await;
    let group = check
        .call(
            "post",
            "/v1/conversations",
            "/v1/conversations",
            Some(&bearer),
            Some(json!({"kind": "group", "members": [bob.addr], "title": "team"})),
            201,
        )
        .await;
    let g = group["id"].as_str().unwrap().to_string();
    let dm = ConvId::direct(&alice.addr, &bob.addr).unwrap();
    let mut ws = Ws::connect(&gw, &token).await;
    for (i, conv) in [g.as_str(), dm.as_str()].into_iter().enumerate() {
        ws.send(json!({"type": "send", "id": format!("m{i}"), "conv": conv, "body": {"n": i}}))
            .await;
        ws.recv_type("sent").await;
    }
    check
        .call(
            "get",
            "/v1/conversations",
            "/v1/conversations?limit=1",
            Some(&bearer),
            None,
            200,
        )
        .await;
    check
        .call(
            "get",
            "/v1/conversations/{id}",
            &format!("/v1/conversations/{g}"),
            Some(&bearer),
            None,
            200,
        )
        .await;
    check
        .call(
            "get",
            "/v1/conversations/{id}",
            &format!("/v1/conversations/{dm}"),
            Some(&bearer),
            None,
            200,
        )
        .await;
    let page = check
        .call(
            "get",
            "/v1/conversations/{id}/messages",
            &format!("/v1/conversations/{g}/messages"),
            Some(&bearer),
            None,
            200,
        )
        .await;
    assert_eq!(page["messages"][0]["status"], "sent", "{page}");
    let carol = Wallet::random();
    check
        .call(
            "post",
            "/v1/conversations/{id}/members",
            &format!("/v1/conversations/{g}/members"),
            Some(&bearer),
            Some(json!({"members": [carol.addr]})),
            200,
        )
        .await;
    check
        .call(
            "get",
            "/v1/presence",
            &format!("/v1/presence?users={},{}", alice.addr, carol.addr),
            Some(&bearer),
            None,
            200,
        )
        .await;
    check
        .call(
            "post",
            "/v1/channels",
            "/v1/channels",
            Some(&bearer),
            Some(json!({"name": "news", "visibility": "public"})),
            201,
        )
        .await;
    // The Ably subset: a publish (one, then a batch), history of both
    // kinds of stored body (published here, sent over WebSocket).
    check
        .call(
            "post",
            "/channels/{name}/messages",
            "/channels/news/messages",
            Some(&basic),
            Some(json!({"id": "a1", "name": "n", "data": {"x": 1}})),
            201,
        )
        .await;
    check
        .call(
            "post",
            "/channels/{name}/messages",
            "/channels/news/messages",
            Some(&basic),
            Some(json!([{"data": "a"}, {"data": "b"}])),
            201,
        )
        .await;
    ws.send(json!({"type": "send", "id": "w1", "conv": "ch:news", "body": {"from": "ws"}}))
        .await;
    ws.recv_type("sent").await;
    let hist = check
        .call(
            "get",
            "/channels/{name}/messages",
            "/channels/news/messages?limit=10",
            Some(&basic),
            None,
            200,
        )
        .await;
    assert_eq!(hist.as_array().map(Vec::len), Some(4), "{hist}");
    // Errors: the native body and Ably's.
    check
        .call(
            "get",
            "/v1/conversations",
            "/v1/conversations?limit=0",
            Some(&bearer),
            None,
            400,
        )
        .await;
    check
        .call(
            "get",
            "/v1/conversations/{id}",
            &format!("/v1/conversations/g:{}", "0".repeat(32)),
            Some(&bearer),
            None,
            404,
        )
        .await;
    check
        .call(
            "post",
            "/v1/channels",
            "/v1/channels",
            Some(&bearer),
            Some(json!({"name": "news"})),
            409,
        )
        .await;
    check
        .call(
            "get",
            "/channels/{name}/messages",
            "/channels/news/messages?limit=0",
            Some(&basic),
            None,
            400,
        )
        .await;
    check
        .call(
            "post",
            "/channels/{name}/messages",
            "/channels/news/messages",
            Some("Basic eDp5"),
            Some(json!({})),
            401,
        )
        .await;
    check
        .call(
            "delete",
            "/v1/conversations/{id}/members/{address}",
            &format!("/v1/conversations/{g}/members/{}", carol.addr),
            Some(&bearer),
            None,
            204,
        )
        .await;
    gw.shutdown().await;
}

struct Checker<'a> {
    doc: &'a Value,
    c: reqwest::Client,
    base: &'a str,
}

impl Checker<'_> {
    /// Calls `url` as the operation `method template`, expects `status`, and
    /// validates the body against the document's schema for that answer.
    async fn call(
        &self,
        method: &str,
        template: &str,
        url: &str,
        auth: Option<&str>,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut req = self.c.request(m, format!("{}{url}", self.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let got = r.status().as_u16();
        let text = r.text().await.unwrap();
        let at = format!("{method} {url} → {got} {text}");
        assert_eq!(got, status, "{at}");
        let answer = &self.doc["paths"][template][method]["responses"][status.to_string()];
        assert!(answer.is_object(), "status not documented: {at}");
        let Some(schema) = answer["content"]["application/json"].get("schema") else {
            assert!(text.is_empty(), "a body the document does not give: {at}");
            return Value::Null;
        };
        // The answer's schema with the document's components beside it, so
        // its `#/components/schemas/...` references resolve.
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        let validator = jsonschema::validator_for(&root).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&v)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{at}: {errors:?}");
        v
    }
}

/// A path with its parameters filled in with well-formed values.
fn example_path(path: &str) -> String {
    path.replace(
        "{id}",
        "dm:0x0000000000000000000000000000000000000001:0x0000000000000000000000000000000000000002",
    )
    .replace("{address}", "0x0000000000000000000000000000000000000001")
    .replace("{name}", "news")
}
