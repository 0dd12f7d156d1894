//! Sign-in nonces that cost the server nothing until they are used.
//!
//! A nonce is 64 lowercase hex characters (EIP-4361 wants at least 8
//! alphanumerics): `expiry (8 bytes, Unix seconds) ‖ random (8 bytes) ‖
//! HMAC-SHA256(key, expiry ‖ random)[..16]`. The server stores nothing
//! when it hands one out; at sign-in it checks the tag and the expiry
//! ([`NonceSigner::check`]) before any signature recovery, and only a
//! sign-in whose signature checks out records the nonce as used (for the
//! rest of its life), which makes it single use.
//!
//! The key is derived from the session-token secret
//! (`HMAC(secret, "switchboard/nonce/v1")`), so gateways that share users
//! share nonces too, and a nonce tag is never a session-token tag.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use time::OffsetDateTime;

type HmacSha256 = Hmac<Sha256>;

/// Label of the nonce key's derivation from the token secret.
const KEY_LABEL: &[u8] = b"switchboard/nonce/v1";
const EXPIRY_BYTES: usize = 8;
const RANDOM_BYTES: usize = 8;
const TAG_BYTES: usize = 16;
const BODY_BYTES: usize = EXPIRY_BYTES + RANDOM_BYTES;
/// Characters of a nonce.
pub const NONCE_LEN: usize = 2 * (BODY_BYTES + TAG_BYTES);

/// Why a nonce was refused before any signature work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    /// Not the shape this server issues (or not issued by a server holding
    /// this secret).
    #[error("nonce was not issued by this server")]
    Forged,
    /// Issued here, but its lifetime is over: ask for a new one.
    #[error("nonce expired; request a new one")]
    Expired,
}

impl NonceError {
    /// Short machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            NonceError::Forged => "forged_nonce",
            NonceError::Expired => "expired_nonce",
        }
    }
}

/// Issues and checks nonces with a key derived from the token secret.
#[derive(Clone)]
pub struct NonceSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for NonceSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceSigner(..)")
    }
}

fn hmac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

impl NonceSigner {
    /// A signer whose key is derived from the session-token `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut mac = hmac(secret);
        mac.update(KEY_LABEL);
        NonceSigner {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = hmac(&self.key);
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&full[..TAG_BYTES]);
        tag
    }

    /// A fresh nonce valid for `ttl` from `now`.
    pub fn issue(&self, ttl: Duration, now: OffsetDateTime) -> String {
        let expiry = (now + ttl).unix_timestamp().max(0) as u64;
        let mut body = [0u8; BODY_BYTES];
        body[..EXPIRY_BYTES].copy_from_slice(&expiry.to_be_bytes());
        body[EXPIRY_BYTES..].copy_from_slice(&rand::random::<[u8; RANDOM_BYTES]>());
        let mut out = hex::encode(body);
        out.push_str(&hex::encode(self.tag(&body)));
        out
    }

    /// Whether `nonce` was issued with this key and is still live at `now`;
    /// `Ok` is how long it has left (at least one second). Costs one HMAC,
    /// no storage.
    pub fn check(&self, nonce: &str, now: OffsetDateTime) -> Result<Duration, NonceError> {
        if nonce.len() != NONCE_LEN {
            return Err(NonceError::Forged);
        }
        let raw = hex::decode(nonce).map_err(|_| NonceError::Forged)?;
        let (body, tag) = raw.split_at(BODY_BYTES);
        let mut mac = hmac(&self.key);
        mac.update(body);
        // Constant-time comparison of the truncated tag.
        mac.verify_truncated_left(tag)
            .map_err(|_| NonceError::Forged)?;
        let mut expiry = [0u8; EXPIRY_BYTES];
        expiry.copy_from_slice(&body[..EXPIRY_BYTES]);
        let expiry = u64::from_be_bytes(expiry);
        let now = now.unix_timestamp().max(0) as u64;
        if expiry <= now {
            return Err(NonceError::Expired);
        }
        Ok(Duration::from_secs(expiry - now))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).unwrap()
    }

    #[test]
    fn nonces_are_long_alphanumeric_and_distinct() {
        let s = NonceSigner::new(b"secret");
        let now = at(1_700_000_000);
        let a = s.issue(Duration::from_secs(300), now);
        let b = s.issue(Duration::from_secs(300), now);
        assert_eq!(a.len(), NONCE_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_nonce_lives_its_ttl_and_not_a_second_more() {
        let s = NonceSigner::new(b"secret");
        let n = s.issue(Duration::from_secs(300), at(1_000));
        assert_eq!(s.check(&n, at(1_000)), Ok(Duration::from_secs(300)));
        assert_eq!(s.check(&n, at(1_299)), Ok(Duration::from_secs(1)));
        assert_eq!(s.check(&n, at(1_300)), Err(NonceError::Expired));
    }

    #[test]
    fn forged_or_foreign_nonces_are_refused() {
        let s = NonceSigner::new(b"secret");
        let now = at(1_000);
        let n = s.issue(Duration::from_secs(300), now);
        // Another secret's nonce.
        let other = NonceSigner::new(b"other").issue(Duration::from_secs(300), now);
        assert_eq!(s.check(&other, now), Err(NonceError::Forged));
        // A later expiry written over a real nonce breaks its tag.
        let mut longer = n.clone().into_bytes();
        longer[10] = if longer[10] == b'f' { b'e' } else { b'f' };
        let longer = String::from_utf8(longer).unwrap();
        assert_eq!(s.check(&longer, now), Err(NonceError::Forged));
        for bad in ["", "abcdefgh", &"z".repeat(NONCE_LEN), &n[..NONCE_LEN - 2]] {
            assert_eq!(s.check(bad, now), Err(NonceError::Forged), "{bad}");
        }
    }
}
