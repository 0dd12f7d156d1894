//! API keys of the Ably-compatible endpoints (`--api-key`,
//! `SWITCHBOARD_API_KEYS`): the configuration parses them, the `ably`
//! transport checks a caller's credentials and channel rights against them.

use sha3::{Digest, Keccak256};
use switchboard_proto::ids::{Address, ConvId};

/// An API key: `keyName:keySecret`, optionally `:pattern|pattern…` to
/// limit it to some channels (a pattern is a channel name, or a prefix
/// ending in `*`). Without patterns it may publish to and subscribe to every
/// channel.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    secret: String,
    /// `None`: every channel.
    channels: Option<Vec<String>>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(f, "ApiKey({})", self.name)
    }
}

/// Why an API key string was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "an API key is keyName:keySecret[:channel|prefix*…], name and secret non-empty and without ':'"
)]
pub struct ApiKeyError;

impl std::str::FromStr for ApiKey {
    type Err = ApiKeyError;
    fn from_str(s: &str) -> Result<Self, ApiKeyError> {
        let mut parts = s.splitn(3, ':');
        let (name, secret) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if name.is_empty() || secret.is_empty() {
            return Err(ApiKeyError);
        }
        let channels = match parts.next() {
            None => None,
            Some(list) => {
                let pats: Vec<String> = list.split('|').map(str::to_string).collect();
                let valid = |p: &str| {
                    let name = p.strip_suffix('*').unwrap_or(p);
                    (p.ends_with('*') && name.is_empty()) || ConvId::channel(name).is_ok()
                };
                if pats.iter().any(|p| !valid(p)) {
                    return Err(ApiKeyError);
                }
                Some(pats)
            }
        };
        Ok(ApiKey {
            name: name.to_string(),
            secret: secret.to_string(),
            channels,
        })
    }
}

impl ApiKey {
    /// The address this key acts as.
    pub fn address(&self) -> Address {
        let h = Keccak256::digest(format!("switchboard-api-key:{}", self.name).as_bytes());
        let mut a = [0u8; 20];
        a.copy_from_slice(&h[12..32]);
        Address(a)
    }

    /// Whether the key may use the channel `name` (publish and subscribe).
    pub fn allows(&self, name: &str) -> bool {
        self.channels.as_ref().is_none_or(|pats| {
            pats.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => p == name,
            })
        })
    }

    pub fn secret_matches(&self, secret: &str) -> bool {
        digests_match(&self.secret, secret)
    }

    /// Whether the key is limited to no channels: such a key also
    /// administers users (revoking their sessions).
    pub fn unrestricted(&self) -> bool {
        self.channels.is_none()
    }

    /// The key among `keys` that `given` (`keyName:keySecret`) names, if the
    /// secret matches. An unknown name and a wrong secret take the same
    /// work and give the same answer: which key names exist is not for a
    /// guesser to learn.
    pub fn find<'a>(keys: &'a [ApiKey], given: &str) -> Option<&'a ApiKey> {
        let (name, secret) = given.split_once(':')?;
        match keys.iter().find(|k| k.name == name) {
            Some(key) if key.secret_matches(secret) => Some(key),
            Some(_) => None,
            None => {
                let _ = digests_match(secret, name);
                None
            }
        }
    }
}

/// Whether two secrets are equal, in time that depends on neither their
/// content nor their length: both are hashed to 32 bytes first, and the
/// digests are compared without an early exit.
pub fn digests_match(a: &str, b: &str) -> bool {
    let (a, b) = (
        Keccak256::digest(a.as_bytes()),
        Keccak256::digest(b.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_never_print_their_secret() {
        let k: ApiKey = "app.key1:s3cret".parse().unwrap();
        assert_eq!(k.name, "app.key1");
        assert!(k.secret_matches("s3cret"));
        assert!(!k.secret_matches("s3cre"));
        assert!(!format!("{k:?}").contains("s3cret"));
        for bad in ["", "nokey", ":x", "x:"] {
            assert!(bad.parse::<ApiKey>().is_err(), "{bad}");
        }
        assert_eq!(
            k.address(),
            "app.key1:other".parse::<ApiKey>().unwrap().address()
        );
        assert!(k.allows("anything"));
        let limited: ApiKey = "k:s:news|live-*".parse().unwrap();
        assert!(limited.allows("news") && limited.allows("live-42"));
        assert!(!limited.allows("newsy") && !limited.allows("sport"));
        assert!("k:s:bad name".parse::<ApiKey>().is_err());
        assert!("k:s:".parse::<ApiKey>().is_err());
    }
}
