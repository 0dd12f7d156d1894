//! The fallback relay's configuration file, as the operator writes it into
//! the `<cluster>-relay` ConfigMap (mounted into gateways at
//! `/etc/switchboard/relay/relay.json`) and as the gateway reads it.
//!
//! One definition for both sides so the file format cannot drift: the
//! operator serializes a [`RelayFile`], the gateway deserializes one (and
//! rejects fields it does not know) before validating it into its typed
//! `RelayConfig`. The API key never appears in the file; it names the
//! environment variable holding it.

use serde::{Deserialize, Serialize};

/// File name inside the relay ConfigMap / mount directory.
pub const FILE_NAME: &str = "relay.json";
/// Environment variable the operator fills with the relay API key from the
/// user's Secret, and the gateway reads it from.
pub const API_KEY_ENV: &str = "SWITCHBOARD_RELAY_API_KEY";

/// What the relay is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RelayProvider {
    /// Ably's REST publish + SSE subscribe API.
    Ably,
    /// Another Switchboard cluster, which serves the same subset.
    Switchboard,
}

impl RelayProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayProvider::Ably => "ably",
            RelayProvider::Switchboard => "switchboard",
        }
    }
}

impl std::fmt::Display for RelayProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON document of `relay.json`. Fields are in alphabetical order so
/// the serialized form is stable (and matches what the operator has always
/// written: `{"apiKeyEnv":…,"fallbackHosts":[…],"hosts":[…],"provider":…}`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelayFile {
    /// Environment variable holding the API key (`null`: no key).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Hosts tried in random order when the primary ones fail.
    #[serde(default)]
    pub fallback_hosts: Vec<String>,
    /// Primary relay hosts, `host` or `host:port`.
    pub hosts: Vec<String>,
    pub provider: RelayProvider,
    /// Reach the relay over HTTPS (the default). `false` for a plain-HTTP
    /// relay, such as another Switchboard on loopback or inside the
    /// cluster network. Left out of the file when `true`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub tls: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn serialized_form_is_stable() {
        let f = RelayFile {
            api_key_env: None,
            fallback_hosts: vec![],
            hosts: vec!["relay.example.com:443".into()],
            provider: RelayProvider::Switchboard,
            tls: true,
        };
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(
            text,
            r#"{"apiKeyEnv":null,"fallbackHosts":[],"hosts":["relay.example.com:443"],"provider":"switchboard"}"#
        );
        assert_eq!(serde_json::from_str::<RelayFile>(&text).unwrap(), f);
        let plain = RelayFile { tls: false, ..f };
        let text = serde_json::to_string(&plain).unwrap();
        assert!(
            text.ends_with(r#""provider":"switchboard","tls":false}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<RelayFile>(&text).unwrap(), plain);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e =
            serde_json::from_str::<RelayFile>(r#"{"hosts":["a"],"provider":"ably","apiKey":"x"}"#)
                .unwrap_err();
        assert!(e.to_string().contains("unknown field `apiKey`"), "{e}");
    }
}
