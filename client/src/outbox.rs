//! The outbox: messages composed by the app, in order, until the server
//! confirms each with `sent`.
//!
//! Entries are written in order whenever a connection is up, at most
//! `max_in_flight` unanswered at once. A connection that drops before `sent`
//! puts its written entries back in the queue, and they are written again, with
//! the same message id, after the reconnect: the server dedupes by id, so a
//! retry returns the original seq instead of a second message. `unavailable`
//! and `rate_limited` answers are retried the same way after a backoff; other
//! errors resolve the send with [`ClientError::Rejected`].

use std::collections::VecDeque;
use std::time::Duration;

use switchboard_proto::frames::ErrorCode;
use switchboard_proto::ids::{ConvId, MsgId};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::backoff::jitter;
use crate::error::ClientError;

/// The server's confirmation of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub id: MsgId,
    pub conv: ConvId,
    pub seq: u64,
    /// Server time (Unix ms) at which the seq was assigned.
    pub ts: u64,
    /// Accepted through the server's fallback relay while its Redis was
    /// down: `seq` is 0; the message comes back sequenced as a `msg` later
    /// (not surfaced again).
    pub relayed: bool,
}

pub(crate) type Reply = oneshot::Sender<Result<Sent, ClientError>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a connection.
    Queued,
    /// Written on the current connection; waiting for `sent` until this
    /// deadline, then written again.
    Written(Instant),
    /// Refused transiently; write again from this instant.
    RetryAt(Instant),
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub id: MsgId,
    pub conv: ConvId,
    /// The serialized `send` frame, identical on every attempt.
    pub frame: String,
    reply: Option<Reply>,
    state: State,
    /// Transient refusals so far, for the retry backoff.
    refusals: u32,
}

impl Entry {
    pub fn new(id: MsgId, conv: ConvId, frame: String, reply: Reply) -> Self {
        Entry {
            id,
            conv,
            frame,
            reply: Some(reply),
            state: State::Queued,
            refusals: 0,
        }
    }

    pub fn resolve(mut self, r: Result<Sent, ClientError>) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(r);
        }
    }
}

/// Retry timing for transient refusals.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Write an entry again when it had no answer for this long.
    pub answer_timeout: Duration,
}

#[derive(Debug)]
pub(crate) struct Outbox {
    entries: VecDeque<Entry>,
    max_in_flight: usize,
    policy: RetryPolicy,
}

/// What an `error` frame meant for the outbox.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ErrorOutcome {
    /// Not about a pending send.
    NotOurs,
    /// Will be written again later, same id.
    Retrying,
    /// The send failed for good; its future has the error.
    Rejected,
}

impl Outbox {
    pub fn new(max_in_flight: usize, policy: RetryPolicy) -> Self {
        Outbox {
            entries: VecDeque::new(),
            max_in_flight: max_in_flight.max(1),
            policy,
        }
    }

    pub fn push(&mut self, e: Entry) {
        self.entries.push_back(e);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn in_flight(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.state, State::Written(_)))
            .count()
    }

    /// Frames to write now, in order; they are marked written. Stops at the
    /// first entry still waiting out a retry delay, so order is kept.
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        let mut budget = self.max_in_flight.saturating_sub(self.in_flight());
        let mut out = Vec::new();
        for e in &mut self.entries {
            if budget == 0 {
                break;
            }
            match e.state {
                State::Written(_) => continue,
                State::RetryAt(at) if at > now => break,
                State::Queued | State::RetryAt(_) => {
                    e.state = State::Written(now + self.policy.answer_timeout);
                    out.push(e.frame.clone());
                    budget -= 1;
                }
            }
        }
        out
    }

    /// `sent` arrived: resolve the matching entry. Returns whether one matched.
    pub fn on_sent(&mut self, sent: &Sent) -> bool {
        let Some(i) = self
            .entries
            .iter()
            .position(|e| e.id == sent.id && e.conv == sent.conv)
        else {
            return false;
        };
        if let Some(e) = self.entries.remove(i) {
            e.resolve(Ok(sent.clone()));
        }
        true
    }

    /// An `error` frame with `ref` = `reference` arrived.
    pub fn on_error(
        &mut self,
        reference: &str,
        code: ErrorCode,
        message: &str,
        now: Instant,
    ) -> ErrorOutcome {
        let Some(i) = self
            .entries
            .iter()
            .position(|e| e.id.as_str() == reference && matches!(e.state, State::Written(_)))
        else {
            return ErrorOutcome::NotOurs;
        };
        if matches!(code, ErrorCode::Unavailable | ErrorCode::RateLimited) {
            let p = self.policy;
            if let Some(e) = self.entries.get_mut(i) {
                let factor = 1u32.checked_shl(e.refusals.min(20)).unwrap_or(u32::MAX);
                let ceiling = p.base.saturating_mul(factor).min(p.cap);
                // Equal jitter: never retry immediately, never in lockstep.
                e.state = State::RetryAt(now + ceiling / 2 + jitter(ceiling / 2));
                e.refusals = e.refusals.saturating_add(1);
            }
            return ErrorOutcome::Retrying;
        }
        if let Some(e) = self.entries.remove(i) {
            e.resolve(Err(ClientError::Rejected {
                code,
                message: message.to_owned(),
            }));
        }
        ErrorOutcome::Rejected
    }

    /// The connection dropped: whatever was written goes back in the queue.
    pub fn on_disconnect(&mut self) {
        for e in &mut self.entries {
            if matches!(e.state, State::Written(_)) {
                e.state = State::Queued;
            }
        }
    }

    /// Entries unanswered past their deadline are written again (same id).
    /// Returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        for e in &mut self.entries {
            if let State::Written(deadline) = e.state
                && now >= deadline
            {
                e.state = State::Queued;
                n += 1;
            }
        }
        n
    }

    /// The server refused a frame without saying which (the per-socket frame
    /// rate limit answers `rate_limited` with no `ref`): any unanswered send
    /// may have been the one, so each is written again (same id, harmless if
    /// it was accepted) unless its answer comes within a short retry delay.
    pub fn recheck_soon(&mut self, now: Instant) {
        let base = self.policy.base;
        for e in &mut self.entries {
            if let State::Written(deadline) = &mut e.state {
                let soon = now + base + jitter(base);
                if soon < *deadline {
                    *deadline = soon;
                }
            }
        }
    }

    /// When [`Outbox::take_due`] or [`Outbox::expire`] next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        // With the window full, a due retry has to wait for an answer anyway.
        let mut blocked = self.in_flight() >= self.max_in_flight;
        for e in &self.entries {
            let t = match e.state {
                State::Written(deadline) => Some(deadline),
                State::RetryAt(at) if !blocked => {
                    blocked = true;
                    Some(at)
                }
                _ => None,
            };
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }

    /// Resolve every entry with an error built by `err` (client closing).
    pub fn fail_all(&mut self, err: impl Fn() -> ClientError) {
        for e in self.entries.drain(..) {
            e.resolve(Err(err()));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            answer_timeout: Duration::from_secs(5),
        }
    }

    fn entry(conv: &ConvId, n: u32) -> (Entry, oneshot::Receiver<Result<Sent, ClientError>>) {
        let (tx, rx) = oneshot::channel();
        let id: MsgId = format!("m{n}").parse().unwrap();
        (Entry::new(id, conv.clone(), format!("frame{n}"), tx), rx)
    }

    fn sent(conv: &ConvId, n: u32, seq: u64) -> Sent {
        Sent {
            id: format!("m{n}").parse().unwrap(),
            conv: conv.clone(),
            seq,
            ts: 0,
            relayed: false,
        }
    }

    #[test]
    fn writes_in_order_within_the_window_and_resolves_by_id() {
        let c = ConvId::new_group();
        let now = Instant::now();
        let mut o = Outbox::new(2, policy());
        let mut rxs = vec![];
        for n in 1..=3 {
            let (e, rx) = entry(&c, n);
            o.push(e);
            rxs.push(rx);
        }
        assert_eq!(o.take_due(now), ["frame1", "frame2"]);
        assert!(o.take_due(now).is_empty());
        assert!(o.on_sent(&sent(&c, 2, 8)));
        assert_eq!(o.take_due(now), ["frame3"]);
        assert!(!o.on_sent(&sent(&c, 2, 8)), "already resolved");
        assert_eq!(rxs[1].try_recv().unwrap().unwrap().seq, 8);
        assert!(rxs[0].try_recv().is_err());
    }

    #[test]
    fn disconnect_rewrites_the_same_frames_in_order() {
        let c = ConvId::new_group();
        let now = Instant::now();
        let mut o = Outbox::new(10, policy());
        for n in 1..=3 {
            o.push(entry(&c, n).0);
        }
        assert_eq!(o.take_due(now).len(), 3);
        o.on_sent(&sent(&c, 1, 1));
        o.on_disconnect();
        assert_eq!(o.take_due(now), ["frame2", "frame3"]);
    }

    #[test]
    fn transient_errors_retry_later_others_reject() {
        let c = ConvId::new_group();
        let now = Instant::now();
        let mut o = Outbox::new(10, policy());
        let (e1, _rx1) = entry(&c, 1);
        let (e2, mut rx2) = entry(&c, 2);
        let (e3, _rx3) = entry(&c, 3);
        o.push(e1);
        o.push(e2);
        o.take_due(now);
        assert_eq!(
            o.on_error("m1", ErrorCode::RateLimited, "slow", now),
            ErrorOutcome::Retrying
        );
        assert_eq!(
            o.on_error("m2", ErrorCode::Forbidden, "no", now),
            ErrorOutcome::Rejected
        );
        assert!(matches!(
            rx2.try_recv().unwrap(),
            Err(ClientError::Rejected {
                code: ErrorCode::Forbidden,
                ..
            })
        ));
        assert_eq!(
            o.on_error("zz", ErrorCode::Forbidden, "no", now),
            ErrorOutcome::NotOurs
        );
        // m3 queues behind m1's retry delay.
        o.push(e3);
        assert!(o.take_due(now).is_empty());
        let at = o.next_deadline().unwrap();
        assert!(at >= now + Duration::from_millis(50) && at <= now + Duration::from_millis(100));
        assert_eq!(o.take_due(at), ["frame1", "frame3"]);
    }

    #[test]
    fn unanswered_frames_are_written_again_after_the_timeout() {
        let c = ConvId::new_group();
        let now = Instant::now();
        let mut o = Outbox::new(10, policy());
        o.push(entry(&c, 1).0);
        o.take_due(now);
        assert_eq!(o.next_deadline(), Some(now + Duration::from_secs(5)));
        assert_eq!(o.expire(now + Duration::from_secs(1)), 0);
        assert_eq!(o.expire(now + Duration::from_secs(5)), 1);
        assert_eq!(o.take_due(now + Duration::from_secs(5)), ["frame1"]);
        // An anonymous rate-limit refusal brings the deadline forward.
        let later = now + Duration::from_secs(5);
        o.recheck_soon(later);
        let d = o.next_deadline().unwrap();
        assert!(d >= later + Duration::from_millis(100) && d <= later + Duration::from_millis(200));
    }

    #[test]
    fn fail_all_resolves_everything() {
        let c = ConvId::new_group();
        let mut o = Outbox::new(10, policy());
        let (e, mut rx) = entry(&c, 1);
        o.push(e);
        o.fail_all(|| ClientError::Closed);
        assert_eq!(o.len(), 0);
        assert!(matches!(rx.try_recv().unwrap(), Err(ClientError::Closed)));
    }
}
