//! Sign-in: a signed nonce (short-lived, stored nowhere until used), an
//! EIP-4361 message signed with the wallet, then a stateless session token
//! that every gateway sharing the secret verifies.
//!
//! The order of `sign_in` is the flood defence: the cheap checks (message
//! grammar, domain, chain, validity, the nonce's tag and expiry) come
//! first; the secp256k1 recovery only for a nonce this cluster issued; the
//! broker write (the nonce recorded as used, `SET NX`) only for a signature
//! that checked out. The request got here through the REST rate limits.

use switchboard_proto::auth::AuthError;
use switchboard_proto::auth::nonce::NonceError;
use switchboard_proto::ids::Address;
use switchboard_proto::time::now_ms;
use time::OffsetDateTime;

use super::{ChatError, ChatService, Result};

/// A signed-in session.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    pub address: Address,
    pub expires_at: OffsetDateTime,
}

/// Why a sign-in was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// The message or its signature does not check out.
    #[error("sign-in rejected ({code}): {0}", code = .0.code())]
    Rejected(AuthError),
    /// The nonce was not issued here, or its lifetime is over.
    #[error("sign-in rejected ({code}): {0}", code = .0.code())]
    Nonce(NonceError),
    /// The nonce was used by an earlier sign-in.
    #[error("sign-in rejected (used_nonce): nonce already used; request a new one")]
    NonceUsed,
    #[error(transparent)]
    Chat(#[from] ChatError),
}

impl ChatService {
    /// A fresh sign-in nonce, valid for `nonce_ttl` and for one sign-in.
    /// Nothing is stored.
    pub fn new_nonce(&self) -> String {
        self.nonces
            .issue(self.cfg.nonce_ttl, OffsetDateTime::now_utc())
    }

    /// Verify a signed EIP-4361 `message` and issue a session token, which
    /// never outlives the expiration the user signed.
    pub async fn sign_in(&self, message: &str, signature: &str) -> Result<Session, SignInError> {
        let now = OffsetDateTime::now_utc();
        let checked = self
            .siwe
            .check(message, now)
            .map_err(SignInError::Rejected)?;
        let nonce_left = self
            .nonces
            .check(&checked.nonce, now)
            .map_err(SignInError::Nonce)?;
        self.metrics.signature_recoveries.inc();
        let signed = self
            .siwe
            .recover(message, checked, signature)
            .map_err(SignInError::Rejected)?;
        // The nonce is consumed only after the signature checks out, so
        // forged requests cannot burn a real client's nonce, and the record
        // lives only as long as the nonce could still be presented.
        if !self
            .broker
            .use_nonce(&signed.nonce, nonce_left)
            .await
            .map_err(ChatError::from)?
        {
            return Err(SignInError::NonceUsed);
        }
        let mut ttl = self.cfg.session_ttl;
        if let Some(exp) = signed.expires_at {
            let left = (exp - now).unsigned_abs();
            ttl = ttl.min(left);
        }
        let (token, expires_at) = self.tokens.issue(&signed.address, ttl, now);
        self.touch(&signed.address, now_ms()).await;
        Ok(Session {
            token,
            address: signed.address,
            expires_at,
        })
    }

    /// The user a session token names, if it is valid now.
    pub fn verify_token(&self, token: &str) -> Result<Address, AuthError> {
        self.tokens.verify(token, OffsetDateTime::now_utc())
    }
}
