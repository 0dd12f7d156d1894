//! Wallet sign-in: Sign-In with Ethereum (EIP-4361) signed with
//! `personal_sign` (EIP-191), exchanged for a session token.

use std::time::Duration;

use k256::ecdsa::SigningKey;
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_proto::auth::eip191::{address_of, sign_personal};
use switchboard_proto::auth::siwe::{SignInParams, build_message};
use switchboard_proto::ids::Address;
use time::OffsetDateTime;

use crate::error::ClientError;
use crate::rest::{http_base, http_client};
use crate::tls::Tls;

/// What the sign-in message says besides the nonce and the address.
#[derive(Debug, Clone)]
pub struct SignInOptions {
    /// The EIP-4361 domain; must equal the gateway's configured domain.
    pub domain: String,
    /// The EIP-155 chain id; must be one the gateway accepts.
    pub chain_id: u64,
    /// Human-readable statement shown by wallets.
    pub statement: Option<String>,
    /// The message's `Expiration Time`, from now. The gateway never issues a
    /// session that outlives it, so this also bounds the session's lifetime.
    pub expires_in: Duration,
    /// How an `https://` gateway's certificate is checked.
    pub tls: Tls,
}

impl Default for SignInOptions {
    fn default() -> Self {
        SignInOptions {
            domain: "localhost".into(),
            chain_id: 1,
            statement: Some("Sign in to Switchboard".into()),
            expires_in: Duration::from_secs(10 * 60),
            tls: Tls::default(),
        }
    }
}

/// A signed-in session: the bearer token and whom it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub token: String,
    pub address: Address,
    #[serde(with = "rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl Session {
    /// Whether the token has expired (or expires within `margin`).
    pub fn expired(&self, margin: Duration) -> bool {
        OffsetDateTime::now_utc() + margin >= self.expires_at
    }
}

#[derive(Deserialize)]
struct NonceAnswer {
    nonce: String,
}

/// Sign in with `key` at the gateway `base_url` (`http://host:port`):
/// `GET /v1/auth/nonce`, sign the EIP-4361 message, `POST /v1/auth/verify`.
pub async fn sign_in(
    base_url: &str,
    key: &SigningKey,
    opts: &SignInOptions,
) -> Result<Session, ClientError> {
    let base = http_base(base_url)?;
    let http = http_client(&base, &opts.tls)?;
    let NonceAnswer { nonce } = http.get(&format!("{base}/v1/auth/nonce"), None).await?;
    let address = address_of(key.verifying_key());
    let now = OffsetDateTime::now_utc();
    let expires_in =
        time::Duration::try_from(opts.expires_in).unwrap_or(time::Duration::minutes(10));
    // The gateway requires the URI to name the service signed in to: the
    // domain as authority (the address dialled may differ: a proxy, an IP).
    let scheme = if base.starts_with("https://") {
        "https"
    } else {
        "http"
    };
    let message = build_message(&SignInParams {
        domain: opts.domain.clone(),
        address,
        statement: opts.statement.clone(),
        uri: format!("{scheme}://{}", opts.domain),
        chain_id: opts.chain_id,
        nonce,
        issued_at: now,
        expiration_time: Some(now + expires_in),
    });
    let signature = sign_personal(key, message.as_bytes());
    let session: Session = http
        .post(
            &format!("{base}/v1/auth/verify"),
            None,
            &json!({"message": message, "signature": signature}),
        )
        .await?;
    if session.address != address {
        return Err(ClientError::Protocol(format!(
            "signed in as {address} but the session names {}",
            session.address
        )));
    }
    Ok(session)
}

/// `OffsetDateTime` as an RFC 3339 string, the form the gateway answers with.
mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let text = t.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn session_round_trips_as_json() {
        let s: Session = serde_json::from_str(
            r#"{"token":"v1.x","address":"0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed","expires_at":"2030-01-02T03:04:05Z"}"#,
        )
        .unwrap();
        assert_eq!(
            s.address.to_string(),
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
        );
        assert!(!s.expired(Duration::ZERO));
        let back: Session = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
