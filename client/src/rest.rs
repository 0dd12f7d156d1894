//! REST calls (`/v1/auth/*`, `/v1/conversations`) and URL helpers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, header};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use switchboard_proto::ids::{Address, ConvId};
use switchboard_proto::model::Conversation;

use crate::error::ClientError;
use crate::tls::{Tls, chain, tls_failure};

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

/// Time to open a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a whole request, answer body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer body read.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// An HTTP/1.1 client for one gateway: plain for `http://`, rustls for
/// `https://` (see [`Tls`]).
pub(crate) struct Http {
    client: LegacyClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// A client for `base` (from [`http_base`]). The TLS configuration is only
/// built for `https://`, so plain HTTP works on machines without a trust
/// store.
pub(crate) fn http_client(base: &str, tls: &Tls) -> Result<Http, ClientError> {
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let config = if base.starts_with("https://") {
        (*tls.client_config()?).clone()
    } else {
        // Never used: the connector speaks TLS to https:// URLs only.
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(format!("TLS versions: {e}")))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
    };
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(Http {
        client: LegacyClient::builder(TokioExecutor::new()).build(connector),
    })
}

impl Http {
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        url: &str,
        token: Option<&str>,
    ) -> Result<T, ClientError> {
        self.call(Method::GET, url, token, None).await
    }

    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        url: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| ClientError::Protocol(format!("cannot encode the request: {e}")))?;
        self.call(Method::POST, url, token, Some(body)).await
    }

    /// Send a request; decode a 2xx JSON body as `T`, or turn an error
    /// answer into [`ClientError::Api`] with the server's code and message.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(url)
            .header(header::ACCEPT, "application/json");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::InvalidUrl(format!("{url}: {e}")))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(transport)?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| ClientError::Http(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Http(format!("no answer within {REQUEST_TIMEOUT:?}")))??;
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
}

/// A failed exchange: a TLS failure says so, anything else is
/// [`ClientError::Http`] with its causes.
fn transport(e: hyper_util::client::legacy::Error) -> ClientError {
    match tls_failure(&e) {
        Some(m) => ClientError::Tls(m),
        None => ClientError::Http(chain(&e)),
    }
}

/// Create a group conversation (`POST /v1/conversations`). The caller is
/// always a member; `members` may include or omit them.
/// `tls` checks an `https://` gateway's certificate.
pub async fn create_group(
    base_url: &str,
    token: &str,
    members: &[Address],
    title: Option<&str>,
    tls: &Tls,
) -> Result<Conversation, ClientError> {
    let base = http_base(base_url)?;
    let body = json!({"kind": "group", "members": members, "title": title});
    http_client(&base, tls)?
        .post(&format!("{base}/v1/conversations"), Some(token), &body)
        .await
}

/// Look a conversation up (`GET /v1/conversations/{id}`); members only.
pub async fn get_conversation(
    base_url: &str,
    token: &str,
    id: &ConvId,
    tls: &Tls,
) -> Result<Conversation, ClientError> {
    let base = http_base(base_url)?;
    http_client(&base, tls)?
        .get(&format!("{base}/v1/conversations/{id}"), Some(token))
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
