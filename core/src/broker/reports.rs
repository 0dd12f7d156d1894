//! Connection reports: each gateway pod of a `ChatCluster` writes its live
//! connection count to the broker every few seconds, with a TTL, and the
//! operator's autoscaler reads all reports of one cluster at once.
//!
//! On Redis every report of one cluster lives in ONE hash,
//! `sb:conns:{<namespace>/<cluster>}`: field = pod name, value =
//! `<connections>:<reported_at_ms>:<expires_at_ms>` (Unix ms, Redis's clock).
//! Redis before 7.4 has no per-field expiry, so the expiry is part of the
//! value: readers skip expired fields, writers delete them, and the hash itself
//! carries a `PEXPIRE` of the longest TTL written, so a cluster whose gateways
//! all died leaves nothing behind. One key per cluster means one slot (the hash
//! tag is the whole key name), so reading every pod's report is a single
//! script call on a standalone server and on a Redis Cluster alike: O(pods),
//! one round trip.

use std::fmt;
use std::time::Duration;

/// Why a cluster or pod name cannot be used in a report key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {MAX_NAME} characters")]
    TooLong { what: &'static str },
    #[error("{what} {value:?} may only contain letters, digits, '.', '_' and '-'")]
    Invalid { what: &'static str, value: String },
}

/// Longest accepted name: a Kubernetes DNS subdomain.
pub const MAX_NAME: usize = 253;

fn check(what: &'static str, value: &str) -> Result<(), IdentityError> {
    if value.is_empty() {
        return Err(IdentityError::Empty { what });
    }
    if value.len() > MAX_NAME {
        return Err(IdentityError::TooLong { what });
    }
    // Kubernetes names are narrower still; this keeps `/`, `{`, `}` and `:`
    // (the key's and the value's separators) out of hand-set names.
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(IdentityError::Invalid {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// A `ChatCluster`: its namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterRef {
    namespace: String,
    name: String,
}

impl ClusterRef {
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Result<Self, IdentityError> {
        let (namespace, name) = (namespace.into(), name.into());
        check("namespace", &namespace)?;
        check("cluster name", &name)?;
        Ok(ClusterRef { namespace, name })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Redis hash holding every report of this cluster.
    pub fn redis_key(&self) -> String {
        format!("sb:conns:{{{}/{}}}", self.namespace, self.name)
    }
}

impl fmt::Display for ClusterRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Who a gateway is for connection reports: one pod of one `ChatCluster`.
/// In Kubernetes it comes from `POD_NAMESPACE`, `SWITCHBOARD_CLUSTER` and
/// `POD_NAME` (the downward API); a gateway started by hand with those
/// variables set reports as that pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GatewayIdentity {
    cluster: ClusterRef,
    pod: String,
}

impl GatewayIdentity {
    pub fn new(cluster: ClusterRef, pod: impl Into<String>) -> Result<Self, IdentityError> {
        let pod = pod.into();
        check("pod name", &pod)?;
        Ok(GatewayIdentity { cluster, pod })
    }

    pub fn cluster(&self) -> &ClusterRef {
        &self.cluster
    }

    pub fn pod(&self) -> &str {
        &self.pod
    }
}

impl fmt::Display for GatewayIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.cluster, self.pod)
    }
}

/// One pod's last report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionReport {
    pub pod: String,
    /// Authenticated WebSocket connections open on the pod.
    pub connections: u64,
    /// When it was written, Unix ms on the broker's clock (Redis `TIME`).
    pub reported_at: u64,
}

/// Every unexpired report of one cluster, and the broker's clock when they
/// were read: compare `reported_at` with `now` (same clock) to judge
/// staleness, so clock skew between operator and Redis does not matter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionReports {
    /// Unix ms, broker clock.
    pub now: u64,
    /// Sorted by pod name.
    pub reports: Vec<ConnectionReport>,
}

impl ConnectionReports {
    /// Sum of all reported connections.
    pub fn total(&self) -> u64 {
        self.reports.iter().map(|r| r.connections).sum()
    }
}

/// Write one report (see the script's header).
pub(crate) const REPORT_LUA: &str = include_str!("lua/report.lua");

/// Read every report of a cluster (see the script's header).
pub(crate) const READ_LUA: &str = include_str!("lua/read_reports.lua");

/// Parse a stored value `<connections>:<reported_at>:<expires_at>` into
/// `(connections, reported_at, expires_at)`.
pub(crate) fn parse_value(v: &str) -> Option<(u64, u64, u64)> {
    let mut parts = v.splitn(3, ':');
    let c = parts.next()?.parse().ok()?;
    let at = parts.next()?.parse().ok()?;
    let exp = parts.next()?.parse().ok()?;
    Some((c, at, exp))
}

/// Reads the connection reports of clusters from one Redis (standalone or
/// Redis Cluster), and nothing else: what the operator's autoscaler needs,
/// without a broker's scripts and connection pool. It runs the same read
/// script and value parser as the broker, so the wire format stays defined
/// in this module.
pub struct ReportsReader {
    client: fred::clients::Client,
    script: fred::types::scripts::Script,
}

impl ReportsReader {
    /// A reader of the Redis at `url` (`redis://…` or
    /// `redis-cluster://…?node=…`, as [`super::RedisBroker::connect`]
    /// takes). Nothing connects until [`connect`](Self::connect), so the
    /// caller can keep the reader (and [`quit`](Self::quit) it) even if
    /// connecting is cut short.
    pub fn new(url: &str) -> Result<Self, super::BrokerError> {
        Self::for_target(&super::RedisTarget::from(url))
    }

    /// [`new`](Self::new) for a URL and a password given apart.
    pub fn for_target(target: &super::RedisTarget) -> Result<Self, super::BrokerError> {
        use fred::prelude::{Builder, ReconnectPolicy};
        let config = target.config()?;
        let mut builder = Builder::from_config(config);
        // Reconnect after a Redis restart (a reader lives as long as its
        // cluster), but fail a read after the timeout instead of queueing:
        // the caller reads periodically and treats a failure as "Redis
        // unavailable" for that round.
        builder.set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
        builder.with_performance_config(|p| p.default_command_timeout = Duration::from_secs(5));
        builder.with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
            c.max_command_attempts = 2;
        });
        let client = builder.build().map_err(unavailable)?;
        Ok(ReportsReader {
            client,
            script: fred::types::scripts::Script::from_lua(READ_LUA),
        })
    }

    /// Connects; fails if the first connection fails.
    pub async fn connect(&self) -> Result<(), super::BrokerError> {
        use fred::prelude::ClientLike;
        self.client.init().await.map_err(unavailable)?;
        Ok(())
    }

    /// Every unexpired report of `cluster`, sorted by pod, and the Redis
    /// clock. A value this module cannot parse (a foreign writer) is
    /// skipped rather than failing the whole cluster.
    pub async fn read(
        &self,
        cluster: &ClusterRef,
    ) -> Result<ConnectionReports, super::BrokerError> {
        let reply: Vec<fred::types::Value> = self
            .script
            .evalsha_with_reload(
                &self.client,
                vec![cluster.redis_key()],
                Vec::<String>::new(),
            )
            .await
            .map_err(unavailable)?;
        from_reply(cluster, &reply)
    }

    /// Closes the connection and stops reconnecting (a dropped client
    /// would keep reconnecting in the background).
    pub async fn quit(&self) {
        use fred::prelude::ClientLike;
        let _ = self.client.quit().await;
    }
}

fn unavailable(e: fred::error::Error) -> super::BrokerError {
    super::BrokerError::Unavailable(e.to_string())
}

/// The reports in a [`READ_LUA`] reply: `{now, pod, value, pod, value, ...}`
/// (the reader's and the broker's; a value a foreign writer left is skipped).
pub(crate) fn from_reply(
    cluster: &ClusterRef,
    reply: &[fred::types::Value],
) -> Result<ConnectionReports, super::BrokerError> {
    let corrupt = |what: String| super::BrokerError::Corrupt(what);
    let now = reply
        .first()
        .and_then(fred::types::Value::as_u64)
        .ok_or_else(|| corrupt(format!("expected the Redis time, got {:?}", reply.first())))?;
    let mut reports = Vec::with_capacity(reply.len() / 2);
    for pair in reply.get(1..).unwrap_or_default().chunks(2) {
        let [pod, value] = pair else {
            return Err(corrupt("odd connection report reply".into()));
        };
        let (Some(pod), Some(value)) = (pod.as_str(), value.as_str()) else {
            return Err(corrupt("connection report is not text".into()));
        };
        let Some((connections, reported_at, _)) = parse_value(&value) else {
            tracing::warn!(%cluster, %pod, %value, "unreadable connection report");
            continue;
        };
        reports.push(ConnectionReport {
            pod: pod.into_owned(),
            connections,
            reported_at,
        });
    }
    reports.sort_by(|a, b| a.pod.cmp(&b.pod));
    Ok(ConnectionReports { now, reports })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_tag_per_cluster() {
        let c = ClusterRef::new("chat", "prod").unwrap();
        assert_eq!(c.redis_key(), "sb:conns:{chat/prod}");
        let id = GatewayIdentity::new(c.clone(), "prod-gateway-7d9f-abcde").unwrap();
        assert_eq!(id.to_string(), "chat/prod/prod-gateway-7d9f-abcde");
        assert_eq!(id.cluster(), &c);
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(
            ClusterRef::new("", "x").unwrap_err(),
            IdentityError::Empty { what: "namespace" }
        );
        for bad in ["a/b", "a{b", "a}b", "a:b", "a b", "ü"] {
            assert!(ClusterRef::new("ns", bad).is_err(), "{bad}");
            let c = ClusterRef::new("ns", "c").unwrap();
            assert!(GatewayIdentity::new(c, bad).is_err(), "{bad}");
        }
        assert!(ClusterRef::new("ns", "x".repeat(MAX_NAME + 1)).is_err());
        assert!(ClusterRef::new("ns", "x".repeat(MAX_NAME)).is_ok());
        assert!(ClusterRef::new("my-ns", "Chat_1.prod").is_ok());
    }

    #[test]
    fn values_parse() {
        assert_eq!(parse_value("12:1000:4000"), Some((12, 1000, 4000)));
        assert_eq!(parse_value("12:1000"), None);
        assert_eq!(parse_value("x:1:2"), None);
        assert_eq!(parse_value("1:2:3:4"), None);
    }

    #[test]
    fn replies_parse() {
        use fred::types::Value;
        let c = ClusterRef::new("chat", "prod").unwrap();
        let text = |s: &str| Value::String(s.into());
        let got = from_reply(
            &c,
            &[
                Value::Integer(5000),
                text("gw-b"),
                text("7:4000:9000"),
                text("gw-x"),
                text("garbage"),
                text("gw-a"),
                text("3:4500:9500"),
            ],
        )
        .unwrap();
        assert_eq!(got.now, 5000);
        let pods: Vec<_> = got.reports.iter().map(|r| r.pod.as_str()).collect();
        assert_eq!(pods, ["gw-a", "gw-b"]);
        assert_eq!(got.total(), 10);
        assert!(from_reply(&c, &[]).is_err());
        assert!(from_reply(&c, &[Value::Integer(1), text("gw-a")]).is_err());
    }

    /// The reader reads what the broker writes, on a real server.
    #[tokio::test]
    async fn reader_reads_what_the_broker_writes() {
        use crate::broker::{Broker, BrokerConfig, RedisBroker};
        let server = switchboard_testkit::RedisServer::start().unwrap();
        let broker = RedisBroker::connect(&server.url(), BrokerConfig::default())
            .await
            .unwrap();
        let chat = ClusterRef::new("apps", "chat").unwrap();
        for (pod, n) in [("gw-b", 5), ("gw-a", 3)] {
            let id = GatewayIdentity::new(chat.clone(), pod).unwrap();
            broker
                .report_connections(&id, n, Duration::from_secs(60))
                .await
                .unwrap();
        }
        let reader = ReportsReader::new(&server.url()).unwrap();
        reader.connect().await.unwrap();
        let got = reader.read(&chat).await.unwrap();
        assert_eq!(
            got.reports,
            broker.connection_reports(&chat).await.unwrap().reports
        );
        assert_eq!(got.total(), 8);
        let none = ClusterRef::new("apps", "other").unwrap();
        assert!(reader.read(&none).await.unwrap().reports.is_empty());
        reader.quit().await;
        broker.quit().await;
    }
}
