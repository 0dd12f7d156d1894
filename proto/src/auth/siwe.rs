//! EIP-4361 Sign-In with Ethereum. The `siwe` crate parses the message by the
//! EIP's grammar; the checks and the signature recovery are ours (k256 0.14,
//! through [`super::eip191`]), so a single secp256k1 implementation verifies.

use std::str::FromStr;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AuthError;
use super::eip191::{parse_signature_hex, recover_address};
use crate::ids::Address;

/// Tolerated clock skew for a message's `Issued At` lying in the future.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Default [`SiweVerifier::max_age`]: the gateway's nonce lifetime (5 min)
/// plus [`MAX_CLOCK_SKEW`]. A message is signed after its nonce was issued,
/// so an honest one is never older than that.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);

/// What a server accepts.
#[derive(Debug, Clone)]
pub struct SiweVerifier {
    /// Compared with the message's whole authority: `localhost:8080` is not
    /// `localhost`. The message's `URI` must name the same authority, with
    /// the scheme `http` or `https` (see [`uri_matches`]).
    pub domain: String,
    pub chain_ids: Vec<u64>,
    /// Oldest `Issued At` accepted, counted back from now.
    pub max_age: Duration,
}

/// Whether a message's `URI` names this server: its scheme is `http` or
/// `https` (any case) and its authority is exactly `domain` — no user
/// information, the same host, the same port or none. The path, query and
/// fragment are the client's.
pub fn uri_matches(uri: &str, domain: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return false;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest[..end] == domain
}

/// A successfully verified sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSignIn {
    pub address: Address,
    /// The caller must still consume this nonce (single use, server-issued).
    pub nonce: String,
    pub expires_at: Option<OffsetDateTime>,
}

/// A sign-in message that parsed and passed every check but the signature:
/// what [`SiweVerifier::check`] returns and [`SiweVerifier::recover`]
/// finishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedMessage {
    /// The address the message claims.
    pub address: Address,
    /// The caller checks it was issued here (and consumes it) — before the
    /// recovery for the check, after it for the consumption.
    pub nonce: String,
    pub expires_at: Option<OffsetDateTime>,
}

impl SiweVerifier {
    /// Parse and check `message` and its `personal_sign` signature at `now`:
    /// [`SiweVerifier::check`] then [`SiweVerifier::recover`]. Nonce
    /// liveness is NOT checked here: the gateway checks the nonce between
    /// the two and consumes it after, so forgeries cannot burn nonces.
    pub fn verify(
        &self,
        message: &str,
        signature_hex: &str,
        now: OffsetDateTime,
    ) -> Result<VerifiedSignIn, AuthError> {
        let checked = self.check(message, now)?;
        self.recover(message, checked, signature_hex)
    }

    /// Parse `message` and check everything but its signature (domain,
    /// chain, validity window): cheap, no elliptic-curve work.
    pub fn check(&self, message: &str, now: OffsetDateTime) -> Result<CheckedMessage, AuthError> {
        let m =
            siwe::Message::from_str(message).map_err(|e| AuthError::BadMessage(e.to_string()))?;
        // The parser skips the line after the address and the one after the
        // statement without looking at them, and reads `Chain ID: 01` as 1:
        // text the wallet showed and signed but nothing here would check.
        // Only the exact EIP-4361 layout of what was parsed is accepted.
        if m.to_string() != message {
            return Err(AuthError::BadMessage(
                "not in the EIP-4361 layout: the lines after the address and after the \
                 statement must be empty, numbers plain decimal, nothing added"
                    .into(),
            ));
        }
        let domain = m.domain.to_string();
        if domain != self.domain {
            return Err(AuthError::WrongDomain {
                got: domain,
                want: self.domain.clone(),
            });
        }
        let uri = m.uri.as_str();
        if !uri_matches(uri, &self.domain) {
            return Err(AuthError::WrongUri {
                got: uri.to_string(),
                want: self.domain.clone(),
            });
        }
        if !self.chain_ids.contains(&m.chain_id) {
            return Err(AuthError::WrongChain(m.chain_id));
        }
        let issued: &OffsetDateTime = m.issued_at.as_ref();
        if *issued > now + MAX_CLOCK_SKEW {
            return Err(AuthError::NotYetValid);
        }
        let oldest = time::Duration::try_from(self.max_age)
            .ok()
            .and_then(|age| now.checked_sub(age));
        if oldest.is_some_and(|oldest| *issued < oldest) {
            return Err(AuthError::TooOld {
                max_age_secs: self.max_age.as_secs(),
            });
        }
        if let Some(nbf) = &m.not_before
            && *nbf.as_ref() > now
        {
            return Err(AuthError::NotYetValid);
        }
        let expires_at = m.expiration_time.as_ref().map(|t| *t.as_ref());
        if expires_at.is_some_and(|exp| exp <= now) {
            return Err(AuthError::Expired);
        }
        Ok(CheckedMessage {
            address: Address(m.address),
            nonce: m.nonce,
            expires_at,
        })
    }

    /// Recover the signer of `message` (which [`SiweVerifier::check`]
    /// turned into `checked`) and compare it with the address it claims:
    /// the expensive step (secp256k1 public-key recovery).
    pub fn recover(
        &self,
        message: &str,
        checked: CheckedMessage,
        signature_hex: &str,
    ) -> Result<VerifiedSignIn, AuthError> {
        let sig = parse_signature_hex(signature_hex)?;
        let recovered = recover_address(message.as_bytes(), &sig)?;
        if recovered != checked.address {
            return Err(AuthError::AddressMismatch {
                claimed: checked.address.to_string(),
                recovered: recovered.to_string(),
            });
        }
        Ok(VerifiedSignIn {
            address: checked.address,
            nonce: checked.nonce,
            expires_at: checked.expires_at,
        })
    }
}

/// The fields of a sign-in message a client fills in.
#[derive(Debug, Clone)]
pub struct SignInParams {
    pub domain: String,
    pub address: Address,
    pub statement: Option<String>,
    pub uri: String,
    pub chain_id: u64,
    pub nonce: String,
    pub issued_at: OffsetDateTime,
    pub expiration_time: Option<OffsetDateTime>,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// EIP-4361 text for `p`, exactly as the grammar lays it out (version 1,
/// EIP-55 address, RFC 3339 times).
pub fn build_message(p: &SignInParams) -> String {
    let mut s = format!(
        "{} wants you to sign in with your Ethereum account:\n{}\n\n",
        p.domain, p.address
    );
    if let Some(st) = &p.statement {
        s.push_str(st);
        s.push('\n');
    }
    s.push_str(&format!(
        "\nURI: {}\nVersion: 1\nChain ID: {}\nNonce: {}\nIssued At: {}",
        p.uri,
        p.chain_id,
        p.nonce,
        rfc3339(p.issued_at)
    ));
    if let Some(exp) = p.expiration_time {
        s.push_str(&format!("\nExpiration Time: {}", rfc3339(exp)));
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use k256::ecdsa::SigningKey;

    use super::*;
    use crate::auth::eip191::{address_of, sign_personal};

    fn key() -> SigningKey {
        SigningKey::from_slice(&rand::random::<[u8; 32]>()).unwrap()
    }

    fn verifier() -> SiweVerifier {
        SiweVerifier {
            domain: "localhost".into(),
            chain_ids: vec![1],
            max_age: DEFAULT_MAX_AGE,
        }
    }

    fn params(k: &SigningKey) -> SignInParams {
        let now = OffsetDateTime::now_utc();
        SignInParams {
            domain: "localhost".into(),
            address: address_of(k.verifying_key()),
            statement: Some("Sign in to Switchboard".into()),
            uri: "http://localhost".into(),
            chain_id: 1,
            nonce: "abcdefghijklmnop1234".into(),
            issued_at: now,
            expiration_time: Some(now + time::Duration::minutes(10)),
        }
    }

    fn check(p: &SignInParams, k: &SigningKey) -> Result<VerifiedSignIn, AuthError> {
        let msg = build_message(p);
        verifier().verify(
            &msg,
            &sign_personal(k, msg.as_bytes()),
            OffsetDateTime::now_utc(),
        )
    }

    #[test]
    fn valid_sign_in_round_trips_through_the_grammar() {
        let k = key();
        let p = params(&k);
        let msg = build_message(&p);
        let parsed = siwe::Message::from_str(&msg).unwrap();
        assert_eq!(parsed.to_string(), msg);
        let ok = check(&p, &k).unwrap();
        assert_eq!(ok.address, p.address);
        assert_eq!(ok.nonce, p.nonce);
        assert!(ok.expires_at.is_some());
        // Without statement or expiry too.
        let p2 = SignInParams {
            statement: None,
            expiration_time: None,
            ..p
        };
        assert_eq!(
            siwe::Message::from_str(&build_message(&p2))
                .unwrap()
                .to_string(),
            build_message(&p2)
        );
        assert!(check(&p2, &k).is_ok());
    }

    #[test]
    fn each_check_fails_with_its_code() {
        let k = key();
        let now = OffsetDateTime::now_utc();
        let code = |p: SignInParams| check(&p, &k).unwrap_err().code();
        assert_eq!(
            code(SignInParams {
                domain: "evil.example".into(),
                ..params(&k)
            }),
            "wrong_domain"
        );
        assert_eq!(
            code(SignInParams {
                domain: "localhost:8080".into(),
                ..params(&k)
            }),
            "wrong_domain"
        );
        assert_eq!(
            code(SignInParams {
                chain_id: 5,
                ..params(&k)
            }),
            "wrong_chain"
        );
        assert_eq!(
            code(SignInParams {
                expiration_time: Some(now - time::Duration::seconds(1)),
                ..params(&k)
            }),
            "expired"
        );
        assert_eq!(
            code(SignInParams {
                issued_at: now + time::Duration::hours(1),
                expiration_time: None,
                ..params(&k)
            }),
            "not_yet_valid"
        );
        let other = key();
        let msg = build_message(&params(&k));
        let err = verifier()
            .verify(&msg, &sign_personal(&other, msg.as_bytes()), now)
            .unwrap_err();
        assert_eq!(err.code(), "address_mismatch");
        assert_eq!(
            verifier().verify("hello", "0x00", now).unwrap_err().code(),
            "bad_message"
        );
        assert_eq!(
            verifier().verify(&msg, "0x1234", now).unwrap_err().code(),
            "bad_signature"
        );
    }

    #[test]
    fn the_uri_must_be_this_server() {
        let k = key();
        let code = |uri: &str| {
            check(
                &SignInParams {
                    uri: uri.into(),
                    ..params(&k)
                },
                &k,
            )
            .map(|_| "ok")
            .unwrap_or_else(|e| e.code())
        };
        // The configured domain is `localhost`: scheme http(s), that authority.
        assert_eq!(code("http://localhost"), "ok");
        assert_eq!(code("https://localhost/app?x=1#y"), "ok");
        assert_eq!(code("HTTPS://localhost/"), "ok");
        for other in [
            "http://localhost:8080",
            "https://evil.example/",
            "https://localhost.evil.example/",
            "https://user@localhost/",
            "ftp://localhost/",
            "urn:localhost",
            "file:///localhost",
        ] {
            assert_eq!(code(other), "wrong_uri", "{other}");
        }
        let msg = build_message(&SignInParams {
            uri: "https://evil.example/".into(),
            ..params(&k)
        });
        let err = verifier()
            .verify(
                &msg,
                &sign_personal(&k, msg.as_bytes()),
                OffsetDateTime::now_utc(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("https://evil.example/") && err.contains("localhost"),
            "{err}"
        );
    }

    #[test]
    fn issued_at_must_be_recent() {
        let k = key();
        let now = OffsetDateTime::now_utc();
        let at = |issued_at: OffsetDateTime| {
            let p = SignInParams {
                issued_at,
                expiration_time: None,
                ..params(&k)
            };
            let msg = build_message(&p);
            verifier()
                .verify(&msg, &sign_personal(&k, msg.as_bytes()), now)
                .map(|_| "ok")
                .unwrap_or_else(|e| e.code())
        };
        let age = verifier().max_age;
        assert_eq!(at(now - age + time::Duration::seconds(5)), "ok");
        assert_eq!(at(now - age - time::Duration::seconds(5)), "too_old");
        assert_eq!(at(now - time::Duration::days(400)), "too_old");
        // Up to the clock skew ahead is fine; beyond it is not.
        assert_eq!(at(now + MAX_CLOCK_SKEW - time::Duration::seconds(5)), "ok");
        assert_eq!(
            at(now + MAX_CLOCK_SKEW + time::Duration::seconds(5)),
            "not_yet_valid"
        );
    }

    /// Found by the `siwe` fuzz target: the parser ignored a line between
    /// the statement and the URI, so a signed message could carry text the
    /// server never looked at.
    #[test]
    fn text_outside_the_layout_is_refused() {
        let k = key();
        let good = build_message(&params(&k));
        let now = OffsetDateTime::now_utc();
        let variants = [
            good.replacen("Switchboard\n\n", "Switchboard\n2\n", 1),
            good.replacen("\n\nSign in", "\nhidden\nSign in", 1),
            good.replacen("Chain ID: 1", "Chain ID: 01", 1),
            good.replacen("Chain ID: 1", "Chain ID: +1", 1),
        ];
        for msg in variants {
            assert_ne!(msg, good);
            let err = verifier()
                .verify(&msg, &sign_personal(&k, msg.as_bytes()), now)
                .unwrap_err();
            assert_eq!(err.code(), "bad_message", "{msg}");
            assert!(err.to_string().contains("EIP-4361 layout"), "{err}");
        }
        assert!(
            verifier()
                .verify(&good, &sign_personal(&k, good.as_bytes()), now)
                .is_ok()
        );
    }

    #[test]
    fn not_before_in_the_future_is_refused() {
        let k = key();
        let in_an_hour = rfc3339(OffsetDateTime::now_utc() + time::Duration::hours(1));
        let msg = format!("{}\nNot Before: {in_an_hour}", build_message(&params(&k)));
        let err = verifier()
            .verify(
                &msg,
                &sign_personal(&k, msg.as_bytes()),
                OffsetDateTime::now_utc(),
            )
            .unwrap_err();
        assert_eq!(err.code(), "not_yet_valid");
    }
}
