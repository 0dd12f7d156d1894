//! Per-conversation sequencing: what this device holds, which seqs are
//! duplicates, where the gaps are and when to `sync`.
//!
//! For each conversation the tracker keeps `held`, the highest seq up to which
//! every message has been seen (surfaced to the app, or sent by this device),
//! plus the messages that arrived ahead of a gap. A message is surfaced exactly
//! once and in seq order: a duplicate (seq `<= held`, or already buffered) is
//! dropped; one past a gap waits until the gap fills, either by the missing
//! frames arriving (frames from different senders may cross by milliseconds) or
//! by a `sync` issued when the gap outlives a short grace period. A sync that
//! answers `recovered: false` means the server no longer has the missing
//! messages: the tracker skips the hole rather than wait forever.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use switchboard_proto::frames::Message;
use switchboard_proto::ids::{ConvId, MsgId};
use tokio::time::Instant;

/// Timing knobs for sync decisions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncTimers {
    /// How long a gap may stay open before a `sync` is sent for it.
    pub gap_grace: Duration,
    /// How long to wait for `synced` before asking again.
    pub sync_timeout: Duration,
    /// Wait before retrying a sync the server refused transiently.
    pub retry_after: Duration,
}

/// Ids of the last seqs seen per conversation: enough to notice that the
/// server gave a seq this device holds to another message (Redis lost the
/// tail the worker had not stored, and the numbering went on from what
/// PostgreSQL has), which is the last few seqs.
pub(crate) const RECENT_IDS: usize = 16;

#[derive(Debug, Default)]
struct Track {
    /// Every seq `<= held` has been seen.
    held: u64,
    /// (seq, id) of the last [`RECENT_IDS`] seqs inserted, oldest first.
    recent: VecDeque<(u64, MsgId)>,
    /// Seqs above `held + 1` seen early; `None` marks this device's own send.
    ahead: BTreeMap<u64, Option<Message>>,
    /// Highest seq known to exist (from frames or `synced.last_seq`).
    known_last: u64,
    /// When the current gap was noticed.
    gap_since: Option<Instant>,
    /// A sync from `after` sent at `at`, not yet answered.
    in_flight: Option<(u64, Instant)>,
    /// Sync as soon as possible (connect, page continuation), not before `not_before`.
    want: bool,
    not_before: Option<Instant>,
    /// The server's epoch for this conversation, once a `synced` told us.
    epoch: Option<u64>,
}

impl Track {
    fn starting_at(held: u64) -> Self {
        Track {
            held,
            known_last: held,
            ..Track::default()
        }
    }

    fn has_gap(&self) -> bool {
        self.held < self.known_last
    }

    /// Insert seq `seq` (payload `m`, `None` for our own send) and return what
    /// can now be surfaced in order.
    fn insert(
        &mut self,
        seq: u64,
        m: Option<Message>,
        id: Option<MsgId>,
        now: Instant,
    ) -> Vec<Message> {
        if seq <= self.held || self.ahead.contains_key(&seq) {
            return Vec::new();
        }
        self.known_last = self.known_last.max(seq);
        if let Some(id) = m.as_ref().map(|m| m.id.clone()).or(id) {
            if self.recent.len() == RECENT_IDS {
                self.recent.pop_front();
            }
            self.recent.push_back((seq, id));
        }
        self.ahead.insert(seq, m);
        let out = self.drain();
        self.note_gap(now);
        out
    }

    fn drain(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() != self.held + 1 {
                break;
            }
            self.held += 1;
            if let Some(m) = entry.remove() {
                out.push(m);
            }
        }
        out
    }

    fn note_gap(&mut self, now: Instant) {
        if self.has_gap() {
            self.gap_since.get_or_insert(now);
        } else {
            self.gap_since = None;
        }
    }
}

/// The fields of a `synced` frame the tracker uses.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Synced {
    pub recovered: bool,
    pub last_seq: u64,
    pub epoch: u64,
    pub epoch_base: u64,
}

/// What a `synced` frame resolved.
#[derive(Debug, Default)]
pub(crate) struct SyncedOutcome {
    /// Messages that became contiguous (in order).
    pub surfaced: Vec<Message>,
    /// Seqs skipped because the server no longer has them.
    pub lost: u64,
    /// The server rebuilt the conversation (new epoch): what this device
    /// held above the epoch base was dropped and is synced again.
    pub epoch_changed: bool,
}

#[derive(Debug)]
pub(crate) struct Tracker {
    convs: HashMap<ConvId, Track>,
    /// A conversation first seen through a live frame: replay its history
    /// (`true`) or start at that frame (`false`).
    backfill_new: bool,
    timers: SyncTimers,
}

impl Tracker {
    pub fn new(backfill_new: bool, timers: SyncTimers) -> Self {
        Tracker {
            convs: HashMap::new(),
            backfill_new,
            timers,
        }
    }

    fn entry(&mut self, conv: &ConvId, seq: u64) -> &mut Track {
        let backfill = self.backfill_new;
        self.convs.entry(conv.clone()).or_insert_with(|| {
            let held = if backfill { 0 } else { seq.saturating_sub(1) };
            Track::starting_at(held)
        })
    }

    /// Follow `conv` from `after` (sync it now and on every reconnect). A
    /// conversation already followed keeps what it holds.
    pub fn track(&mut self, conv: ConvId, after: u64) {
        let t = self
            .convs
            .entry(conv)
            .or_insert_with(|| Track::starting_at(after));
        t.want = true;
    }

    /// The seq up to which `conv` is complete.
    pub fn held(&self, conv: &ConvId) -> Option<u64> {
        self.convs.get(conv).map(|t| t.held)
    }

    /// A `msg` arrived: the messages to surface, in order (empty for a duplicate).
    pub fn on_msg(&mut self, m: Message, now: Instant) -> Vec<Message> {
        let (conv, seq) = (m.conv.clone(), m.seq);
        self.entry(&conv, seq).insert(seq, Some(m), None, now)
    }

    /// Whether `m` is a seq this device holds under another id: the server
    /// renumbered the conversation from there (Redis lost its unstored
    /// tail). What is held from that seq up is then void: it is forgotten
    /// and a sync from the seq before is due (its `synced` also brings the
    /// new epoch); `m` itself comes back with that sync. Returns the seq
    /// kept up to, or `None` for an ordinary repeat or a new seq.
    pub fn renumbered(&mut self, m: &Message) -> Option<u64> {
        let t = self.convs.get_mut(&m.conv)?;
        let known = t.recent.iter().find(|(seq, _)| *seq == m.seq)?;
        if known.1 == m.id {
            return None;
        }
        let keep = m.seq.saturating_sub(1);
        t.held = t.held.min(keep);
        t.ahead.retain(|seq, _| *seq <= keep);
        t.recent.retain(|(seq, _)| *seq <= keep);
        t.known_last = t.known_last.max(m.seq);
        t.want = true;
        Some(keep)
    }

    /// Our own `send` `id` got `seq`: it counts as held, but is not surfaced.
    pub fn on_sent(&mut self, conv: &ConvId, seq: u64, id: &MsgId, now: Instant) -> Vec<Message> {
        // Our own first message in a conversation starts it at that seq even
        // when backfilling: history is replayed only for incoming traffic.
        let t = self
            .convs
            .entry(conv.clone())
            .or_insert_with(|| Track::starting_at(seq.saturating_sub(1)));
        t.insert(seq, None, Some(id.clone()), now)
    }

    /// A `synced` frame arrived.
    pub fn on_synced(&mut self, conv: &ConvId, synced: Synced, now: Instant) -> SyncedOutcome {
        let Synced {
            recovered,
            last_seq,
            epoch,
            epoch_base,
        } = synced;
        let Some(t) = self.convs.get_mut(conv) else {
            return SyncedOutcome::default();
        };
        let from = t.in_flight.take().map(|(after, _)| after);
        let mut out = SyncedOutcome::default();
        if t.epoch.is_some_and(|e| e != epoch) {
            // The server lost its recent state and continued from storage:
            // seqs above the base may now be other messages. Drop what we
            // hold above it and sync again from there.
            t.held = t.held.min(epoch_base);
            t.ahead.retain(|seq, _| *seq <= epoch_base);
            t.recent.retain(|(seq, _)| *seq <= epoch_base);
            t.known_last = last_seq;
            t.want = true;
            t.epoch = Some(epoch);
            out.epoch_changed = true;
            t.note_gap(now);
            return out;
        }
        t.epoch = Some(epoch);
        t.known_last = t.known_last.max(last_seq);
        if !recovered {
            // The log no longer reaches back to `held + 1`: everything it still
            // had was replayed (and is buffered), the rest is gone.
            let resume_at = t.ahead.keys().next().copied().unwrap_or(last_seq + 1);
            if resume_at > t.held + 1 {
                out.lost = resume_at - 1 - t.held;
                t.held = resume_at - 1;
            }
        }
        out.surfaced = t.drain();
        let progressed = from.is_some_and(|f| t.held > f);
        if t.held < last_seq && progressed {
            // One page replayed; ask for the next right away.
            t.want = true;
        }
        t.note_gap(now);
        out
    }

    /// The server refused a sync of `conv` (error frame whose ref is the conv).
    /// Returns whether a sync was in flight for it. `permanent` refusals
    /// (forbidden, bad id) stop following the conversation.
    pub fn on_sync_error(&mut self, conv: &ConvId, permanent: bool, now: Instant) -> bool {
        let Some(t) = self.convs.get_mut(conv) else {
            return false;
        };
        if t.in_flight.take().is_none() {
            return false;
        }
        if permanent {
            self.convs.remove(conv);
        } else {
            t.want = true;
            t.not_before = Some(now + self.timers.retry_after);
        }
        true
    }

    /// After a (re)connect: every followed conversation syncs from what it holds.
    pub fn on_connect(&mut self) {
        for t in self.convs.values_mut() {
            t.in_flight = None;
            t.want = true;
            t.not_before = None;
        }
    }

    /// Syncs to send now, as `(conv, after)`; each is marked in flight.
    pub fn due_syncs(&mut self, now: Instant) -> Vec<(ConvId, u64)> {
        let timers = self.timers;
        let mut out = Vec::new();
        for (conv, t) in &mut self.convs {
            let due = match t.in_flight {
                Some((_, at)) => now >= at + timers.sync_timeout,
                None => {
                    let allowed = t.not_before.is_none_or(|nb| now >= nb);
                    let gap_due = t.gap_since.is_some_and(|g| now >= g + timers.gap_grace);
                    allowed && (t.want || gap_due)
                }
            };
            if due {
                t.want = false;
                t.not_before = None;
                t.in_flight = Some((t.held, now));
                out.push((conv.clone(), t.held));
            }
        }
        out
    }

    /// When [`Tracker::due_syncs`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timers = self.timers;
        self.convs
            .values()
            .filter_map(|t| match t.in_flight {
                Some((_, at)) => Some(at + timers.sync_timeout),
                None if t.want => Some(t.not_before.unwrap_or_else(Instant::now)),
                None => t.gap_since.map(|g| g + timers.gap_grace),
            })
            .min()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;
    use switchboard_proto::ids::{Address, MsgId};

    fn conv() -> ConvId {
        ConvId::new_group()
    }

    fn synced(recovered: bool, last_seq: u64) -> Synced {
        Synced {
            recovered,
            last_seq,
            ..Synced::default()
        }
    }

    /// Redis lost the unstored tail (4, 5) and the numbering went on from
    /// 3: a live 4 under another id is not a repeat. What was held from 4
    /// up is forgotten and a sync from 3 is due; an ordinary repeat (a
    /// resend, same id) changes nothing, nor does an unknown old seq.
    #[test]
    fn a_held_seq_under_another_id_means_renumbered() {
        let c = conv();
        let mut t = Tracker::new(false, timers());
        let now = Instant::now();
        t.track(c.clone(), 0);
        t.due_syncs(now);
        t.on_synced(&c, synced(true, 0), now);
        let held: Vec<Message> = (1..=5).map(|s| msg(&c, s)).collect();
        for m in &held {
            t.on_msg(m.clone(), now);
        }
        assert_eq!(t.held(&c), Some(5));
        assert_eq!(t.renumbered(&held[3]), None, "a resend of 4");
        assert!(t.due_syncs(now).is_empty());
        let mut other = msg(&c, 4);
        other.id = "m6".parse().unwrap();
        assert_eq!(t.renumbered(&other), Some(3));
        assert_eq!(t.held(&c), Some(3));
        assert_eq!(t.due_syncs(now), vec![(c.clone(), 3)]);
        // The sync brings 4 and 5 back under their new ids, surfaced once.
        let mut renumbered = vec![other.clone(), msg(&c, 5)];
        renumbered[1].id = "m7".parse().unwrap();
        let mut out = Vec::new();
        for m in &renumbered {
            out.extend(t.on_msg(m.clone(), now));
        }
        out.extend(t.on_synced(&c, synced(true, 5), now).surfaced);
        let ids: Vec<String> = out.iter().map(|m| m.id.to_string()).collect();
        assert_eq!(ids, ["m6", "m7"]);
        assert_eq!(t.renumbered(&other), None, "now held under m6");
    }

    fn msg(conv: &ConvId, seq: u64) -> Message {
        Message {
            conv: conv.clone(),
            seq,
            id: MsgId::random(),
            from: Address([7; 20]),
            body: RawValue::from_string(format!("{{\"n\":{seq}}}")).unwrap(),
            ts: 1,
            relayed: false,
        }
    }

    fn seqs(v: &[Message]) -> Vec<u64> {
        v.iter().map(|m| m.seq).collect()
    }

    fn timers() -> SyncTimers {
        SyncTimers {
            gap_grace: Duration::from_millis(100),
            sync_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(1),
        }
    }

    #[test]
    fn in_order_once_and_duplicates_dropped() {
        let c = conv();
        let now = Instant::now();
        let mut t = Tracker::new(true, timers());
        assert_eq!(seqs(&t.on_msg(msg(&c, 1), now)), [1]);
        assert_eq!(seqs(&t.on_msg(msg(&c, 2), now)), [2]);
        assert!(t.on_msg(msg(&c, 2), now).is_empty());
        assert!(t.on_msg(msg(&c, 1), now).is_empty());
        assert_eq!(t.held(&c), Some(2));
        assert!(t.due_syncs(now + Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn reordered_frames_wait_for_the_gap_then_flow_in_order() {
        let c = conv();
        let now = Instant::now();
        let mut t = Tracker::new(true, timers());
        assert!(t.on_msg(msg(&c, 2), now).is_empty());
        assert!(t.on_msg(msg(&c, 3), now).is_empty());
        assert!(t.on_msg(msg(&c, 3), now).is_empty());
        // Within the grace period nothing is synced.
        assert!(t.due_syncs(now + Duration::from_millis(50)).is_empty());
        assert_eq!(seqs(&t.on_msg(msg(&c, 1), now)), [1, 2, 3]);
        assert!(t.due_syncs(now + Duration::from_secs(1)).is_empty());
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn a_lasting_gap_is_synced_from_what_is_held() {
        let c = conv();
        let now = Instant::now();
        let mut t = Tracker::new(true, timers());
        t.on_msg(msg(&c, 1), now);
        t.on_msg(msg(&c, 4), now);
        assert_eq!(t.next_deadline(), Some(now + Duration::from_millis(100)));
        let later = now + Duration::from_millis(150);
        assert_eq!(t.due_syncs(later), [(c.clone(), 1)]);
        // In flight: not asked again until the timeout.
        assert!(t.due_syncs(later).is_empty());
        // The replay: 2, 3, 4 (4 again is a duplicate).
        assert_eq!(seqs(&t.on_msg(msg(&c, 2), later)), [2]);
        assert_eq!(seqs(&t.on_msg(msg(&c, 3), later)), [3, 4]);
        assert!(t.on_msg(msg(&c, 4), later).is_empty());
        let out = t.on_synced(&c, synced(true, 4), later);
        assert!(out.surfaced.is_empty());
        assert_eq!(out.lost, 0);
        assert!(t.due_syncs(later + Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn paged_sync_continues_until_last_seq() {
        let c = conv();
        let now = Instant::now();
        let mut t = Tracker::new(true, timers());
        t.track(c.clone(), 0);
        assert_eq!(t.due_syncs(now), [(c.clone(), 0)]);
        for s in 1..=3 {
            t.on_msg(msg(&c, s), now);
        }
        t.on_synced(&c, synced(true, 5), now);
        assert_eq!(t.due_syncs(now), [(c.clone(), 3)]);
        for s in 4..=5 {
            t.on_msg(msg(&c, s), now);
        }
        t.on_synced(&c, synced(true, 5), now);
        assert!(t.due_syncs(now + Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn unrecoverable_history_is_skipped() {
        let c = conv();
        let now = Instant::now();
        let mut t = Tracker::new(true, timers());
        t.track(c.clone(), 2);
        assert_eq!(t.due_syncs(now), [(c.clone(), 2)]);
        // The log starts at 10 now.
        assert!(t.on_msg(msg(&c, 10), now).is_empty());
        assert!(t.on_msg(msg(&c, 11), now).is_empty());
        let out = t.on_synced(&c, synced(false, 11), now);
        assert_eq!(seqs(&out.surfaced), [10, 11]);
        assert_eq!(out.lost, 7);
        // Nothing at all left: jump to last_seq.
        let d = conv();
        t.track(d.clone(), 0);
        t.due_syncs(now);
        let out = t.on_synced(&d, synced(false, 4), now);
        assert_eq!(out.lost, 4);
        assert_eq!(t.held(&d), Some(4));
        assert!(t.due_syncs(now + Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn own_sends_count_as_held_but_are_not_surfaced() {
        let c = conv();
        let now = Instant::now();
        let mut t = Tracker::new(true, timers());
        assert!(t.on_sent(&c, 5, &MsgId::random(), now).is_empty());
        assert_eq!(t.held(&c), Some(5));
        // Someone else's 7 arrives before their 6.
        assert!(t.on_sent(&c, 8, &MsgId::random(), now).is_empty());
        assert!(t.on_msg(msg(&c, 7), now).is_empty());
        assert_eq!(seqs(&t.on_msg(msg(&c, 6), now)), [6, 7]);
        assert_eq!(t.held(&c), Some(8));
    }

    #[test]
    fn new_conversations_start_live_unless_backfilling() {
        let c = conv();
        let now = Instant::now();
        let mut live = Tracker::new(false, timers());
        assert_eq!(seqs(&live.on_msg(msg(&c, 9), now)), [9]);
        assert!(live.due_syncs(now + Duration::from_secs(1)).is_empty());
        let mut backfill = Tracker::new(true, timers());
        assert!(backfill.on_msg(msg(&c, 9), now).is_empty());
        assert_eq!(backfill.due_syncs(now + Duration::from_secs(1)), [(c, 0)]);
    }

    #[test]
    fn reconnect_resyncs_everything_and_errors_back_off() {
        let (a, b) = (conv(), conv());
        let now = Instant::now();
        let mut t = Tracker::new(false, timers());
        t.on_msg(msg(&a, 3), now);
        t.track(b.clone(), 0);
        t.due_syncs(now);
        t.on_connect();
        let mut due = t.due_syncs(now);
        due.sort();
        let mut want = vec![(a.clone(), 3), (b.clone(), 0)];
        want.sort();
        assert_eq!(due, want);
        assert!(t.on_sync_error(&a, false, now));
        assert!(t.due_syncs(now).is_empty());
        assert_eq!(t.due_syncs(now + Duration::from_secs(1)), [(a.clone(), 3)]);
        assert!(t.on_sync_error(&b, true, now));
        assert_eq!(t.held(&b), None);
        // A lost `synced` is asked again after the timeout.
        assert_eq!(t.due_syncs(now + Duration::from_secs(7)), [(a, 3)]);
    }

    #[test]
    fn an_epoch_change_drops_what_is_held_above_the_base() {
        let timers = SyncTimers {
            gap_grace: Duration::from_millis(10),
            sync_timeout: Duration::from_secs(1),
            retry_after: Duration::from_millis(10),
        };
        let mut t = Tracker::new(true, timers);
        let c = conv();
        let now = Instant::now();
        t.track(c.clone(), 0);
        for seq in 1..=8 {
            assert_eq!(t.on_msg(msg(&c, seq), now).len(), 1);
        }
        let first = Synced {
            recovered: true,
            last_seq: 8,
            epoch: 100,
            epoch_base: 0,
        };
        assert!(!t.on_synced(&c, first, now).epoch_changed);
        assert_eq!(t.held(&c), Some(8));
        // Redis lost data; storage had up to 5; the new epoch continues at 6.
        let rebuilt = Synced {
            recovered: true,
            last_seq: 7,
            epoch: 200,
            epoch_base: 5,
        };
        assert!(t.on_synced(&c, rebuilt, now).epoch_changed);
        assert_eq!(t.held(&c), Some(5));
        // The new epoch's 6 and 7 are surfaced, not dropped as duplicates.
        assert_eq!(t.on_msg(msg(&c, 6), now).len(), 1);
        assert_eq!(t.on_msg(msg(&c, 7), now).len(), 1);
        let same = Synced {
            recovered: true,
            last_seq: 7,
            epoch: 200,
            epoch_base: 5,
        };
        assert!(!t.on_synced(&c, same, now).epoch_changed);
    }
}
