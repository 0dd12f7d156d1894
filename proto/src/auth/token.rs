//! Session tokens: `v1.<base64url(payload)>.<base64url(HMAC-SHA256)>`, where
//! the payload is `{"sub": "<lowercase address>", "iat": unix, "exp": unix}`.
//! Any gateway holding the secret verifies a token without a look-up.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use time::OffsetDateTime;

use super::AuthError;
use crate::ids::Address;

type HmacSha256 = Hmac<Sha256>;

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: i64,
    exp: i64,
}

/// What a valid session token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenClaims {
    pub address: Address,
    /// Unix seconds: when it was issued (revocation cuts by this).
    pub issued_at: i64,
    /// Unix seconds: when it stops being valid.
    pub expires_at: i64,
}

/// Issues and verifies session tokens with one HMAC key.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    pub fn new(secret: &[u8]) -> Self {
        TokenSigner {
            key: secret.to_vec(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length.
        <HmacSha256 as KeyInit>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    /// A token for `address` valid for `ttl` from `now`, and its expiry.
    pub fn issue(
        &self,
        address: &Address,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> (String, OffsetDateTime) {
        let exp = now + ttl;
        let claims = Claims {
            sub: address.lower(),
            iat: now.unix_timestamp(),
            exp: exp.unix_timestamp(),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("v1.{payload}");
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        (
            format!("{signed}.{tag}"),
            exp.replace_nanosecond(0).unwrap_or(exp),
        )
    }

    /// The address a token was issued to, if the MAC checks and it has not expired.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<Address, AuthError> {
        self.verify_claims(token, now).map(|c| c.address)
    }

    /// What a token says, if the MAC checks and it has not expired.
    pub fn verify_claims(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<TokenClaims, AuthError> {
        let (signed, tag) = token.rsplit_once('.').ok_or(AuthError::BadToken)?;
        let payload = signed.strip_prefix("v1.").ok_or(AuthError::BadToken)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| AuthError::BadToken)?;
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        mac.verify_slice(&tag).map_err(|_| AuthError::BadToken)?;
        let raw = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| AuthError::BadToken)?;
        let claims: Claims = serde_json::from_slice(&raw).map_err(|_| AuthError::BadToken)?;
        if claims.exp <= now.unix_timestamp() {
            return Err(AuthError::TokenExpired);
        }
        Ok(TokenClaims {
            address: claims.sub.parse().map_err(|_| AuthError::BadToken)?,
            issued_at: claims.iat,
            expires_at: claims.exp,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn addr() -> Address {
        "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23"
            .parse()
            .unwrap()
    }

    #[test]
    fn round_trip_and_expiry() {
        let s = TokenSigner::new(b"secret");
        let now = OffsetDateTime::now_utc();
        let (t, exp) = s.issue(&addr(), Duration::from_secs(60), now);
        assert!(exp > now);
        assert_eq!(s.verify(&t, now).unwrap(), addr());
        assert_eq!(
            s.verify(&t, now + Duration::from_secs(61)),
            Err(AuthError::TokenExpired)
        );
    }

    #[test]
    fn tampering_and_foreign_keys_fail() {
        let s = TokenSigner::new(b"secret");
        let now = OffsetDateTime::now_utc();
        let (t, _) = s.issue(&addr(), Duration::from_secs(60), now);
        assert_eq!(
            TokenSigner::new(b"other").verify(&t, now),
            Err(AuthError::BadToken)
        );
        let (head, tag) = t.rsplit_once('.').unwrap();
        // Another payload with the original MAC.
        let forged = URL_SAFE_NO_PAD.encode(
            br#"{"sub":"0x0000000000000000000000000000000000000001","iat":0,"exp":9999999999}"#,
        );
        assert_eq!(
            s.verify(&format!("v1.{forged}.{tag}"), now),
            Err(AuthError::BadToken)
        );
        // A flipped MAC character.
        let mut bad_tag = tag.to_owned();
        let c = if bad_tag.starts_with('A') { "B" } else { "A" };
        bad_tag.replace_range(0..1, c);
        assert_eq!(
            s.verify(&format!("{head}.{bad_tag}"), now),
            Err(AuthError::BadToken)
        );
        for g in ["", ".", "v1.", "v1..", "v2.abc.def", "v1.!!!.???"] {
            assert!(s.verify(g, now).is_err(), "{g}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(t in ".{0,200}") {
            let _ = TokenSigner::new(b"k").verify(&t, OffsetDateTime::now_utc());
        }
    }
}
