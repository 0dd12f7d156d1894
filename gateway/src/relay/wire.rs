//! What gateways say to each other through the relay: each relayed event is
//! one relay message whose `data` is an [`Envelope`] in JSON text — the
//! publishing gateway and the [`Routed`] event in the same wire form Redis
//! pub/sub carries — on one relay channel per ChatCluster.
//!
//! Envelopes are sealed with an HMAC keyed from the cluster's session-token
//! secret (which every gateway of a cluster shares and nobody else has): the
//! relay and whoever else may publish on it can carry the cluster's
//! envelopes, not forge them.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;
use sha3::{Digest, Sha3_256};
use switchboard_core::broker::{ClusterRef, Routed};

/// Largest envelope read from the relay (a group's recipient list plus one
/// frame fit well within it); larger ones are dropped with a warning.
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;

/// The relay message `name` of an envelope (other names on the channel are
/// ignored).
pub const EVENT_NAME: &str = "sb.routed";

/// One event from a gateway, for the other gateways of its cluster.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The publishing gateway's id: it delivered its own share already, so
    /// it skips its own envelopes when they come back.
    pub origin: String,
    pub routed: Routed,
}

#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    o: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    r: &'a RawValue,
    /// HMAC-SHA256 over `o`, a newline and `r`'s text, in hex.
    s: std::borrow::Cow<'a, str>,
}

type HmacSha256 = Hmac<Sha256>;

/// Derivation label of the envelope key (the token secret keys other
/// things too; each use gets its own key).
const KEY_LABEL: &[u8] = b"switchboard relay envelope v1";

/// Seals and opens envelopes with the cluster's key.
pub struct EnvelopeSealer {
    key: [u8; 32],
}

impl EnvelopeSealer {
    /// The sealer of the cluster whose gateways share `token_secret`.
    pub fn new(token_secret: &[u8]) -> Self {
        let mut mac = mac(token_secret);
        mac.update(KEY_LABEL);
        EnvelopeSealer {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn tag(&self, origin: &str, routed: &str) -> HmacSha256 {
        let mut m = mac(&self.key);
        m.update(origin.as_bytes());
        m.update(b"\n");
        m.update(routed.as_bytes());
        m
    }

    /// The JSON text published as the relay message's `data`.
    pub fn seal(&self, e: &Envelope) -> Result<String, EnvelopeError> {
        let routed = e.routed.encode(&e.routed.users)?;
        let r: &RawValue = serde_json::from_str(&routed)?;
        let s = hex::encode(self.tag(&e.origin, r.get()).finalize().into_bytes());
        let text = serde_json::to_string(&Wire {
            o: e.origin.as_str().into(),
            r,
            s: s.into(),
        })?;
        if text.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge(text.len()));
        }
        Ok(text)
    }

    /// Read a relay message's `data`: size checked before parsing, seal
    /// checked before the event is decoded.
    pub fn open(&self, text: &str) -> Result<Envelope, EnvelopeError> {
        if text.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge(text.len()));
        }
        let w: Wire<'_> = serde_json::from_str(text)?;
        let given = hex::decode(w.s.as_bytes()).map_err(|_| EnvelopeError::BadSeal)?;
        self.tag(&w.o, w.r.get())
            .verify_slice(&given)
            .map_err(|_| EnvelopeError::BadSeal)?;
        Ok(Envelope {
            origin: w.o.into_owned(),
            routed: Routed::decode(w.r.get())?,
        })
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is {0} bytes, more than {MAX_ENVELOPE_BYTES}")]
    TooLarge(usize),
    #[error("malformed envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("envelope not sealed by this cluster's key")]
    BadSeal,
}

/// The relay channel of a ChatCluster: `sb-relay-` and 24 hex digits of a
/// hash of `namespace/name`, so two clusters can share one relay (and one
/// API key limited to `sb-relay-*`) without seeing each other's traffic,
/// and the name fits the relay's channel-name rules whatever the cluster is
/// called. Gateways started without a cluster identity (`switchboard dev`)
/// use the channel of `default/switchboard`.
pub fn channel_name(cluster: Option<&ClusterRef>) -> String {
    let (ns, name) = cluster.map_or(("default", "switchboard"), |c| (c.namespace(), c.name()));
    let digest = Sha3_256::digest(format!("{ns}/{name}").as_bytes());
    format!("sb-relay-{}", hex::encode(&digest[..12]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use switchboard_proto::ids::Address;

    use super::*;

    #[test]
    fn an_envelope_round_trips_and_bounds_its_size() {
        let a: Address = "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23"
            .parse()
            .unwrap();
        let e = Envelope {
            origin: "gw-1".into(),
            routed: Routed {
                users: vec![a],
                frame: Arc::from(r#"{"type":"msg","seq":0}"#),
                ack: None,
                skip_conn: Some("gw-1/3".into()),
                channel: None,
                revoke: None,
            },
        };
        let sealer = EnvelopeSealer::new(b"cluster secret");
        let text = sealer.seal(&e).unwrap();
        let back = sealer.open(&text).unwrap();
        assert_eq!(back.origin, "gw-1");
        assert_eq!(back.routed.users, vec![a]);
        assert_eq!(&*back.routed.frame, r#"{"type":"msg","seq":0}"#);
        assert_eq!(back.routed.skip_conn.as_deref(), Some("gw-1/3"));

        // Another cluster's key, or a changed event, does not open.
        let other = EnvelopeSealer::new(b"another secret");
        assert!(matches!(other.open(&text), Err(EnvelopeError::BadSeal)));
        let forged = text.replace("gw-1/3", "gw-1/4");
        assert!(matches!(sealer.open(&forged), Err(EnvelopeError::BadSeal)));
        let huge = "x".repeat(MAX_ENVELOPE_BYTES + 1);
        assert!(matches!(
            sealer.open(&huge),
            Err(EnvelopeError::TooLarge(_))
        ));
        assert!(matches!(
            sealer.open(r#"{"o":"x"}"#),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn channel_names_are_per_cluster_and_valid_relay_names() {
        let a = ClusterRef::new("team-a", "chat").unwrap();
        let b = ClusterRef::new("team-b", "chat").unwrap();
        let (na, nb) = (channel_name(Some(&a)), channel_name(Some(&b)));
        assert_ne!(na, nb);
        assert_eq!(na, channel_name(Some(&a)));
        assert_ne!(channel_name(None), na);
        for n in [na, nb, channel_name(None)] {
            assert!(n.len() <= 64 && n.starts_with("sb-relay-"), "{n}");
            assert!(n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        }
    }
}
