//! Wallet authentication: Sign-In with Ethereum (EIP-4361) messages signed with
//! `personal_sign` (EIP-191), verified with k256; then HMAC session tokens.
//!
//! Every failure is an [`AuthError`]; the gateway answers all of them with HTTP
//! 401 / `unauthorized` and puts [`AuthError::code`] and the message in the text.

pub mod eip191;
pub mod nonce;
pub mod siwe;
pub mod token;

/// Why a sign-in or a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("not an EIP-4361 message: {0}")]
    BadMessage(String),
    #[error("message is for domain {got:?}, this server is {want:?}")]
    WrongDomain { got: String, want: String },
    #[error(
        "message URI {got:?} is not this server: give http:// or https:// and the domain {want:?} as its authority"
    )]
    WrongUri { got: String, want: String },
    #[error("chain id {0} is not accepted")]
    WrongChain(u64),
    #[error("message expired")]
    Expired,
    #[error("message was issued more than {max_age_secs} s ago: sign a new one with a fresh nonce")]
    TooOld { max_age_secs: u64 },
    #[error("message is not valid yet (not-before or issued-at in the future)")]
    NotYetValid,
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    #[error("signature was made by {recovered}, not {claimed}")]
    AddressMismatch { claimed: String, recovered: String },
    #[error("malformed session token")]
    BadToken,
    #[error("session token expired")]
    TokenExpired,
    #[error("session revoked: sign in again")]
    TokenRevoked,
}

impl AuthError {
    /// Short machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::BadMessage(_) => "bad_message",
            AuthError::WrongDomain { .. } => "wrong_domain",
            AuthError::WrongUri { .. } => "wrong_uri",
            AuthError::WrongChain(_) => "wrong_chain",
            AuthError::Expired => "expired",
            AuthError::TooOld { .. } => "too_old",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadSignature(_) => "bad_signature",
            AuthError::AddressMismatch { .. } => "address_mismatch",
            AuthError::BadToken => "bad_token",
            AuthError::TokenExpired => "token_expired",
            AuthError::TokenRevoked => "token_revoked",
        }
    }
}
