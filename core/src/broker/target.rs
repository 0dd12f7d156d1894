//! Where a Redis is and how to authenticate to it: a URL and, optionally, a
//! password given apart from it.
//!
//! Deployments built by the operator pass the password in its own variable
//! ([`crate::env::REDIS_PASSWORD`], from a Secret) and a URL without one, so
//! the URL can sit in plain sight (a ConfigMap, `kubectl describe`) and only
//! the Secret holds the credential. A password inside the URL
//! (`redis://:pass@host:6379`, `redis-cluster://:pass@host:port?node=…`) works
//! too, for Redis servers you run; giving both is refused rather than
//! guessing which one wins.
//!
//! A Redis Cluster uses the one password on every node (fred sends it to each
//! node it discovers). `Display` and `Debug` never show the password.

use std::fmt;

use fred::prelude::Config;

use super::BrokerError;
use crate::redact_url;

/// A Redis URL plus an optional password; see the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    url: String,
    password: Option<String>,
}

impl RedisTarget {
    /// `url` and, if not empty, `password`.
    pub fn new(url: impl Into<String>, password: Option<String>) -> Self {
        RedisTarget {
            url: url.into(),
            password: password.filter(|p| !p.is_empty()),
        }
    }

    /// The URL as given (it may hold a password: log [`Self::to_string`]
    /// instead).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether a password is given apart from the URL.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// fred's configuration: the URL parsed, the password set.
    pub fn config(&self) -> Result<Config, BrokerError> {
        let mut config = Config::from_url(&self.url).map_err(|e| {
            BrokerError::Unavailable(format!(
                "invalid Redis URL {}: {}",
                redact_url(&self.url),
                e.details()
            ))
        })?;
        if let Some(password) = &self.password {
            if config.password.is_some() {
                return Err(BrokerError::Unavailable(format!(
                    "the Redis URL {} has a password and a separate Redis password is set too; give one",
                    redact_url(&self.url)
                )));
            }
            config.password = Some(password.clone());
        }
        Ok(config)
    }
}

impl From<&str> for RedisTarget {
    fn from(url: &str) -> Self {
        RedisTarget::new(url, None)
    }
}

impl From<&String> for RedisTarget {
    fn from(url: &String) -> Self {
        RedisTarget::new(url.as_str(), None)
    }
}

impl From<String> for RedisTarget {
    fn from(url: String) -> Self {
        RedisTarget::new(url, None)
    }
}

impl From<&RedisTarget> for RedisTarget {
    fn from(t: &RedisTarget) -> Self {
        t.clone()
    }
}

/// The URL without its password (and a note when one is given apart).
impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.url))?;
        if self.password.is_some() {
            f.write_str(" (with password)")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisTarget({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_goes_into_the_config_and_nowhere_else() {
        let t = RedisTarget::new("redis://r:6379", Some("s3cret".into()));
        assert_eq!(t.config().unwrap().password.as_deref(), Some("s3cret"));
        assert_eq!(t.to_string(), "redis://r:6379 (with password)");
        assert!(!format!("{t:?}").contains("s3cret"));

        let cluster = RedisTarget::new("redis-cluster://a:7000?node=b:7000", Some("s3cret".into()));
        let config = cluster.config().unwrap();
        assert!(config.server.is_clustered());
        assert_eq!(config.password.as_deref(), Some("s3cret"));

        let in_url = RedisTarget::from("redis://:s3cret@r:6379");
        assert_eq!(in_url.config().unwrap().password.as_deref(), Some("s3cret"));
        assert_eq!(in_url.to_string(), "redis://:***@r:6379");
        assert!(!format!("{in_url:?}").contains("s3cret"));

        // An empty password is no password.
        let none = RedisTarget::new("redis://r:6379", Some(String::new()));
        assert!(!none.has_password());
        assert_eq!(none.config().unwrap().password, None);
    }

    #[test]
    fn two_passwords_are_refused_without_showing_either() {
        let t = RedisTarget::new("redis://:one@r:6379", Some("two".into()));
        let e = t.config().unwrap_err().to_string();
        assert!(e.contains("give one"), "{e}");
        assert!(!e.contains("one@") && !e.contains("two"), "{e}");
    }

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        let e = RedisTarget::from("redis://:s3cret@")
            .config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid Redis URL"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }
}
