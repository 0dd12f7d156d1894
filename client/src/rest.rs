//! REST calls (`/v1/auth/*`, `/v1/conversations`) and URL helpers.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use switchboard_proto::ids::{Address, ConvId};
use switchboard_proto::model::Conversation;

use crate::error::ClientError;

/// `base_url` without trailing slashes, checked to be `http://` or `https://`.
pub(crate) fn http_base(base_url: &str) -> Result<String, ClientError> {
    let base = base_url.trim().trim_end_matches('/');
    let rest = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("https://"))
        .ok_or_else(|| ClientError::InvalidUrl(base_url.to_owned()))?;
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(ClientError::InvalidUrl(base_url.to_owned()));
    }
    Ok(base.to_owned())
}

/// The WebSocket endpoint for a base URL: `http://h/` → `ws://h/v1/ws`.
pub(crate) fn ws_url(base_url: &str) -> Result<String, ClientError> {
    let base = http_base(base_url)?;
    let ws = match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => format!("ws://{}", base.trim_start_matches("http://")),
    };
    Ok(format!("{ws}/v1/ws"))
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// Send `req`; decode a 2xx JSON body as `T`, or turn an error answer into
/// [`ClientError::Api`] with the server's code and message.
pub(crate) async fn call<T: DeserializeOwned>(
    req: reqwest::RequestBuilder,
) -> Result<T, ClientError> {
    let resp = req.send().await?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Protocol(format!("unexpected answer to a {status} response: {e}"))
        });
    }
    Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(b) => ClientError::Api {
            status: status.as_u16(),
            code: b.error.code,
            message: b.error.message,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: "http".into(),
            message: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
        },
    })
}

/// Shared HTTP client with sane timeouts.
pub(crate) fn http_client() -> Result<reqwest::Client, ClientError> {
    Ok(reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(30))
        .build()?)
}

/// Create a group conversation (`POST /v1/conversations`). The caller is
/// always a member; `members` may include or omit them.
pub async fn create_group(
    base_url: &str,
    token: &str,
    members: &[Address],
    title: Option<&str>,
) -> Result<Conversation, ClientError> {
    let base = http_base(base_url)?;
    let body = json!({"kind": "group", "members": members, "title": title});
    call(
        http_client()?
            .post(format!("{base}/v1/conversations"))
            .bearer_auth(token)
            .json(&body),
    )
    .await
}

/// Look a conversation up (`GET /v1/conversations/{id}`); members only.
pub async fn get_conversation(
    base_url: &str,
    token: &str,
    id: &ConvId,
) -> Result<Conversation, ClientError> {
    let base = http_base(base_url)?;
    call(
        http_client()?
            .get(format!("{base}/v1/conversations/{id}"))
            .bearer_auth(token),
    )
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            http_base("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            ws_url("http://127.0.0.1:8080").unwrap(),
            "ws://127.0.0.1:8080/v1/ws"
        );
        assert_eq!(
            ws_url("https://chat.example/").unwrap(),
            "wss://chat.example/v1/ws"
        );
        for bad in ["", "127.0.0.1:8080", "ws://x", "http://", "http://a b"] {
            assert!(http_base(bad).is_err(), "{bad}");
        }
    }
}
