//! What a node shares with the machine, and how the machine gets it back.
//!
//! One node per machine at a time: kube-proxy's iptables chains, the CNI
//! result cache and the pods' subnet are machine-wide. The running node is
//! recorded in [`LOCK_FILE`]: its pid, the start time of that process (so
//! a reused pid does not look alive), then the arguments of its clean-up
//! ([`TEARDOWN`]), one per line.
//!
//! The clean-up normally runs from a process that waits on the one that
//! started the node (`Reaper`). When both are killed at once (a CI
//! runner's timeout, an ended session, `kill -9` of a process tree),
//! nothing runs it: the bridge keeps the pod subnet's address and route,
//! netns and rootfs mounts, cgroups and iptables chains stay, and the next
//! node's pods are unreachable from the host, so no readiness probe ever
//! passes. The next node to start therefore reads the record of a dead
//! owner and runs its clean-up first; an address in the pod subnet that no
//! record explains is a clear error, not pods that never turn Ready.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::POD_SUBNET;
use crate::{TestkitError, io};

/// Marks the machine's one running node (see the module doc).
pub(super) const LOCK_FILE: &str = "/run/switchboard-node.pid";

/// The clean-up, run by `sh` when its stdin closes (drop, or death of the
/// process that started the node), or by [`take`] for a node that died
/// with its clean-up process. Every step is idempotent. $1 dir, $2 cgroup root name, $3 bridge,
/// $4 kube-proxy binary, $5 CNI network name, then `path=value` sysctls to
/// restore.
pub(super) const TEARDOWN: &str = r#"
trap '' INT TERM HUP
dir=$1 cg=$2 bridge=$3 proxy=$4 net=$5
shift 5
groups=
while read -r pg; do groups="$groups $pg"; done
for pg in $groups; do kill -s KILL -- "-$pg" 2>/dev/null; done
# containerd's shims left its process group (setsid); their command line
# names the node's containerd socket.
for f in /proc/[0-9]*/cmdline; do
  pid=${f#/proc/}; pid=${pid%/cmdline}
  [ "$pid" = "$$" ] && continue
  if tr '\0' ' ' <"$f" 2>/dev/null | grep -q -- "-address $dir/"; then kill -s KILL "$pid" 2>/dev/null; fi
done
# Every container process lives in a cgroup under the node's cgroup root.
i=0
while [ "$i" -lt 50 ]; do
  pids=$(cat /sys/fs/cgroup/*/"$cg"/cgroup.procs /sys/fs/cgroup/*/"$cg"/*/cgroup.procs \
    $(find /sys/fs/cgroup/*/"$cg" -name cgroup.procs 2>/dev/null) 2>/dev/null | sort -u)
  [ -z "$pids" ] && break
  for pid in $pids; do kill -s KILL "$pid" 2>/dev/null; done
  sleep 0.1; i=$((i + 1))
done
# Mounts under the node's dir (netns, volumes, container root filesystems),
# deepest first.
awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
  while read -r m; do umount -l "$m" 2>/dev/null; done
for c in /sys/fs/cgroup/*/"$cg"; do
  [ -d "$c" ] || continue
  i=0
  while [ -d "$c" ] && [ "$i" -lt 50 ]; do
    find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || sleep 0.1
    i=$((i + 1))
  done
done
# Shim sockets and runc state containerd keeps outside its own state dir
# (/run/containerd/s/<sha256 of address/namespace/id>), and the CNI result
# cache (/var/lib/cni/results) of the node's network and its sandboxes.
tasks="$dir/containerd/state/io.containerd.runtime.v2.task"
for t in "$tasks"/*/*; do
  [ -d "$t" ] || continue
  ns=${t%/*}; ns=${ns##*/}; id=${t##*/}
  h=$(printf '%s' "$dir/containerd.sock/$ns/$id" | sha256sum | cut -d' ' -f1)
  rm -f "/run/containerd/s/$h"
done
for r in /var/lib/cni/results/"$net"-*; do
  [ -e "$r" ] || continue
  id=${r#/var/lib/cni/results/"$net"-}; id=${id%-*}
  rm -f "$r" "/var/lib/cni/results/cni-loopback-$id-lo"
done
rmdir /run/containerd/s /run/containerd /var/lib/cni/results /var/lib/cni 2>/dev/null
ip link del "$bridge" 2>/dev/null
"$proxy" --cleanup >/dev/null 2>&1
# kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY,
# KUBE-IPTABLES-HINT) and what is left of kube-proxy's: the jumps to them
# from built-in chains, then the chains (one node per machine: all KUBE-*).
for ipt in iptables ip6tables; do
  command -v "$ipt" >/dev/null 2>&1 || continue
  for t in filter nat mangle; do
    "$ipt-save" -t "$t" 2>/dev/null | grep -E '^-A [A-Z]+ -j KUBE-[A-Z0-9-]+$' |
      while read -r _ chain _ target; do "$ipt" -w -t "$t" -D "$chain" -j "$target"; done
    for c in $("$ipt-save" -t "$t" 2>/dev/null | sed -n 's/^:\(KUBE-[A-Z0-9-]*\) .*/\1/p'); do
      "$ipt" -w -t "$t" -F "$c" 2>/dev/null
    done
    for c in $("$ipt-save" -t "$t" 2>/dev/null | sed -n 's/^:\(KUBE-[A-Z0-9-]*\) .*/\1/p'); do
      "$ipt" -w -t "$t" -X "$c" 2>/dev/null
    done
  done
done
for s in "$@"; do echo "${s#*=}" >"/proc/sys/${s%%=*}" 2>/dev/null; done
i=0
while [ -e "$dir" ] && [ "$i" -lt 50 ]; do rm -rf -- "$dir" 2>/dev/null || sleep 0.1; i=$((i + 1)); done
# The record, unless a later node has already taken the machine.
if [ "$(sed -n 2p /run/switchboard-node.pid 2>/dev/null)" = "$dir" ]; then
  rm -f /run/switchboard-node.pid
fi
"#;

/// `$0` of [`TEARDOWN`]'s `sh`: how a running clean-up is found.
pub(super) const TEARDOWN_NAME: &str = "switchboard-node-teardown";

/// The recorded owner of the machine's node.
#[derive(Debug, PartialEq)]
struct Record {
    pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot); `None` in
    /// a record from before it was kept.
    started: Option<u64>,
    teardown_args: Vec<String>,
}

impl Record {
    fn parse(text: &str) -> Option<Record> {
        let mut lines = text.lines();
        let mut first = lines.next()?.split_whitespace();
        let pid = first.next()?.parse().ok()?;
        let started = first.next().and_then(|s| s.parse().ok());
        Some(Record {
            pid,
            started,
            teardown_args: lines.map(str::to_string).collect(),
        })
    }

    fn render(&self) -> String {
        let mut out = match self.started {
            Some(t) => format!("{} {t}\n", self.pid),
            None => format!("{}\n", self.pid),
        };
        for a in &self.teardown_args {
            out.push_str(a);
            out.push('\n');
        }
        out
    }

    fn owner_alive(&self) -> bool {
        match (process_started(self.pid), self.started) {
            (None, _) => false,
            (Some(now), Some(then)) => now == then,
            (Some(_), None) => true,
        }
    }
}

/// When process `pid` started (field 22 of its stat), or `None` when there
/// is no such process or only its zombie (dead, not yet reaped).
fn process_started(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Run the clean-up of a node whose process died with its clean-up
/// process, if [`LOCK_FILE`] records one; an error while another live
/// process runs a node. [`Node::start`](super::Node::start) does this
/// first; a test comparing the machine before and after a node does it
/// before its "before".
pub fn reclaim_dead_node() -> Result<(), TestkitError> {
    let me = std::process::id();
    let previous = fs::read_to_string(LOCK_FILE)
        .ok()
        .and_then(|t| Record::parse(&t));
    if let Some(prev) = previous.filter(|p| p.pid != me) {
        if prev.owner_alive() {
            return Err(TestkitError::Other(format!(
                "another local node runs on this machine (pid {}, {LOCK_FILE}); one at a time",
                prev.pid
            )));
        }
        if !prev.teardown_args.is_empty() {
            reclaim(&prev)?;
        }
    }
    Ok(())
}

/// Take the machine for a node of this process: [`reclaim_dead_node`],
/// then refuse a pod subnet some other interface holds. [`record`]
/// follows.
pub(super) fn take() -> Result<(), TestkitError> {
    reclaim_dead_node()?;
    match pod_subnet_holder()? {
        Some(holder) => Err(TestkitError::Other(format!(
            "{holder} is in the pods' subnet {POD_SUBNET}, so the host could not reach \
             this node's pods; no running node owns it (a bridge `sbbr…` is left from a \
             node killed before {LOCK_FILE} recorded its clean-up: `ip link del` it)"
        ))),
        None => Ok(()),
    }
}

/// Record this process's node, whose clean-up takes `teardown_args`,
/// before it changes anything on the machine.
pub(super) fn record(teardown_args: &[String]) -> Result<(), TestkitError> {
    if let Some(bad) = teardown_args.iter().find(|a| a.contains('\n')) {
        return Err(TestkitError::Other(format!(
            "a node clean-up argument holds a newline: {bad:?}"
        )));
    }
    let me = std::process::id();
    let record = Record {
        pid: me,
        started: process_started(me),
        teardown_args: teardown_args.to_vec(),
    };
    // Written whole, then renamed: a kill mid-write leaves the old record.
    let tmp = format!("{LOCK_FILE}.{me}");
    fs::write(&tmp, record.render()).map_err(io(format!("write {tmp}")))?;
    fs::rename(&tmp, LOCK_FILE).map_err(io(format!("rename {tmp} to {LOCK_FILE}")))
}

/// Run the clean-up of the dead node `prev` recorded, and check its bridge
/// went with it.
fn reclaim(prev: &Record) -> Result<(), TestkitError> {
    let args = &prev.teardown_args;
    let dir = args.first().map(String::as_str).unwrap_or_default();
    // The node's own clean-up process may still be at work: its starter
    // died without dropping the node (an abort), and the clean-up runs on
    // after it. Let it finish rather than run a second one beside it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while teardown_running(dir) && Instant::now() < deadline {
        sleep(Duration::from_millis(100));
    }
    let current = fs::read_to_string(LOCK_FILE)
        .ok()
        .and_then(|t| Record::parse(&t));
    if current.as_ref() != Some(prev) {
        return Ok(()); // it finished, and removed the record
    }
    eprintln!(
        "switchboard-testkit: the local node of pid {} died without its clean-up; running it now ({dir})",
        prev.pid
    );
    let status = Command::new("sh")
        .arg("-c")
        .arg(TEARDOWN)
        .arg(TEARDOWN_NAME)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(io("run the clean-up of a dead node (sh)"))?;
    let bridge = args.get(2).map(String::as_str).unwrap_or_default();
    if !status.success()
        || (!bridge.is_empty() && Path::new("/sys/class/net").join(bridge).exists())
    {
        return Err(TestkitError::Other(format!(
            "the clean-up of the dead node of pid {} ({status}) left its bridge {bridge}",
            prev.pid
        )));
    }
    Ok(())
}

/// Whether a [`TEARDOWN`] of the node in `dir` runs (`sh -c SCRIPT
/// TEARDOWN_NAME DIR ...`).
fn teardown_running(dir: &str) -> bool {
    let needle = format!("\0{TEARDOWN_NAME}\0{dir}\0");
    let needle = needle.as_bytes();
    let Ok(procs) = fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|e| {
        fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
    })
}

/// The interface and address (`ifname (a.b.c.d/n)`) holding an address
/// in [`POD_SUBNET`], if any.
fn pod_subnet_holder() -> Result<Option<String>, TestkitError> {
    let out = Command::new("ip")
        .args(["-j", "-4", "addr", "show"])
        .output()
        .map_err(io("run ip addr show"))?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| TestkitError::Other(format!("ip -j addr show: unexpected output ({e})")))?;
    let (net, len) = parse_subnet(POD_SUBNET)
        .ok_or_else(|| TestkitError::Other(format!("bad pod subnet {POD_SUBNET}")))?;
    for link in links.as_array().into_iter().flatten() {
        let name = link.get("ifname").and_then(|n| n.as_str()).unwrap_or("?");
        let addrs = link.get("addr_info").and_then(|a| a.as_array());
        for a in addrs.into_iter().flatten() {
            let local = a.get("local").and_then(|l| l.as_str());
            let prefix = a.get("prefixlen").and_then(|p| p.as_u64()).unwrap_or(32);
            if let Some(ip) = local.and_then(|l| l.parse::<Ipv4Addr>().ok())
                && in_subnet(ip, net, len)
            {
                return Ok(Some(format!("{name} ({ip}/{prefix})")));
            }
        }
    }
    Ok(None)
}

fn parse_subnet(s: &str) -> Option<(Ipv4Addr, u32)> {
    let (addr, len) = s.split_once('/')?;
    let len: u32 = len.parse().ok()?;
    (len <= 32).then_some(())?;
    Some((addr.parse().ok()?, len))
}

fn in_subnet(ip: Ipv4Addr, net: Ipv4Addr, len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// What a node leaves on the machine outside its temp dir if its clean-up
/// does not run: iptables chains (kubelet's and kube-proxy's) and CNI
/// chains, containerd shim sockets, CNI result files, bridges, cgroup
/// roots and mounts of nodes. Sorted, for comparing before and after.
pub fn host_state() -> Vec<String> {
    let mut state = vec![];
    for save in ["iptables-save", "ip6tables-save"] {
        if let Ok(out) = Command::new(save).output() {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            state.extend(
                text.lines()
                    .filter(|l| l.contains("KUBE-") || l.contains("CNI-"))
                    .map(|l| format!("{save}: {l}")),
            );
        }
    }
    for dir in ["/run/containerd/s", "/var/lib/cni/results"] {
        if let Ok(entries) = fs::read_dir(dir) {
            state.extend(entries.flatten().map(|e| e.path().display().to_string()));
        }
    }
    if let Ok(links) = fs::read_dir("/sys/class/net") {
        state.extend(
            links
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("sbbr"))
                .map(|n| format!("bridge {n}")),
        );
    }
    if let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            let Ok(entries) = fs::read_dir(h.path()) else {
                continue;
            };
            state.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("switchboard-"))
                    .map(|e| format!("cgroup {}", e.path().display())),
            );
        }
    }
    if let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") {
        state.extend(
            mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| m.contains("/sb-node-"))
                .map(|m| format!("mount {m}")),
        );
    }
    state.sort();
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_an_old_one_is_a_bare_pid() {
        let r = Record {
            pid: 42,
            started: Some(1234),
            teardown_args: vec!["/tmp/sb-node-x".into(), "switchboard-1".into()],
        };
        assert_eq!(Record::parse(&r.render()), Some(r));
        let old = Record::parse("77\n").unwrap();
        assert_eq!(
            (old.pid, old.started, old.teardown_args.len()),
            (77, None, 0)
        );
        assert_eq!(Record::parse(""), None);
        assert_eq!(Record::parse("not-a-pid 1\n"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let me = std::process::id();
        let started = process_started(me);
        assert!(started.is_some());
        let alive = Record {
            pid: me,
            started,
            teardown_args: vec![],
        };
        assert!(alive.owner_alive());
        let reused = Record {
            pid: me,
            started: started.map(|t| t + 1),
            teardown_args: vec![],
        };
        assert!(!reused.owner_alive());
        let gone = Record {
            pid: u32::MAX,
            started: None,
            teardown_args: vec![],
        };
        assert!(!gone.owner_alive());
    }

    #[test]
    fn the_pod_subnet_test() {
        let (net, len) = parse_subnet(POD_SUBNET).unwrap();
        assert!(in_subnet(Ipv4Addr::new(10, 244, 0, 1), net, len));
        assert!(in_subnet(Ipv4Addr::new(10, 244, 0, 255), net, len));
        assert!(!in_subnet(Ipv4Addr::new(10, 244, 1, 1), net, len));
        assert!(!in_subnet(Ipv4Addr::new(192, 0, 2, 2), net, len));
        assert_eq!(parse_subnet("10.0.0.0/33"), None);
        assert!(in_subnet(
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::UNSPECIFIED,
            0
        ));
    }

    #[test]
    fn the_clean_up_removes_the_lock_file_it_names() {
        assert!(TEARDOWN.contains(&format!("sed -n 2p {LOCK_FILE} ")));
        assert!(TEARDOWN.contains(&format!("rm -f {LOCK_FILE}\n")));
    }

    #[test]
    fn a_running_clean_up_is_found_by_its_dir() {
        let dir = format!("/tmp/sb-node-test-{}", std::process::id());
        let mut sh = Command::new("sh")
            .args(["-c", "read -r _", TEARDOWN_NAME, &dir, "switchboard-x"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !teardown_running(&dir) {
            assert!(Instant::now() < deadline, "the running sh not found");
            sleep(Duration::from_millis(10));
        }
        assert!(!teardown_running(&format!("{dir}x")));
        drop(sh.stdin.take());
        sh.wait().unwrap();
        assert!(!teardown_running(&dir));
    }
}
