//! Sign-in: a signed nonce (short-lived, stored nowhere until used), an
//! EIP-4361 message signed with the wallet, then a stateless session token
//! that every gateway sharing the secret verifies.
//!
//! The order of `sign_in` is the flood defence: the cheap checks (message
//! grammar, domain, chain, validity, the nonce's tag and expiry) come
//! first; the secp256k1 recovery only for a nonce this cluster issued; the
//! broker write (the nonce recorded as used, `SET NX`) only for a signature
//! that checked out. The request got here through the REST rate limits.

use switchboard_core::broker::Routed;
use switchboard_proto::auth::AuthError;
use switchboard_proto::auth::nonce::NonceError;
use switchboard_proto::frames::{ErrorCode, ServerFrame};
use switchboard_proto::ids::Address;
use switchboard_proto::time::now_ms;
use time::OffsetDateTime;

use super::{ChatError, ChatService, Result};
use crate::hub::SessionTimes;

/// A caller authenticated by a session token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub user: Address,
    pub session: SessionTimes,
}

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

    /// The user a session token names if its MAC checks and it has not
    /// expired — no revocation check (no broker round trip). For keying
    /// per-user limits only; access goes through [`ChatService::authenticate`].
    pub fn verify_token(&self, token: &str) -> Result<Address, AuthError> {
        self.tokens.verify(token, OffsetDateTime::now_utc())
    }

    /// The caller a session token names, if it is valid now: the MAC
    /// checks, it has not expired, and its user has not revoked the
    /// sessions it belongs to. When the broker cannot answer the
    /// revocation check the token is accepted (logged): revocation is
    /// enforced whenever the broker answers, and a Redis outage must not
    /// sign everyone out.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let claims = self
            .tokens
            .verify_claims(token, OffsetDateTime::now_utc())?;
        match self.broker.sessions_revoked_before(&claims.address).await {
            Ok(Some(before)) if claims.issued_at <= before => return Err(AuthError::TokenRevoked),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "revocation check skipped: broker unavailable"),
        }
        Ok(Principal {
            user: claims.address,
            session: SessionTimes {
                issued_at: claims.issued_at,
                expires_at: claims.expires_at,
            },
        })
    }

    /// Revoke every session of `user` issued until now, on every gateway:
    /// tokens are refused from now on and open sockets and streams close
    /// with 4001. A sign-in after this starts a valid session (tokens carry
    /// whole seconds, so the cut is the previous second: a sign-in in the
    /// same second as the revocation is not caught by it).
    pub async fn revoke_sessions(&self, user: Address) -> Result<()> {
        let before = OffsetDateTime::now_utc().unix_timestamp();
        self.broker
            .revoke_sessions(&user, before, self.cfg.session_ttl)
            .await?;
        let frame = ServerFrame::error(ErrorCode::Unauthorized, "session revoked", None);
        let ev = Routed {
            users: vec![user],
            frame: frame.to_json().into(),
            ack: None,
            skip_conn: None,
            channel: None,
            revoke: Some(before),
        };
        if let Some(mine) = self.broker.route_local(ev, &self.cfg.gateway_id).await? {
            self.hub.deliver(&mine);
        }
        tracing::info!(%user, "sessions revoked");
        Ok(())
    }
}
