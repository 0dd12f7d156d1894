//! Wall-clock helpers. Timestamps on the wire are Unix milliseconds (`ts`), which
//! JavaScript clients read without a date parser.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
