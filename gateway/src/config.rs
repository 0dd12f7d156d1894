//! Gateway configuration. Every knob has a production default; tests shorten
//! the timers (ack retry interval, presence thresholds) to run fast.

use std::time::Duration;

use ipnet::IpNet;
use switchboard_core::broker::GatewayIdentity;
use switchboard_core::cors::CorsOrigin;
use switchboard_core::reserved::ReservedPattern;

use crate::keys::ApiKey;
use crate::relay::RelayConfig;

/// See the field docs; `Default` is what `switchboard dev` runs with.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where `/metrics` is served: its own listener, never the public one
    /// (which an Ingress or load balancer exposes). Default `127.0.0.1:0`
    /// (a free local port, see `Gateway::metrics_addr`).
    pub metrics_listen: String,
    /// This instance's id in the connection registry. Must be unique among the
    /// gateways sharing a broker; defaults to a random `gw-<hex>`.
    pub gateway_id: String,
    /// EIP-4361 domain the sign-in message must name (an authority, e.g. `localhost`).
    pub domain: String,
    /// Chain ids accepted in sign-in messages.
    pub chain_ids: Vec<u64>,
    /// HMAC key for session tokens; gateways sharing users must share it.
    pub token_secret: Vec<u8>,
    /// Session token lifetime.
    pub session_ttl: Duration,
    /// Sign-in nonce lifetime.
    pub nonce_ttl: Duration,
    /// How long a new socket may take to authenticate.
    pub auth_timeout: Duration,
    /// Heartbeat interval announced to clients in `ready`.
    pub heartbeat: Duration,
    /// A socket with no inbound frame for this long is closed (4000).
    pub idle_timeout: Duration,
    /// Time to wait for an `ack` before resending a `msg`.
    pub ack_timeout: Duration,
    /// Acks are gathered for this long before the delivered watermark moves
    /// and its receipt goes out: one receipt per burst, not per message.
    pub receipt_delay: Duration,
    /// Resends after the first delivery attempt (so at most 1 + this many sends).
    pub max_retries: u32,
    /// Last seen less than this long ago: `online`.
    pub online_within: Duration,
    /// Last seen less than this long ago (and not online): `away`; else `offline`.
    pub away_within: Duration,
    /// Frames queued for one socket before it counts as a slow consumer (4008).
    pub send_queue: usize,
    /// Sustained `send` frames per second per connection, and the burst above it.
    pub send_rate: u32,
    pub send_burst: u32,
    /// All inbound frames per second per connection, and the burst.
    pub frame_rate: u32,
    pub frame_burst: u32,
    /// Minimum time between relayed `typing` frames per conversation per socket.
    pub typing_interval: Duration,
    /// Most messages one `sync` replays; clients sync again from the last seq.
    pub sync_limit: usize,
    /// Largest group at creation.
    pub max_group_members: usize,
    /// WebSocket read / write buffer sizes. tungstenite's default is a 128 KiB
    /// read buffer per socket, allocated up front, which dominates idle memory;
    /// 1 KiB holds a typical chat frame, and larger frames grow the buffer
    /// for as long as they need it (see docs/benchmarks.md for the figures).
    pub ws_read_buffer: usize,
    pub ws_write_buffer: usize,
    /// How often this gateway refreshes its liveness in the broker; keep it
    /// well under the broker's `gateway_ttl` (default 15 s). It is also how
    /// soon the gateway notices that Redis lost its state and registers its
    /// sockets again: messages routed before that are not pushed to them
    /// (they come with the clients' next sync). One small write per
    /// interval, so the default is short.
    pub liveness_interval: Duration,
    /// How long a member list stays cached for typing/ack/read fan-out.
    pub members_cache_ttl: Duration,
    /// The `ChatCluster` pod this gateway is (from `POD_NAMESPACE`,
    /// `SWITCHBOARD_CLUSTER`, `POD_NAME`). When set, the gateway reports its
    /// live connection count to the broker for the operator's autoscaler;
    /// `None` (the default): no reports.
    pub identity: Option<GatewayIdentity>,
    /// How often the connection count is reported; each report lives
    /// [`REPORT_TTL_FACTOR`] intervals, so a dead gateway's report vanishes.
    pub report_interval: Duration,
    /// Drain (SIGTERM / [`crate::Gateway::shutdown`]): sockets are closed with
    /// 1012 in randomized batches over the first 80% of this window, and the
    /// gateway waits for them until the window ends plus
    /// [`crate::server::CLOSE_GRACE`] (2 s). Keep it under the pod's
    /// termination grace period minus the preStop delay and 2 s (the
    /// operator sets it from `spec.gateway.drain.timeoutSeconds`, with 5 s of
    /// margin).
    pub drain_window: Duration,
    /// The fallback relay (validated at start-up from the file the operator
    /// mounts, see [`crate::relay`]): while Redis is unreachable, messages
    /// are relayed through it and held until Redis is back. `None` (the
    /// default): no relay, sends answer `unavailable` while Redis is down.
    pub relay: Option<RelayConfig>,
    /// Most messages a gateway holds in relay mode (accepted while Redis was
    /// unreachable, waiting for their seq); past it sends are refused as
    /// `unavailable`.
    pub relay_spool_max: usize,
    /// API keys of the Ably-compatible endpoints (`keyName:keySecret`).
    pub api_keys: Vec<ApiKey>,
    /// Channel names only API keys may create (`--reserved-channel`); a
    /// wallet naming a matching channel that does not exist is refused.
    pub reserved_channels: Vec<ReservedPattern>,
    /// Flood limits: REST rates and connection caps (see [`crate::limits`]).
    pub limits: LimitsConfig,
    /// Origins of the web pages allowed to call the API from a browser
    /// (`--cors-origin`, see [`crate::cors`]); empty (the default): no CORS
    /// headers at all.
    pub cors_origins: Vec<CorsOrigin>,
    /// Files served as they are at fixed paths on the public listener
    /// (`switchboard dev` serves the browser chat at `/demo` this way);
    /// empty (the default) in the gateway binary.
    pub static_files: Vec<StaticFile>,
}

/// One file served with `GET path`: bytes and their content type, nothing
/// more (no templating, no directory listing).
#[derive(Clone)]
pub struct StaticFile {
    /// The request path, starting with `/`.
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

impl std::fmt::Debug for StaticFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticFile")
            .field("path", &self.path)
            .field("content_type", &self.content_type)
            .field("bytes", &self.body.len())
            .finish()
    }
}

/// The flood limits (docs/operations.md, "Limits" and "Floods and rate
/// limits"). A rate or a cap of 0 turns that limit off.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// REST requests (every route but `/healthz`, `/readyz`, `/metrics`,
    /// including sign-in and the requests that open WebSockets and SSE
    /// streams) per second per client address (fractions allowed: 0.5 is
    /// one every two seconds), and the burst a fresh address may send at once.
    pub rest_rate: f64,
    pub rest_burst: u32,
    /// The same per signed-in user (requests carrying a valid session token).
    pub user_rest_rate: f64,
    pub user_rest_burst: u32,
    /// Open connections (WebSockets, from the upgrade on, and SSE streams)
    /// per client address, per user, and in all on this gateway.
    pub conns_per_addr: usize,
    pub conns_per_user: usize,
    pub max_conns: usize,
    /// Peers whose `X-Forwarded-For` is believed (load balancers, ingress
    /// controllers). Without any, the client address is the socket's peer.
    pub trusted_proxies: Vec<IpNet>,
    /// Keys (addresses, users) one rate limiter tracks at most; past it,
    /// new keys share one overflow limit until pruning frees room.
    pub max_tracked: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            rest_rate: 20.0,
            rest_burst: 100,
            user_rest_rate: 10.0,
            user_rest_burst: 50,
            conns_per_addr: 100,
            conns_per_user: 16,
            max_conns: 100_000,
            trusted_proxies: Vec::new(),
            max_tracked: 100_000,
        }
    }
}

impl LimitsConfig {
    /// Every limit off (load generators and tests that open thousands of
    /// sockets from one address).
    pub fn off() -> Self {
        LimitsConfig {
            rest_rate: 0.0,
            rest_burst: 0,
            user_rest_rate: 0.0,
            user_rest_burst: 0,
            conns_per_addr: 0,
            conns_per_user: 0,
            max_conns: 0,
            trusted_proxies: Vec::new(),
            max_tracked: 100_000,
        }
    }
}

/// A connection report expires after this many report intervals.
pub const REPORT_TTL_FACTOR: u32 = 3;

/// Default [`GatewayConfig::report_interval`].
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(5);

impl Default for GatewayConfig {
    fn default() -> Self {
        let id: [u8; 6] = rand::random();
        GatewayConfig {
            metrics_listen: "127.0.0.1:0".into(),
            gateway_id: format!("gw-{}", hex::encode(id)),
            domain: "localhost".into(),
            chain_ids: vec![1],
            token_secret: rand::random::<[u8; 32]>().to_vec(),
            session_ttl: Duration::from_secs(24 * 3600),
            nonce_ttl: Duration::from_secs(300),
            auth_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            ack_timeout: Duration::from_secs(5),
            receipt_delay: Duration::from_millis(50),
            max_retries: 3,
            online_within: Duration::from_secs(30),
            away_within: Duration::from_secs(300),
            send_queue: 256,
            send_rate: 50,
            send_burst: 100,
            frame_rate: 200,
            frame_burst: 400,
            typing_interval: Duration::from_secs(1),
            sync_limit: 1000,
            max_group_members: 1000,
            ws_read_buffer: 1024,
            ws_write_buffer: 1024,
            liveness_interval: Duration::from_secs(1),
            members_cache_ttl: Duration::from_secs(5),
            identity: None,
            report_interval: DEFAULT_REPORT_INTERVAL,
            drain_window: Duration::from_secs(10),
            relay: None,
            relay_spool_max: 10_000,
            api_keys: Vec::new(),
            reserved_channels: Vec::new(),
            limits: LimitsConfig::default(),
            cors_origins: Vec::new(),
            static_files: Vec::new(),
        }
    }
}
