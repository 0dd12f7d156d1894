//! Connection tunables.

use std::time::Duration;

use switchboard_proto::ids::ConvId;

use crate::tls::Tls;

/// See the field docs; `Default` suits interactive apps.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Reconnect backoff: the n-th wait is uniform in `[0, min(cap, base·2ⁿ)]`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Limit for one connection attempt: TCP, upgrade, `auth` and `ready`.
    /// Also bounds a single frame write.
    pub connect_timeout: Duration,
    /// Unanswered `send` frames at once. Sends are written in order; with
    /// more than one in flight, a send refused by a rate limit may be
    /// overtaken by a later one that was already on the wire (set 1 for strict
    /// order even then).
    pub max_in_flight: usize,
    /// A `send` with no answer for this long is written again (same id).
    pub send_timeout: Duration,
    /// First delay before retrying a send refused with `rate_limited` or
    /// `unavailable`; doubles per refusal up to `backoff_cap`.
    pub retry_base: Duration,
    /// A seq gap this old triggers a `sync` (frames from different senders
    /// may legitimately cross for a few milliseconds).
    pub gap_grace: Duration,
    /// A `sync` with no `synced` for this long is sent again.
    pub sync_timeout: Duration,
    /// Override the heartbeat interval the server announces in `ready`.
    pub heartbeat: Option<Duration>,
    /// No frame at all for this long after a heartbeat `ping`: the connection
    /// is considered dead and replaced.
    pub pong_timeout: Duration,
    /// Conversations to follow from the start, with the seq already held
    /// (0 for the whole retained history): synced on every (re)connect.
    pub track: Vec<(ConvId, u64)>,
    /// A conversation first seen through a live message: replay its earlier
    /// history (`true`) or start at that message (`false`).
    pub backfill_new: bool,
    /// How a `wss://` gateway's certificate is checked.
    pub tls: Tls,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_in_flight: 32,
            send_timeout: Duration::from_secs(10),
            retry_base: Duration::from_millis(200),
            gap_grace: Duration::from_millis(250),
            sync_timeout: Duration::from_secs(10),
            heartbeat: None,
            pong_timeout: Duration::from_secs(10),
            track: Vec::new(),
            backfill_new: false,
            tls: Tls::default(),
        }
    }
}
