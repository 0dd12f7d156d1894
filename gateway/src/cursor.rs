//! Where a reader stands in one ordered feed (a conversation or a channel):
//! the last seq it wrote. Live messages may arrive twice (the replay wrote
//! them already) or early (published before the reader's subscription took
//! effect, or one was lost in transit); the rule for both is here, once,
//! and the WebSocket and SSE transports follow it: write the next seq, drop
//! what is at or below the cursor, and fill a gap from the log first. The
//! result is one ascending, gap-free, repeat-free run.

/// What to do with a live message `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// At or below the cursor: written already; drop it.
    Skip,
    /// The next seq: write it and advance.
    Write,
    /// Past the next seq: read the log up to it first.
    Gap,
}

/// The last seq written to a reader for one feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeqCursor {
    last: u64,
}

impl SeqCursor {
    /// A reader that holds everything up to `last`.
    pub fn at(last: u64) -> Self {
        SeqCursor { last }
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// What to do with `seq`.
    pub fn step(&self, seq: u64) -> Step {
        if seq <= self.last {
            Step::Skip
        } else if Some(seq) == self.last.checked_add(1) {
            Step::Write
        } else {
            Step::Gap
        }
    }

    /// `seq` was written; never moves back.
    pub fn advance(&mut self, seq: u64) {
        self.last = self.last.max(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_written_repeats_skipped_gaps_reported() {
        let mut c = SeqCursor::at(3);
        assert_eq!(c.step(2), Step::Skip);
        assert_eq!(c.step(3), Step::Skip);
        assert_eq!(c.step(4), Step::Write);
        assert_eq!(c.step(6), Step::Gap);
        c.advance(4);
        assert_eq!(c.last(), 4);
        assert_eq!(c.step(5), Step::Write);
        c.advance(2);
        assert_eq!(c.last(), 4, "a cursor never moves back");
    }

    #[test]
    fn a_fresh_cursor_wants_seq_one() {
        let c = SeqCursor::default();
        assert_eq!(c.step(1), Step::Write);
        assert_eq!(c.step(0), Step::Skip);
    }
}
