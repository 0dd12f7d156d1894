//! [`Routed`]: one server frame on its way to some users' connections, on
//! whichever gateways hold them. The frame is serialized once by the sender's
//! gateway, never per recipient.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use switchboard_proto::ids::{Address, ConvId};

/// A frame addressed to users.
#[derive(Debug, Clone)]
pub struct Routed {
    /// Recipients; each of their connections gets the frame.
    pub users: Vec<Address>,
    /// The frame, already JSON.
    pub frame: Arc<str>,
    /// Set for `msg` frames: the receiving connection tracks the ack and
    /// resends until it arrives.
    pub ack: Option<(ConvId, u64)>,
    /// A connection (`<gateway>/<n>`) that must not get the frame: the sender's
    /// own device already has the message through `sent`.
    pub skip_conn: Option<String>,
    /// Set for a channel's `msg` frames: every local subscriber of the
    /// channel gets it (no acks); `users` is empty.
    pub channel: Option<(ConvId, u64)>,
    /// Set for a session revocation: the users' connections whose session
    /// was issued at or before this time (Unix seconds) get the frame and
    /// are closed (4001); others get nothing.
    pub revoke: Option<i64>,
}

/// Wire form on Redis pub/sub. Short keys: this is sent once per gateway per event.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    u: Vec<Address>,
    #[serde(borrow)]
    f: &'a RawValue,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<(ConvId, u64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<(ConvId, u64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<i64>,
}

impl Routed {
    /// Encode for pub/sub; `users` may be narrowed to those on one gateway.
    pub fn encode(&self, users: &[Address]) -> Result<String, serde_json::Error> {
        let f: &RawValue = serde_json::from_str(&self.frame)?;
        serde_json::to_string(&Wire {
            u: users.to_vec(),
            f,
            a: self.ack.clone(),
            s: self.skip_conn.clone(),
            c: self.channel.clone(),
            r: self.revoke,
        })
    }

    pub fn decode(s: &str) -> Result<Routed, serde_json::Error> {
        let w: Wire<'_> = serde_json::from_str(s)?;
        Ok(Routed {
            users: w.u,
            frame: Arc::from(w.f.get()),
            ack: w.a,
            skip_conn: w.s,
            channel: w.c,
            revoke: w.r,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let a: Address = "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23"
            .parse()
            .unwrap();
        let conv = ConvId::new_group();
        let r = Routed {
            users: vec![a],
            frame: Arc::from(r#"{"type":"pong"}"#),
            ack: Some((conv.clone(), 7)),
            skip_conn: Some("gw/1".into()),
            channel: None,
            revoke: Some(1_800_000_000),
        };
        let back = Routed::decode(&r.encode(&r.users).unwrap()).unwrap();
        assert_eq!(back.revoke, Some(1_800_000_000));
        assert_eq!(back.users, vec![a]);
        assert_eq!(&*back.frame, r#"{"type":"pong"}"#);
        assert_eq!(back.ack, Some((conv, 7)));
        assert_eq!(back.skip_conn.as_deref(), Some("gw/1"));
    }
}
