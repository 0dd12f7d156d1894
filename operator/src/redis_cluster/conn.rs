//! The connection to one node: its address, one plain (non-cluster) fred
//! client per node, and the commands the bootstrap sends with their errors.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use fred::prelude::{Builder, Client, ClientLike, Config, FromValue, ServerConfig};
use fred::types::CustomCommand;
use futures_util::future::join_all;
use tracing::debug;

use super::layout::SlotRange;
use super::nodes::{View, parse_info, parse_nodes};
use super::{BootstrapError, BootstrapOptions};

/// Slots per `CLUSTER ADDSLOTS` call when `ADDSLOTSRANGE` is not available.
const ADDSLOTS_BATCH: usize = 1000;

/// A node's address: `host:port`, where `host` is a name (in Kubernetes the
/// pod's stable name under the headless Service) or an IP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl NodeAddr {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        NodeAddr {
            host: host.into(),
            port,
        }
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for NodeAddr {
    type Err = BootstrapError;

    /// `host:port` or `[ipv6]:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| BootstrapError::Address {
            addr: s.to_string(),
            reason: reason.to_string(),
        };
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port: u16 = port.parse().map_err(|_| bad("invalid port"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(NodeAddr::new(host, port))
    }
}

/// A given node, connected.
pub(super) struct Live {
    pub(super) ordinal: usize,
    pub(super) addr: NodeAddr,
    pub(super) name: String,
    pub(super) ip: IpAddr,
    pub(super) client: Client,
    pub(super) id: String,
}

fn cmd_text(name: &str, args: &[String]) -> String {
    std::iter::once(name)
        .chain(args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Live {
    pub(super) async fn call<R: FromValue>(
        &self,
        name: &'static str,
        args: &[String],
    ) -> Result<R, BootstrapError> {
        call(&self.client, &self.name, name, args).await
    }

    pub(super) async fn text(
        &self,
        name: &'static str,
        args: &[&str],
    ) -> Result<String, BootstrapError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.call::<String>(name, &args).await
    }

    pub(super) async fn view(&self) -> Result<View, BootstrapError> {
        let nodes = self.text("CLUSTER", &["NODES"]).await?;
        let info = self.text("CLUSTER", &["INFO"]).await?;
        let entries = parse_nodes(&nodes).map_err(|detail| BootstrapError::Reply {
            node: self.name.clone(),
            command: "CLUSTER NODES".into(),
            detail,
        })?;
        let view = View {
            entries,
            info: parse_info(&info),
        };
        if view.myself().is_none_or(|m| m.id != self.id) {
            return Err(BootstrapError::Reply {
                node: self.name.clone(),
                command: "CLUSTER NODES".into(),
                detail: format!("no `myself` line with this node's id {}", self.id),
            });
        }
        Ok(view)
    }

    /// Replication offset (`master_repl_offset` of `INFO replication`).
    pub(super) async fn repl_offset(&self) -> Result<i64, BootstrapError> {
        let info = self.text("INFO", &["replication"]).await?;
        Ok(parse_info(&info)
            .get("master_repl_offset")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }
}

async fn call<R: FromValue>(
    client: &Client,
    node: &str,
    name: &'static str,
    args: &[String],
) -> Result<R, BootstrapError> {
    let cmd = CustomCommand::new_static(name, None, false);
    client
        .custom::<R, String>(cmd, args.to_vec())
        .await
        .map_err(|source| {
            if source
                .details()
                .to_ascii_lowercase()
                .contains("cluster support disabled")
            {
                BootstrapError::ClusterDisabled {
                    node: node.to_string(),
                }
            } else {
                BootstrapError::Command {
                    node: node.to_string(),
                    command: cmd_text(name, args),
                    source,
                }
            }
        })
}

async fn resolve(addr: &NodeAddr) -> Result<IpAddr, BootstrapError> {
    if let Ok(ip) = addr.host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let name = addr.to_string();
    let mut found = tokio::net::lookup_host((addr.host.as_str(), addr.port))
        .await
        .map_err(|source| BootstrapError::Resolve {
            node: name.clone(),
            source,
        })?;
    // IPv4 first: MEET needs one address, and single-stack IPv4 is the
    // common case; dual-stack pods listen on both.
    let ips: Vec<IpAddr> = found.by_ref().map(|sa| sa.ip()).collect();
    ips.iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.first())
        .copied()
        .ok_or_else(|| BootstrapError::Resolve {
            node: name,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        })
}

async fn connect(
    ordinal: usize,
    addr: &NodeAddr,
    opts: &BootstrapOptions,
) -> Result<Live, BootstrapError> {
    let name = addr.to_string();
    let ip = resolve(addr).await?;
    let config = Config {
        server: ServerConfig::new_centralized(addr.host.clone(), addr.port),
        password: opts.password.clone(),
        ..Config::default()
    };
    let mut builder = Builder::from_config(config);
    // No reconnect policy: a node that goes away mid-bootstrap fails the
    // run, which the caller retries as a whole.
    builder.with_connection_config(|c| {
        c.connection_timeout = opts.connect_timeout;
        c.internal_command_timeout = opts.command_timeout;
        c.max_command_attempts = 1;
    });
    builder.with_performance_config(|p| p.default_command_timeout = opts.command_timeout);
    let client = builder
        .build()
        .map_err(|source| BootstrapError::Unreachable {
            node: name.clone(),
            source,
        })?;
    client
        .init()
        .await
        .map_err(|source| BootstrapError::Unreachable {
            node: name.clone(),
            source,
        })?;
    let id = match call::<String>(&client, &name, "CLUSTER", &["MYID".to_string()]).await {
        Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
        Ok(_) => {
            let _ = client.quit().await;
            return Err(BootstrapError::Reply {
                node: name,
                command: "CLUSTER MYID".into(),
                detail: "empty node id".into(),
            });
        }
        Err(e) => {
            let _ = client.quit().await;
            return Err(e);
        }
    };
    debug!(node = %name, %ip, %id, "connected to redis node");
    Ok(Live {
        ordinal,
        addr: addr.clone(),
        name,
        ip,
        client,
        id,
    })
}

/// Connect to all nodes; on any failure close the others and return the
/// first failure in node order.
pub(super) async fn connect_all(
    nodes: &[NodeAddr],
    opts: &BootstrapOptions,
) -> Result<Vec<Live>, BootstrapError> {
    let results = join_all(
        nodes
            .iter()
            .enumerate()
            .map(|(i, addr)| connect(i, addr, opts)),
    )
    .await;
    let mut live = Vec::with_capacity(results.len());
    let mut first_err = None;
    for r in results {
        match r {
            Ok(l) => live.push(l),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        close_all(&live).await;
        return Err(e);
    }
    // Two addresses reaching the same node (e.g. a name and its IP).
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for l in &live {
        if let Some(other) = seen.insert(&l.id, &l.name) {
            let err = BootstrapError::Layout(format!(
                "{} and {other} are the same Redis node ({})",
                l.name, l.id
            ));
            close_all(&live).await;
            return Err(err);
        }
    }
    Ok(live)
}

pub(super) async fn close_all(live: &[Live]) {
    join_all(live.iter().map(|l| l.client.quit())).await;
}

pub(super) fn check_distinct(nodes: &[NodeAddr]) -> Result<(), BootstrapError> {
    let mut seen = HashSet::new();
    for n in nodes {
        let key = (n.host.to_ascii_lowercase(), n.port);
        if !seen.insert(key) {
            return Err(BootstrapError::DuplicateNode {
                node: n.to_string(),
            });
        }
    }
    Ok(())
}

/// `CLUSTER ADDSLOTSRANGE` (Redis 7), or `CLUSTER ADDSLOTS` in batches when
/// the server does not know it.
pub(super) async fn add_slots(l: &Live, ranges: &[SlotRange]) -> Result<(), BootstrapError> {
    let mut args = vec!["ADDSLOTSRANGE".to_string()];
    for r in ranges {
        args.push(r.first.to_string());
        args.push(r.last.to_string());
    }
    match l.call::<()>("CLUSTER", &args).await {
        Ok(()) => return Ok(()),
        Err(BootstrapError::Command { source, .. })
            if source
                .details()
                .to_ascii_lowercase()
                .contains("unknown subcommand") =>
        {
            debug!(node = %l.name, "no CLUSTER ADDSLOTSRANGE; using ADDSLOTS");
        }
        Err(e) => return Err(e),
    }
    let slots: Vec<u16> = ranges.iter().flat_map(|r| r.first..=r.last).collect();
    for batch in slots.chunks(ADDSLOTS_BATCH) {
        let mut args = vec!["ADDSLOTS".to_string()];
        args.extend(batch.iter().map(u16::to_string));
        l.call::<()>("CLUSTER", &args).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let a: NodeAddr = "redis-0.redis.ns.svc:6379".parse().expect("addr");
        assert_eq!(a, NodeAddr::new("redis-0.redis.ns.svc", 6379));
        let b: NodeAddr = "[::1]:7000".parse().expect("v6");
        assert_eq!(b.host, "::1");
        assert_eq!(b.to_string(), "[::1]:7000");
        for bad in ["nohost", ":6379", "h:0", "h:x", "h:70000"] {
            assert!(bad.parse::<NodeAddr>().is_err(), "{bad}");
        }
    }
}
