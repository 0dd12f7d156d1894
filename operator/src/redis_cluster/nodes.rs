//! What one node says about the cluster: the `CLUSTER NODES` and `CLUSTER
//! INFO` parsers and the [`View`] the bootstrap steps read. Pure.

use std::collections::{HashMap, HashSet};

use super::layout::{SLOTS, SlotRange};

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) id: String,
    /// Empty when unknown (`noaddr`, or a node that never learnt its IP).
    pub(super) ip: String,
    pub(super) port: u16,
    pub(super) cport: u16,
    pub(super) hostname: Option<String>,
    pub(super) myself: bool,
    pub(super) master: bool,
    pub(super) pfail: bool,
    pub(super) fail: bool,
    pub(super) handshake: bool,
    pub(super) noaddr: bool,
    /// The primary's id for a replica.
    pub(super) primary: Option<String>,
    pub(super) slots: Vec<SlotRange>,
}

impl Entry {
    pub(super) fn failing(&self) -> bool {
        self.pfail || self.fail || self.noaddr || self.handshake
    }

    pub(super) fn slot_count(&self) -> u32 {
        self.slots.iter().map(SlotRange::len).sum()
    }

    pub(super) fn flags_text(&self) -> String {
        let mut f = vec![if self.master { "master" } else { "replica" }];
        for (on, name) in [
            (self.pfail, "pfail"),
            (self.fail, "fail"),
            (self.handshake, "handshake"),
            (self.noaddr, "noaddr"),
        ] {
            if on {
                f.push(name);
            }
        }
        f.join(",")
    }
}

/// Parse `CLUSTER NODES`:
/// `<id> <ip:port@cport[,hostname[,aux=v…]]> <flags> <master> <ping> <pong> <epoch> <link> <slot>…`.
pub(super) fn parse_nodes(text: &str) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(format!("short CLUSTER NODES line {line:?}"));
        }
        let mut addr_parts = fields[1].split(',');
        let addr = addr_parts.next().unwrap_or_default();
        let hostname = addr_parts
            .next()
            .filter(|h| !h.is_empty() && !h.contains('='))
            .map(str::to_string);
        let (ip_port, cport) = match addr.split_once('@') {
            Some((a, c)) => (a, c.parse().unwrap_or(0)),
            None => (addr, 0),
        };
        let (ip, port) = ip_port
            .rsplit_once(':')
            .ok_or_else(|| format!("bad address {:?} in {line:?}", fields[1]))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("bad port in {:?}", fields[1]))?;
        let flags: HashSet<&str> = fields[2].split(',').collect();
        let primary = Some(fields[3])
            .filter(|m| *m != "-" && !m.is_empty())
            .map(str::to_string);
        let mut slots = Vec::new();
        for s in &fields[8..] {
            if s.starts_with('[') {
                continue; // a migrating/importing slot, not an owned one
            }
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            let a: u16 = a.parse().map_err(|_| format!("bad slot {s:?}"))?;
            let b: u16 = b.parse().map_err(|_| format!("bad slot {s:?}"))?;
            if a > b || b >= SLOTS {
                return Err(format!("bad slot range {s:?}"));
            }
            slots.push(SlotRange::new(a, b));
        }
        out.push(Entry {
            id: fields[0].to_string(),
            ip: ip.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
            cport,
            hostname,
            myself: flags.contains("myself"),
            master: flags.contains("master"),
            pfail: flags.contains("fail?"),
            fail: flags.contains("fail"),
            handshake: flags.contains("handshake"),
            noaddr: flags.contains("noaddr"),
            primary,
            slots,
        });
    }
    Ok(out)
}

/// Parse `CLUSTER INFO` (`key:value` lines).
pub(super) fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One node's view of the cluster.
#[derive(Debug, Clone)]
pub(super) struct View {
    pub(super) entries: Vec<Entry>,
    pub(super) info: HashMap<String, String>,
}

impl View {
    pub(super) fn myself(&self) -> Option<&Entry> {
        self.entries.iter().find(|e| e.myself)
    }

    pub(super) fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// Knows `id` past the handshake, with an address.
    pub(super) fn knows(&self, id: &str) -> bool {
        self.get(id).is_some_and(|e| !e.handshake && !e.noaddr)
    }

    /// Owner id of every slot.
    pub(super) fn owners(&self) -> Vec<Option<&str>> {
        let mut owners = vec![None; usize::from(SLOTS)];
        for e in &self.entries {
            for r in &e.slots {
                for s in r.first..=r.last {
                    owners[usize::from(s)] = Some(e.id.as_str());
                }
            }
        }
        owners
    }

    pub(super) fn info_u32(&self, key: &str) -> u32 {
        self.info
            .get(key)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    pub(super) fn state_ok(&self) -> bool {
        self.info.get("cluster_state").map(|s| s.trim()) == Some("ok")
    }

    /// Known nodes past the handshake, and slots assigned: how "formed"
    /// this view is.
    pub(super) fn weight(&self) -> (u32, usize) {
        let known = self
            .entries
            .iter()
            .filter(|e| !e.handshake && !e.noaddr)
            .count();
        (self.entries.iter().map(Entry::slot_count).sum(), known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn parses_cluster_nodes() {
        let text = "\
b05a 127.0.0.1:17001@18001 myself,master - 0 1796221935000 2 connected 5461-10922
5f85 127.0.0.1:17005@18005 slave b05a 0 1796221935139 2 connected
049a :0@0 master,noaddr - 1796221934132 1796221933127 1 disconnected 0-5460
d6d9 10.0.0.7:6379@16379,redis-2.redis.ns.svc.cluster.local,shard-id=ab master,fail - 0 0 3 connected 10923 10924-16383 [10923->-abcd]
aaaa 10.0.0.8:6379@16379,,shard-id=ab slave,fail? d6d9 0 0 3 connected
";
        let e = parse_nodes(text).expect("parse");
        assert_eq!(e.len(), 5);
        assert!(e[0].myself && e[0].master && e[0].primary.is_none());
        assert_eq!(e[0].slots, vec![SlotRange::new(5461, 10922)]);
        assert_eq!(
            (e[0].ip.as_str(), e[0].port, e[0].cport),
            ("127.0.0.1", 17001, 18001)
        );
        assert_eq!(e[1].primary.as_deref(), Some("b05a"));
        assert!(!e[1].master);
        assert!(e[2].noaddr && e[2].ip.is_empty() && e[2].port == 0);
        assert_eq!(
            e[3].hostname.as_deref(),
            Some("redis-2.redis.ns.svc.cluster.local")
        );
        assert!(e[3].fail && !e[3].pfail);
        assert_eq!(e[3].slot_count(), 16384 - 10923);
        assert!(e[4].pfail && !e[4].fail && e[4].hostname.is_none());
        assert!(parse_nodes("abc 127.0.0.1:1@2 master").is_err());
        assert!(parse_nodes("a 1.2.3.4:1@2 master - 0 0 1 connected 10-5").is_err());
    }

    #[test]
    pub(super) fn parses_cluster_info() {
        let info = parse_info("cluster_state:ok\r\ncluster_slots_assigned:16384\r\n");
        assert_eq!(info.get("cluster_state").map(String::as_str), Some("ok"));
        let v = View {
            entries: vec![],
            info,
        };
        assert!(v.state_ok());
        assert_eq!(v.info_u32("cluster_slots_assigned"), 16384);
        assert_eq!(v.info_u32("missing"), 0);
    }
}
