//! Fallback relay configuration.
//!
//! The operator writes `relay.json` (a [`RelayFile`], the type both crates
//! share) into the `<cluster>-relay` ConfigMap and mounts it into gateways;
//! the API key reaches the gateway separately, from the user's Secret through
//! the environment variable the file names. [`RelayConfig::parse`] turns the
//! file plus the key into a validated [`RelayConfig`], so a bad configuration
//! stops the gateway at start-up with a message saying what is wrong.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

pub use switchboard_core::relay::{API_KEY_ENV, FILE_NAME, RelayFile, RelayProvider};

/// Most hosts in one list (the ChatCluster CRD allows 16 per list).
pub const MAX_HOSTS: usize = 16;

/// A validated relay endpoint: a DNS name, an IPv4 address or a bracketed
/// IPv6 address, with an optional port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayHost {
    host: String,
    port: Option<u16>,
}

impl RelayHost {
    /// The host part, without brackets for IPv6.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

impl fmt::Display for RelayHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

impl FromStr for RelayHost {
    type Err = String;

    /// `host` or `host:port`; the error says what is wrong (without the value).
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("is empty".into());
        }
        if s.trim() != s || s.contains(char::is_whitespace) {
            return Err("contains whitespace".into());
        }
        if s.contains("://") {
            return Err("has a scheme; give host or host:port only".into());
        }
        if s.contains(['/', '?', '#', '@']) {
            return Err("is not host or host:port (it has a path, query or user part)".into());
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (ip, after) = rest
                .split_once(']')
                .ok_or("has an unclosed [ (IPv6 addresses are written [addr] or [addr]:port)")?;
            Ipv6Addr::from_str(ip).map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("has text after ]")?),
            };
            (ip, port)
        } else {
            match s.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(
                        "has more than one ':' (write IPv6 addresses as [addr]:port)".into(),
                    );
                }
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
                _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
            },
        };
        if !host.contains(':') && Ipv4Addr::from_str(host).is_err() {
            check_dns_name(host)?;
        }
        Ok(RelayHost {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner
/// hyphens, 1–63 characters each, 253 in all.
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("has no host before the port".into());
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() > 253 {
        return Err("host name is longer than 253 characters".into());
    }
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "host name label {label:?} is invalid (1-63 letters, digits or inner hyphens)"
            ));
        }
    }
    Ok(())
}

/// The relay API key. Its `Debug` form hides it, so it stays out of logs
/// (including `{:?}` of a [`crate::GatewayConfig`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// The key itself, for the relay client. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Why a relay configuration was refused. Messages never contain the key.
#[derive(Debug, thiserror::Error)]
pub enum RelayConfigError {
    #[error("not a valid relay.json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("`hosts` is empty: the relay needs at least one host")]
    NoHosts,
    #[error("`{field}` lists {count} hosts; at most {MAX_HOSTS} are allowed")]
    TooManyHosts { field: &'static str, count: usize },
    #[error("`{field}[{index}]` {value:?} {reason}")]
    BadHost {
        field: &'static str,
        index: usize,
        value: String,
        reason: String,
    },
    #[error("host {0} is listed more than once in `hosts` / `fallbackHosts`")]
    DuplicateHost(String),
    #[error("`apiKeyEnv` {0:?} is not a valid environment variable name")]
    BadApiKeyEnv(String),
    #[error(
        "no relay API key was given, but `apiKeyEnv` says it is in {0} (is that variable set?)"
    )]
    ApiKeyNotSet(String),
    #[error("provider `ably` needs an API key (in {API_KEY_ENV}), and none was given")]
    AblyWithoutKey,
    #[error(
        "the relay API key is not an Ably key: expected `name:secret` (e.g. `appId.keyId:secret`)"
    )]
    BadAblyKey,
}

/// A validated fallback relay: who, where, and the key to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    provider: RelayProvider,
    hosts: Vec<RelayHost>,
    fallback_hosts: Vec<RelayHost>,
    api_key: Option<ApiKey>,
    tls: bool,
}

impl RelayConfig {
    /// Parse and validate `relay.json` (the text the operator writes) with
    /// the API key from wherever the caller found it (`None` or empty: no
    /// key).
    pub fn parse(json: &str, api_key: Option<String>) -> Result<Self, RelayConfigError> {
        let file: RelayFile = serde_json::from_str(json)?;
        Self::from_file(file, api_key)
    }

    /// Validate an already parsed file.
    pub fn from_file(file: RelayFile, api_key: Option<String>) -> Result<Self, RelayConfigError> {
        if file.hosts.is_empty() {
            return Err(RelayConfigError::NoHosts);
        }
        let hosts = hosts_field("hosts", &file.hosts)?;
        let fallback_hosts = hosts_field("fallbackHosts", &file.fallback_hosts)?;
        let mut seen: Vec<&RelayHost> = Vec::new();
        for h in hosts.iter().chain(&fallback_hosts) {
            if seen.contains(&h) {
                return Err(RelayConfigError::DuplicateHost(h.to_string()));
            }
            seen.push(h);
        }
        if let Some(var) = &file.api_key_env {
            let valid = !var.is_empty()
                && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !var.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err(RelayConfigError::BadApiKeyEnv(var.clone()));
            }
        }
        let api_key = api_key.filter(|k| !k.trim().is_empty());
        match (&api_key, &file.api_key_env, file.provider) {
            (None, Some(var), _) => return Err(RelayConfigError::ApiKeyNotSet(var.clone())),
            (None, None, RelayProvider::Ably) => return Err(RelayConfigError::AblyWithoutKey),
            (Some(key), _, RelayProvider::Ably) if !is_ably_key(key) => {
                return Err(RelayConfigError::BadAblyKey);
            }
            _ => {}
        }
        Ok(RelayConfig {
            provider: file.provider,
            hosts,
            fallback_hosts,
            api_key: api_key.map(ApiKey),
            tls: file.tls,
        })
    }

    /// HTTPS (`true`, the default) or plain HTTP.
    pub fn tls(&self) -> bool {
        self.tls
    }

    pub fn provider(&self) -> RelayProvider {
        self.provider
    }

    /// Primary hosts, tried first.
    pub fn hosts(&self) -> &[RelayHost] {
        &self.hosts
    }

    /// Hosts tried (in random order) when the primary ones fail.
    pub fn fallback_hosts(&self) -> &[RelayHost] {
        &self.fallback_hosts
    }

    pub fn api_key(&self) -> Option<&ApiKey> {
        self.api_key.as_ref()
    }
}

/// `a,b,c` for logs and metric labels.
pub fn join_hosts(hosts: &[RelayHost]) -> String {
    hosts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn hosts_field(field: &'static str, list: &[String]) -> Result<Vec<RelayHost>, RelayConfigError> {
    if list.len() > MAX_HOSTS {
        return Err(RelayConfigError::TooManyHosts {
            field,
            count: list.len(),
        });
    }
    list.iter()
        .enumerate()
        .map(|(index, value)| {
            value
                .parse::<RelayHost>()
                .map_err(|reason| RelayConfigError::BadHost {
                    field,
                    index,
                    value: value.clone(),
                    reason,
                })
        })
        .collect()
}

/// Ably keys are `<app id>.<key id>:<secret>`; only the `name:secret` shape
/// is checked here (Ably itself judges the rest).
fn is_ably_key(key: &str) -> bool {
    match key.split_once(':') {
        Some((name, secret)) => {
            !name.is_empty()
                && !secret.is_empty()
                && !secret.contains(':')
                && !key.contains(char::is_whitespace)
        }
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const KEY: &str = "xVLyHw.A-pwh7w:S0m3s3cr3t";

    fn ably(hosts: &str, fallback: &str) -> String {
        format!(
            r#"{{"apiKeyEnv":"SWITCHBOARD_RELAY_API_KEY","fallbackHosts":{fallback},"hosts":{hosts},"provider":"ably"}}"#
        )
    }

    fn err(json: &str, key: Option<&str>) -> String {
        let e = RelayConfig::parse(json, key.map(String::from)).unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains("S0m3s3cr3t"), "key in message: {msg}");
        msg
    }

    #[test]
    fn parses_what_the_operator_writes() {
        let json = ably(
            r#"["main.realtime.ably.net"]"#,
            r#"["main.a.fallback.ably-realtime.com","main.b.fallback.ably-realtime.com:443"]"#,
        );
        let c = RelayConfig::parse(&json, Some(KEY.into())).unwrap();
        assert_eq!(c.provider(), RelayProvider::Ably);
        assert_eq!(join_hosts(c.hosts()), "main.realtime.ably.net");
        assert_eq!(c.fallback_hosts()[1].port(), Some(443));
        assert_eq!(c.api_key().unwrap().expose(), KEY);

        let json = r#"{"apiKeyEnv":null,"fallbackHosts":[],"hosts":["relay.other-cluster.example.com:443","10.0.0.7","[fd00::1]:8080"],"provider":"switchboard"}"#;
        let c = RelayConfig::parse(json, None).unwrap();
        assert_eq!(c.provider(), RelayProvider::Switchboard);
        assert_eq!(
            join_hosts(c.hosts()),
            "relay.other-cluster.example.com:443,10.0.0.7,[fd00::1]:8080"
        );
        assert_eq!(c.hosts()[2].host(), "fd00::1");
        assert!(c.fallback_hosts().is_empty());
        assert!(c.api_key().is_none());
        // Optional fields may be left out.
        let c = RelayConfig::parse(r#"{"hosts":["r.example"],"provider":"switchboard"}"#, None);
        assert!(c.is_ok());
    }

    #[test]
    fn the_key_never_shows_in_debug() {
        let json = ably(r#"["a.example"]"#, "[]");
        let c = RelayConfig::parse(&json, Some(KEY.into())).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("S0m3s3cr3t"), "{dbg}");
        assert!(dbg.contains("ApiKey(***)"), "{dbg}");
    }

    #[test]
    fn bad_json_and_unknown_fields() {
        assert!(err("{", None).starts_with("not a valid relay.json: EOF"));
        assert_eq!(
            err(r#"{"hosts":["a"],"provider":"pusher"}"#, None),
            "not a valid relay.json: unknown variant `pusher`, expected `ably` or `switchboard` at line 1 column 34"
        );
        let m = err(
            r#"{"hosts":["a"],"provider":"switchboard","apiKey":"x"}"#,
            None,
        );
        assert!(m.contains("unknown field `apiKey`"), "{m}");
        let m = err(r#"{"provider":"switchboard"}"#, None);
        assert!(m.contains("missing field `hosts`"), "{m}");
    }

    #[test]
    fn empty_hosts() {
        assert_eq!(
            err(&ably("[]", "[]"), Some(KEY)),
            "`hosts` is empty: the relay needs at least one host"
        );
    }

    #[test]
    fn bad_hosts() {
        let cases = [
            ("", "is empty"),
            (
                "https://main.realtime.ably.net",
                "has a scheme; give host or host:port only",
            ),
            (
                "relay.example/path",
                "is not host or host:port (it has a path, query or user part)",
            ),
            (
                "relay.example:0",
                "port \"0\" is not a number from 1 to 65535",
            ),
            (
                "relay.example:65536",
                "port \"65536\" is not a number from 1 to 65535",
            ),
            (
                "relay.example:https",
                "port \"https\" is not a number from 1 to 65535",
            ),
            (
                "relay.example:",
                "port \"\" is not a number from 1 to 65535",
            ),
            (":443", "has no host before the port"),
            (
                "fd00::1",
                "has more than one ':' (write IPv6 addresses as [addr]:port)",
            ),
            (
                "[fd00::1",
                "has an unclosed [ (IPv6 addresses are written [addr] or [addr]:port)",
            ),
            ("[nope]:1", "\"nope\" is not an IPv6 address"),
            (
                "-bad.example",
                "host name label \"-bad\" is invalid (1-63 letters, digits or inner hyphens)",
            ),
            (
                "a..b",
                "host name label \"\" is invalid (1-63 letters, digits or inner hyphens)",
            ),
            (
                "under_score.example",
                "host name label \"under_score\" is invalid (1-63 letters, digits or inner hyphens)",
            ),
            (" relay.example", "contains whitespace"),
        ];
        for (host, reason) in cases {
            let json = ably(&serde_json::to_string(&[host]).unwrap(), "[]");
            assert_eq!(
                err(&json, Some(KEY)),
                format!("`hosts[0]` {host:?} {reason}"),
                "{host:?}"
            );
        }
        // Fallback hosts are checked the same way, and named as such.
        let json = ably(r#"["a.example"]"#, r#"["b.example","c.example:99999"]"#);
        assert_eq!(
            err(&json, Some(KEY)),
            "`fallbackHosts[1]` \"c.example:99999\" port \"99999\" is not a number from 1 to 65535"
        );
    }

    #[test]
    fn duplicate_and_too_many_hosts() {
        let json = ably(r#"["a.example"]"#, r#"["A.example"]"#);
        assert_eq!(
            err(&json, Some(KEY)),
            "host a.example is listed more than once in `hosts` / `fallbackHosts`"
        );
        let many: Vec<String> = (0..17).map(|i| format!("h{i}.example")).collect();
        let json = ably(r#"["a.example"]"#, &serde_json::to_string(&many).unwrap());
        assert_eq!(
            err(&json, Some(KEY)),
            "`fallbackHosts` lists 17 hosts; at most 16 are allowed"
        );
    }

    #[test]
    fn api_key_rules() {
        let ably_no_env = r#"{"hosts":["a.example"],"provider":"ably"}"#;
        assert_eq!(
            err(ably_no_env, None),
            "provider `ably` needs an API key (in SWITCHBOARD_RELAY_API_KEY), and none was given"
        );
        // An empty variable counts as unset.
        assert_eq!(
            err(&ably(r#"["a.example"]"#, "[]"), Some("  ")),
            "no relay API key was given, but `apiKeyEnv` says it is in SWITCHBOARD_RELAY_API_KEY (is that variable set?)"
        );
        let not_ably = "the relay API key is not an Ably key: expected `name:secret` (e.g. `appId.keyId:secret`)";
        for key in [
            "S0m3s3cr3t",
            ":S0m3s3cr3t",
            "name:",
            "a:b:S0m3s3cr3t",
            "a.b:S0m3 s3cr3t",
        ] {
            assert_eq!(err(ably_no_env, Some(key)), not_ably, "{key:?}");
        }
        assert!(RelayConfig::parse(ably_no_env, Some(KEY.into())).is_ok());
        // A Switchboard relay takes any key, or none unless the file names one.
        let sb = r#"{"apiKeyEnv":"SWITCHBOARD_RELAY_API_KEY","hosts":["a.example"],"provider":"switchboard"}"#;
        assert!(RelayConfig::parse(sb, Some("opaque-token".into())).is_ok());
        assert!(err(sb, None).contains("says it is in SWITCHBOARD_RELAY_API_KEY"));
        let bad_env = r#"{"apiKeyEnv":"1 BAD","hosts":["a.example"],"provider":"switchboard"}"#;
        assert_eq!(
            err(bad_env, Some("k")),
            "`apiKeyEnv` \"1 BAD\" is not a valid environment variable name"
        );
    }
}
