//! Reserved channel patterns: channel names only the operator's API keys
//! may create (`--reserved-channel`, [`crate::env::RESERVED_CHANNELS`], the
//! ChatCluster's `spec.gateway.reservedChannels`). A wallet cannot claim a
//! name that matches one. The gateway parses the flag with this type and the
//! operator validates the spec with it, so both accept the same patterns.

use std::fmt;
use std::str::FromStr;

/// Longest pattern accepted (a channel name is at most 64 characters; a few
/// `*` on top of that are plenty).
pub const MAX_PATTERN_LEN: usize = 128;

/// A glob over channel names (the part after `ch:`): `*` matches any run of
/// characters, the empty one included; every other character matches
/// itself, case-sensitively. `announcements:*`, `*-official`, `ops`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReservedPattern(String);

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "reserved channel pattern {0:?}: give 1 to {MAX_PATTERN_LEN} characters of [A-Za-z0-9_.:-] or `*` (any run of characters)"
)]
pub struct ReservedPatternError(pub String);

impl FromStr for ReservedPattern {
    type Err = ReservedPatternError;

    fn from_str(s: &str) -> Result<Self, ReservedPatternError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_PATTERN_LEN
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-' | b'*')
            });
        if ok {
            Ok(ReservedPattern(s.to_string()))
        } else {
            Err(ReservedPatternError(
                s.chars().take(MAX_PATTERN_LEN).collect(),
            ))
        }
    }
}

impl fmt::Display for ReservedPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ReservedPattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the channel `name` (without `ch:`) matches. Greedy glob
    /// matching with backtracking to the last `*` only: O(pattern × name)
    /// at worst, no recursion.
    pub fn matches(&self, name: &str) -> bool {
        let (p, n) = (self.0.as_bytes(), name.as_bytes());
        let (mut pi, mut ni) = (0, 0);
        // The last `*` seen and the name position it was tried at.
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            match p.get(pi) {
                Some(b'*') => {
                    star = Some((pi, ni));
                    pi += 1;
                }
                Some(&c) if c == n[ni] => {
                    pi += 1;
                    ni += 1;
                }
                _ => match star {
                    // Let that `*` take one more character and retry.
                    Some((sp, sn)) => {
                        star = Some((sp, sn + 1));
                        pi = sp + 1;
                        ni = sn + 1;
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

/// The first of `patterns` that `name` matches, if any.
pub fn reserved_by<'a>(patterns: &'a [ReservedPattern], name: &str) -> Option<&'a ReservedPattern> {
    patterns.iter().find(|p| p.matches(name))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pat(s: &str) -> ReservedPattern {
        s.parse().unwrap()
    }

    #[test]
    fn globs_match_as_documented() {
        let cases: &[(&str, &str, bool)] = &[
            ("announcements:*", "announcements:", true),
            ("announcements:*", "announcements:eu", true),
            ("announcements:*", "announcements", false),
            ("announcements:*", "Announcements:eu", false),
            ("*-official", "team-official", true),
            ("*-official", "team-official-not", false),
            ("ops", "ops", true),
            ("ops", "ops2", false),
            ("ops", "op", false),
            ("*", "anything", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a*b*c", "acb", false),
            ("**", "x", true),
            (
                "a*a*a*a*b",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                false,
            ),
        ];
        for &(p, name, want) in cases {
            assert_eq!(pat(p).matches(name), want, "{p} ~ {name}");
        }
        let list = [pat("ops"), pat("news:*")];
        assert_eq!(
            reserved_by(&list, "news:today").map(|p| p.as_str()),
            Some("news:*")
        );
        assert_eq!(reserved_by(&list, "chat"), None);
    }

    #[test]
    fn bad_patterns_are_refused_with_the_rule() {
        for bad in [
            "",
            "has space",
            "ch/slash",
            "ümlaut",
            &"x".repeat(MAX_PATTERN_LEN + 1),
        ] {
            let err = bad.parse::<ReservedPattern>().unwrap_err().to_string();
            assert!(err.contains("[A-Za-z0-9_.:-]"), "{bad}: {err}");
        }
        assert_eq!(pat("a:*").to_string(), "a:*");
    }

    /// Naive recursive glob, the specification the fast matcher must agree with.
    fn spec(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|i| spec(rest, &n[i..])),
            Some((c, rest)) => n.first() == Some(c) && spec(rest, &n[1..]),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn matcher_agrees_with_the_recursive_definition(
            p in "[ab:*]{1,8}",
            n in "[ab:]{0,10}",
        ) {
            prop_assert_eq!(pat(&p).matches(&n), spec(p.as_bytes(), n.as_bytes()));
        }
    }
}
