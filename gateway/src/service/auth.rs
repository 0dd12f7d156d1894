//! Sign-in: a nonce from the broker (single use, short-lived), an EIP-4361
//! message signed with the wallet, then a stateless session token that every
//! gateway sharing the secret verifies.

use switchboard_proto::auth::AuthError;
use switchboard_proto::auth::nonce::generate_nonce;
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
    /// The nonce was never issued, expired, or was used already.
    #[error("sign-in rejected (bad_nonce): nonce unknown, expired or already used")]
    BadNonce,
    #[error(transparent)]
    Chat(#[from] ChatError),
}

impl ChatService {
    /// A fresh sign-in nonce, valid for `nonce_ttl` and for one sign-in.
    pub async fn new_nonce(&self) -> Result<String> {
        let nonce = generate_nonce();
        self.broker.put_nonce(&nonce, self.cfg.nonce_ttl).await?;
        Ok(nonce)
    }

    /// Verify a signed EIP-4361 `message` and issue a session token, which
    /// never outlives the expiration the user signed.
    pub async fn sign_in(&self, message: &str, signature: &str) -> Result<Session, SignInError> {
        let now = OffsetDateTime::now_utc();
        let signed = self
            .siwe
            .verify(message, signature, now)
            .map_err(SignInError::Rejected)?;
        // The nonce is consumed only after the signature checks out, so
        // forged requests cannot burn a real client's nonce.
        if !self
            .broker
            .take_nonce(&signed.nonce)
            .await
            .map_err(ChatError::from)?
        {
            return Err(SignInError::BadNonce);
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
