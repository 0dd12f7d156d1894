//! The load generator's side of a gateway: WebSocket sessions and the
//! session tokens they sign in with.

use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use switchboard_proto::auth::token::TokenSigner;
use switchboard_proto::ids::Address;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMsg;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A WebSocket to `addr`, authenticated with `token` (its `ready` frame
/// received).
pub async fn open(addr: &str, token: &str) -> Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws")).await?;
    ws.send(WsMsg::text(
        json!({"type":"auth","token":token}).to_string(),
    ))
    .await?;
    loop {
        match ws.next().await {
            Some(Ok(WsMsg::Text(t))) if t.contains("\"ready\"") => return Ok(ws),
            Some(Ok(_)) => continue,
            other => bail!("no ready frame: {other:?}"),
        }
    }
}

/// An hour-long session token for `user`, as `/v1/auth/verify` would issue.
pub fn token(signer: &TokenSigner, user: &Address) -> String {
    signer
        .issue(
            user,
            Duration::from_secs(3600),
            time::OffsetDateTime::now_utc(),
        )
        .0
}

/// Tokens of `n` fresh random users.
pub fn random_tokens(signer: &TokenSigner, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| token(signer, &Address(rand::random())))
        .collect()
}
