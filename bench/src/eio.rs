//! The load generator's side of the Socket.IO peer: the minimal Engine.IO v4
//! / Socket.IO v5 framing over a raw WebSocket (`transport=websocket`, no
//! polling, no binary packets, the default namespace only).
//!
//! Engine.IO packets are text frames whose first character is the type:
//! `0` open (JSON handshake), `1` close, `2` ping, `3` pong, `4` message,
//! `6` noop. A `4` message carries a Socket.IO packet, whose first character
//! is its type: `0` connect (`40{auth}` from the client, `40{"sid"}` back),
//! `1` disconnect, `2` event (`42["name",data]`), `4` connect error
//! (`44{"message"}`). Anything else is refused with an error naming it.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message as WsMsg;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::client::Ws;

/// Largest frame accepted from the server (the bench's messages are tiny).
pub const MAX_FRAME: usize = 64 * 1024;

/// One packet from the server, as far as the bench needs to tell them apart.
#[derive(Debug, PartialEq)]
pub enum Packet {
    /// Engine.IO handshake: the server's ping interval in ms.
    Open {
        ping_interval_ms: u64,
    },
    /// Engine.IO ping: answer with [`PONG`].
    Ping,
    Pong,
    Noop,
    /// Engine.IO close.
    Close,
    /// Socket.IO connect accepted.
    Connected,
    /// Socket.IO connect refused, with the server's message.
    ConnectError(String),
    /// Socket.IO disconnect.
    Disconnect,
    /// Socket.IO event `name` with its first argument (`null` if none).
    Event {
        name: String,
        data: Value,
    },
}

/// The client's answer to a ping.
pub const PONG: &str = "3";

/// Parse one text frame from the server.
pub fn parse(frame: &str) -> Result<Packet> {
    if frame.len() > MAX_FRAME {
        bail!(
            "engine.io frame of {} bytes (limit {MAX_FRAME})",
            frame.len()
        );
    }
    let mut chars = frame.chars();
    let Some(eio) = chars.next() else {
        bail!("empty engine.io frame");
    };
    let rest = chars.as_str();
    match eio {
        '0' => {
            let v: Value = serde_json::from_str(rest)
                .with_context(|| format!("engine.io open packet is not JSON: {}", clip(rest)))?;
            let ping_interval_ms = v["pingInterval"].as_u64().with_context(|| {
                format!("engine.io open packet without pingInterval: {}", clip(rest))
            })?;
            Ok(Packet::Open { ping_interval_ms })
        }
        '1' => Ok(Packet::Close),
        '2' => Ok(Packet::Ping),
        '3' => Ok(Packet::Pong),
        '6' => Ok(Packet::Noop),
        '4' => parse_socketio(rest),
        other => bail!("unknown engine.io packet type {other:?} in {}", clip(frame)),
    }
}

fn parse_socketio(p: &str) -> Result<Packet> {
    let mut chars = p.chars();
    let Some(kind) = chars.next() else {
        bail!("empty socket.io packet");
    };
    let rest = chars.as_str();
    if rest.starts_with('/') {
        bail!(
            "socket.io packet for a namespace other than / : {}",
            clip(p)
        );
    }
    match kind {
        '0' => Ok(Packet::Connected),
        '1' => Ok(Packet::Disconnect),
        '4' => {
            let v: Value = serde_json::from_str(rest).unwrap_or(Value::Null);
            Ok(Packet::ConnectError(
                v["message"].as_str().unwrap_or(rest).to_owned(),
            ))
        }
        '2' => {
            // An optional ack id (digits) precedes the JSON array.
            let json = rest.trim_start_matches(|c: char| c.is_ascii_digit());
            let v: Value = serde_json::from_str(json)
                .with_context(|| format!("socket.io event is not a JSON array: {}", clip(p)))?;
            let Value::Array(mut items) = v else {
                bail!("socket.io event is not a JSON array: {}", clip(p));
            };
            if items.is_empty() {
                bail!("socket.io event without a name");
            }
            let data = if items.len() > 1 {
                items.swap_remove(1)
            } else {
                Value::Null
            };
            let Value::String(name) = items.swap_remove(0) else {
                bail!("socket.io event name is not a string: {}", clip(p));
            };
            Ok(Packet::Event { name, data })
        }
        other => bail!(
            "unsupported socket.io packet type {other:?} (binary and acks are not used): {}",
            clip(p)
        ),
    }
}

/// The text frame of event `name` with one argument.
pub fn event(name: &str, data: &Value) -> String {
    format!("42{}", json!([name, data]))
}

fn clip(s: &str) -> String {
    let mut end = s.len().min(120);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() {
        format!("{}…", &s[..end])
    } else {
        s.to_owned()
    }
}

/// A WebSocket to the Socket.IO server at `addr` from source address `from`,
/// past the Engine.IO handshake and the Socket.IO connect with
/// `{"token": token}` as auth.
pub async fn connect(addr: &str, from: IpAddr, token: &str) -> Result<Ws> {
    let target: SocketAddr = addr
        .parse()
        .with_context(|| format!("{addr} is not ip:port"))?;
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(from, 0))
        .with_context(|| format!("bind {from}"))?;
    let stream = socket.connect(target).await?;
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
        Some(cfg),
    )
    .await
    .context("socket.io websocket upgrade")?;
    match next_packet(&mut ws).await? {
        Packet::Open { .. } => {}
        other => bail!("expected the engine.io open packet, got {other:?}"),
    }
    ws.send(WsMsg::text(format!("40{}", json!({"token": token}))))
        .await?;
    loop {
        match next_packet(&mut ws).await? {
            Packet::Connected => return Ok(ws),
            Packet::ConnectError(m) => bail!("socket.io connect refused: {m}"),
            Packet::Ping => ws.send(WsMsg::text(PONG)).await?,
            Packet::Noop | Packet::Pong => {}
            other => bail!("expected the socket.io connect answer, got {other:?}"),
        }
    }
}

async fn next_packet(ws: &mut Ws) -> Result<Packet> {
    loop {
        match ws.next().await {
            Some(Ok(WsMsg::Text(t))) => return parse(&t),
            Some(Ok(WsMsg::Binary(_))) => bail!("binary engine.io frame (not used by the bench)"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("socket.io server closed the connection"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn engine_io_packets() {
        assert_eq!(
            parse(r#"0{"sid":"x","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#).unwrap(),
            Packet::Open { ping_interval_ms: 25000 }
        );
        assert_eq!(parse("2").unwrap(), Packet::Ping);
        assert_eq!(parse("3").unwrap(), Packet::Pong);
        assert_eq!(parse("6").unwrap(), Packet::Noop);
        assert_eq!(parse("1").unwrap(), Packet::Close);
    }

    #[test]
    fn socket_io_packets() {
        assert_eq!(parse(r#"40{"sid":"abc"}"#).unwrap(), Packet::Connected);
        assert_eq!(parse("41").unwrap(), Packet::Disconnect);
        assert_eq!(
            parse(r#"44{"message":"unauthorized"}"#).unwrap(),
            Packet::ConnectError("unauthorized".into())
        );
        assert_eq!(
            parse(r#"42["msg",{"seq":3}]"#).unwrap(),
            Packet::Event {
                name: "msg".into(),
                data: json!({"seq":3})
            }
        );
        assert_eq!(
            parse(r#"4217["sent"]"#).unwrap(),
            Packet::Event {
                name: "sent".into(),
                data: Value::Null
            }
        );
    }

    #[test]
    fn events_round_trip_through_the_encoder() {
        let f = event("send", &json!({"conv":"dm:a:b","id":"x"}));
        assert_eq!(f, r#"42["send",{"conv":"dm:a:b","id":"x"}]"#);
        assert_eq!(
            parse(&f).unwrap(),
            Packet::Event {
                name: "send".into(),
                data: json!({"conv":"dm:a:b","id":"x"})
            }
        );
    }

    #[test]
    fn bad_frames_are_clear_errors() {
        let e = |f: &str| parse(f).unwrap_err().to_string();
        assert!(e("").contains("empty"));
        assert!(e("9").contains("unknown engine.io packet type"));
        assert!(e("0nope").contains("open packet is not JSON"));
        assert!(e(r#"0{"sid":"x"}"#).contains("pingInterval"));
        assert!(e("4").contains("empty socket.io packet"));
        assert!(e(r#"42/chat,["msg"]"#).contains("namespace"));
        assert!(e(r#"42{"a":1}"#).contains("not a JSON array"));
        assert!(e("42[]").contains("without a name"));
        assert!(e("42[1]").contains("name is not a string"));
        assert!(e(r#"45-["x",{"_placeholder":true}]"#).contains("unsupported socket.io packet"));
        assert!(e(&"2".repeat(MAX_FRAME + 1)).contains("limit"));
    }
}
