//! `GET /v1/conversations/{id}/events`: replay then live over Server-Sent
//! Events, exact resume with `Last-Event-ID` after a forced disconnect, and
//! the error answers (memory broker and a real Redis).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use switchboard_proto::ids::ConvId;

/// The shared SSE reader, plus the native format's message check.
struct Stream(SseStream);

impl Stream {
    async fn open(url: &str, headers: &[(&str, &str)]) -> Result<Stream, (u16, Value)> {
        SseStream::open(url, headers).await.map(Stream)
    }

    async fn next(&mut self) -> SseEvent {
        self.0.next().await
    }

    /// The seqs of the next `n` message events (checking id == seq).
    async fn messages(&mut self, n: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        while seqs.len() < n {
            let ev = self.next().await;
            assert_eq!(ev.event, "message", "{ev:?}");
            let frame: Value = serde_json::from_str(&ev.data).unwrap();
            assert_eq!(frame["type"], "msg");
            let seq = frame["seq"].as_u64().unwrap();
            assert_eq!(ev.id.as_deref(), Some(seq.to_string().as_str()));
            seqs.push(seq);
        }
        seqs
    }
}

async fn send(ws: &mut Ws, conv: &ConvId, n: u64) {
    ws.send(json!({"type":"send","conv":conv,"id":format!("m{n}"),"body":{"n":n}}))
        .await;
    let sent = ws.recv_type("sent").await;
    assert_eq!(sent["seq"], n);
}

async fn replay_live_and_resume(backend: Backend) {
    let gw = start_gateway(&backend, fast_config()).await;
    let base = http(&gw);
    let (a, b) = (Wallet::random(), Wallet::random());
    let (ta, tb) = (login(&base, &a).await, login(&base, &b).await);
    let conv = ConvId::direct(&a.addr, &b.addr).unwrap();
    let mut wa = Ws::connect(&gw, &ta).await;
    for n in 1..=3 {
        send(&mut wa, &conv, n).await;
    }
    let url = format!("{base}/v1/conversations/{conv}/events");

    // EventSource style: the token in the query. Replay, `synced`, then live.
    let mut s = Stream::open(&format!("{url}?access_token={tb}"), &[])
        .await
        .unwrap();
    assert_eq!(s.messages(3).await, vec![1, 2, 3]);
    let synced = s.next().await;
    assert_eq!(synced.event, "synced");
    let synced: Value = serde_json::from_str(&synced.data).unwrap();
    assert_eq!(
        (synced["last_seq"].as_u64(), synced["recovered"].as_bool()),
        (Some(3), Some(true))
    );
    for n in 4..=5 {
        send(&mut wa, &conv, n).await;
    }
    assert_eq!(s.messages(2).await, vec![4, 5]);

    // Forced disconnect; three messages while away; resume from the last id.
    drop(s);
    for n in 6..=8 {
        send(&mut wa, &conv, n).await;
    }
    let bearer = format!("Bearer {tb}");
    let mut s = Stream::open(&url, &[("authorization", &bearer), ("last-event-id", "5")])
        .await
        .unwrap();
    assert_eq!(
        s.messages(3).await,
        vec![6, 7, 8],
        "exactly what was missed"
    );
    assert_eq!(s.next().await.event, "synced");
    send(&mut wa, &conv, 9).await;
    assert_eq!(s.messages(1).await, vec![9], "then live, no duplicates");

    // `?after=` for a first request that already holds some history.
    let mut s2 = Stream::open(&format!("{url}?access_token={tb}&after=7"), &[])
        .await
        .unwrap();
    assert_eq!(s2.messages(2).await, vec![8, 9]);

    // A drain ends the stream with a close event naming 1012.
    gw.shutdown().await;
    let mut saw_close = None;
    for _ in 0..3 {
        let ev = s.next().await;
        if ev.event == "close" {
            saw_close = Some(ev);
            break;
        }
    }
    let close: Value = serde_json::from_str(&saw_close.expect("a close event").data).unwrap();
    assert_eq!(close["code"], 1012);
}

#[tokio::test]
async fn sse_replays_streams_live_and_resumes_memory() {
    replay_live_and_resume(Backend::memory()).await;
}

#[tokio::test]
async fn sse_replays_streams_live_and_resumes_redis() {
    replay_live_and_resume(Backend::redis()).await;
}

#[tokio::test]
async fn sse_replays_streams_live_and_resumes_redis_cluster() {
    replay_live_and_resume(Backend::cluster()).await;
}

#[tokio::test]
async fn sse_refuses_bad_requests_with_problem_json() {
    let backend = Backend::memory();
    let gw = start_gateway(&backend, fast_config()).await;
    let base = http(&gw);
    let (a, b, c) = (Wallet::random(), Wallet::random(), Wallet::random());
    let tc = login(&base, &c).await;
    let conv = ConvId::direct(&a.addr, &b.addr).unwrap();
    let url = format!("{base}/v1/conversations/{conv}/events");

    /// URL, extra headers, expected status, a phrase of the message.
    type Case<'a> = (String, Vec<(&'a str, String)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (url.clone(), vec![], 401, "missing session token"),
        (
            format!("{url}?access_token=nope"),
            vec![],
            401,
            "invalid session token",
        ),
        // Not a member: the same 404 as a conversation that does not exist.
        (
            format!("{url}?access_token={tc}"),
            vec![],
            404,
            "no such conversation",
        ),
        (
            format!("{base}/v1/conversations/dm:nope/events?access_token={tc}"),
            vec![],
            400,
            "not valid",
        ),
        (
            url.clone(),
            vec![
                ("authorization", format!("Bearer {tc}")),
                ("last-event-id", "abc".into()),
            ],
            400,
            "Last-Event-ID",
        ),
    ];
    for (u, headers, status, needle) in cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let Err((got, body)) = Stream::open(&u, &h).await else {
            panic!("{u}: expected {status}");
        };
        assert_eq!(got, status, "{u}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(needle), "{u}: {body}");
        assert!(body["error"]["code"].is_string(), "{u}: {body}");
    }
}

/// A reader that stops reading is cut off with bounded memory (its queue in
/// the hub is the socket's bounded queue) and resumes without a loss.
#[tokio::test]
async fn sse_cuts_off_a_slow_reader_who_then_resumes() {
    const N: u64 = 300;
    let backend = Backend::memory();
    let cfg = switchboard_gateway::GatewayConfig {
        send_queue: 4,
        send_rate: 10_000,
        send_burst: 10_000,
        ..fast_config()
    };
    let gw = start_gateway(&backend, cfg).await;
    let base = http(&gw);
    let (a, b) = (Wallet::random(), Wallet::random());
    let (ta, tb) = (login(&base, &a).await, login(&base, &b).await);
    let conv = ConvId::direct(&a.addr, &b.addr).unwrap();
    let url = format!("{base}/v1/conversations/{conv}/events?access_token={tb}");
    let mut s = Stream::open(&url, &[]).await.unwrap();
    assert_eq!(s.next().await.event, "synced");

    // 300 messages of ~50 kB (15 MB) while the reader reads nothing: more
    // than the sockets' buffers hold, so the queue in the hub fills.
    let mut wa = Ws::connect(&gw, &ta).await;
    let filler = "x".repeat(50_000);
    for n in 1..=N {
        wa.send(
            json!({"type":"send","conv":conv,"id":format!("m{n}"),"body":{"n":n,"pad":filler}}),
        )
        .await;
        wa.recv_type("sent").await;
    }
    let metrics = reqwest::get(format!("http://{}/metrics", gw.metrics_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchboard_gateway_slow_consumers_total 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("slow"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Reading again: what was buffered, then the close event (4008).
    let mut last = 0;
    let code = loop {
        let ev = s.next().await;
        match ev.event.as_str() {
            "message" => {
                let seq: u64 = ev.id.unwrap().parse().unwrap();
                assert_eq!(seq, last + 1, "in order, no gap before the cut");
                last = seq;
            }
            "close" => {
                let v: Value = serde_json::from_str(&ev.data).unwrap();
                break v["code"].as_u64().unwrap();
            }
            other => panic!("unexpected {other}"),
        }
    };
    assert_eq!(code, 4008);
    assert!(last < N, "cut off before the end ({last})");

    // Resume from the last id read: the rest, exactly.
    let last_id = last.to_string();
    let bearer = format!("Bearer {tb}");
    let mut s = Stream::open(
        &format!("{base}/v1/conversations/{conv}/events"),
        &[("authorization", &bearer), ("last-event-id", &last_id)],
    )
    .await
    .unwrap();
    let rest = s.messages((N - last) as usize).await;
    assert_eq!(rest, (last + 1..=N).collect::<Vec<_>>());
}

/// The stream is a connection like a socket: messages sent through another
/// gateway reach it through the registry and the broker.
#[tokio::test]
async fn sse_gets_messages_sent_on_another_gateway() {
    let backend = Backend::redis();
    let (g1, g2) = (
        start_gateway(&backend, fast_config()).await,
        start_gateway(&backend, fast_config()).await,
    );
    let (a, b) = (Wallet::random(), Wallet::random());
    let (ta, tb) = (login(&http(&g1), &a).await, login(&http(&g2), &b).await);
    let conv = ConvId::direct(&a.addr, &b.addr).unwrap();
    let url = format!(
        "{}/v1/conversations/{conv}/events?access_token={tb}",
        http(&g2)
    );
    let mut s = Stream::open(&url, &[]).await.unwrap();
    assert_eq!(s.next().await.event, "synced");
    let mut wa = Ws::connect(&g1, &ta).await;
    for n in 1..=3 {
        send(&mut wa, &conv, n).await;
    }
    assert_eq!(s.messages(3).await, vec![1, 2, 3]);
}
