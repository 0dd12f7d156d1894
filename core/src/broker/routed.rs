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
        serde_json::to_string(&self.wire(users, f))
    }

    /// Encode several events for one gateway's channel in one payload: a
    /// JSON array of what [`Routed::encode`] writes, each event with its
    /// users narrowed to that gateway's. (Gateways of an earlier version
    /// read only single events: during a rolling update from one, batched
    /// events sent to it are dropped with a warning.)
    pub fn encode_many(parts: &[(&Routed, &[Address])]) -> Result<String, serde_json::Error> {
        let frames = parts
            .iter()
            .map(|(ev, _)| serde_json::from_str::<&RawValue>(&ev.frame))
            .collect::<Result<Vec<_>, _>>()?;
        let wires: Vec<Wire<'_>> = parts
            .iter()
            .zip(frames)
            .map(|((ev, users), f)| ev.wire(users, f))
            .collect();
        serde_json::to_string(&wires)
    }

    fn wire<'a>(&self, users: &[Address], f: &'a RawValue) -> Wire<'a> {
        Wire {
            u: users.to_vec(),
            f,
            a: self.ack.clone(),
            s: self.skip_conn.clone(),
            c: self.channel.clone(),
            r: self.revoke,
        }
    }

    pub fn decode(s: &str) -> Result<Routed, serde_json::Error> {
        let w: Wire<'_> = serde_json::from_str(s)?;
        Ok(Self::from_wire(w))
    }

    /// Decode a payload of [`Routed::encode`] (one event) or of
    /// [`Routed::encode_many`] (several).
    pub fn decode_all(s: &str) -> Result<Vec<Routed>, serde_json::Error> {
        if s.trim_start().starts_with('[') {
            let ws: Vec<Wire<'_>> = serde_json::from_str(s)?;
            return Ok(ws.into_iter().map(Self::from_wire).collect());
        }
        Self::decode(s).map(|ev| vec![ev])
    }

    fn from_wire(w: Wire<'_>) -> Routed {
        Routed {
            users: w.u,
            frame: Arc::from(w.f.get()),
            ack: w.a,
            skip_conn: w.s,
            channel: w.c,
            revoke: w.r,
        }
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
        // A single event is also what `decode_all` reads.
        let all = Routed::decode_all(&r.encode(&r.users).unwrap()).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(&*all[0].frame, r#"{"type":"pong"}"#);
    }

    #[test]
    fn batches_round_trip_with_each_events_users() {
        let (a, b): (Address, Address) = (
            "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23"
                .parse()
                .unwrap(),
            "0x8ba1f109551bd432803012645ac136ddd64dba72"
                .parse()
                .unwrap(),
        );
        let one = Routed {
            users: vec![a, b],
            frame: Arc::from(r#"{"type":"receipt","n":[1, 2]}"#),
            ack: None,
            skip_conn: Some("gw/3".into()),
            channel: None,
            revoke: None,
        };
        let two = Routed {
            users: vec![b],
            frame: Arc::from(r#"{"type":"typing"}"#),
            skip_conn: None,
            ..one.clone()
        };
        let payload = Routed::encode_many(&[(&one, &[a]), (&two, &[b])]).unwrap();
        let back = Routed::decode_all(&payload).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(
            (back[0].users.clone(), &*back[0].frame),
            (vec![a], &*one.frame)
        );
        assert_eq!(back[0].skip_conn.as_deref(), Some("gw/3"));
        assert_eq!(
            (back[1].users.clone(), &*back[1].frame),
            (vec![b], &*two.frame)
        );
        assert_eq!(back[1].skip_conn, None);
        // Not JSON, or a frame that is not JSON: an error, nothing delivered.
        assert!(Routed::decode_all("[{").is_err());
        let bad = Routed {
            frame: Arc::from("{not json"),
            ..one.clone()
        };
        assert!(Routed::encode_many(&[(&bad, &[a])]).is_err());
    }
}
