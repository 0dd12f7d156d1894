//! CORS origins: the web pages allowed to call a gateway from another origin
//! (`--cors-origin`, [`crate::env::CORS_ORIGINS`], the ChatCluster's
//! `spec.gateway.cors.allowedOrigins`). The gateway parses the flag with
//! this type and the operator validates the spec with it, so both accept the
//! same origins.
//!
//! An origin is what a browser sends in its `Origin` header:
//! `scheme://host[:port]`, no path, no trailing slash, no user info. Parsing
//! normalizes it the way browsers serialize it (scheme and host in lower
//! case, the scheme's default port left out), so the gateway then compares
//! the header byte for byte. `*` allows every origin.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// Most origins one gateway accepts (the CRD's `maxItems` too).
pub const MAX_ORIGINS: usize = 32;

/// Longest origin accepted (a DNS name is at most 253 characters; a scheme
/// and a port on top of that).
pub const MAX_ORIGIN_LEN: usize = 300;

/// One allowed origin: every origin (`*`) or one exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CorsOrigin {
    /// `*`: any page may call the API (it still needs a bearer token).
    Any,
    /// One origin, normalized (`https://app.example.com`,
    /// `http://localhost:5173`).
    Exact(String),
}

/// Why an origin was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "CORS origin {origin:?}: {reason}; expected scheme://host[:port] (e.g. https://app.example.com or http://localhost:5173) or *"
)]
pub struct CorsOriginError {
    /// The value given (cut to [`MAX_ORIGIN_LEN`] characters).
    pub origin: String,
    pub reason: &'static str,
}

impl FromStr for CorsOrigin {
    type Err = CorsOriginError;

    fn from_str(s: &str) -> Result<Self, CorsOriginError> {
        parse(s).map_err(|reason| CorsOriginError {
            origin: s.chars().take(MAX_ORIGIN_LEN).collect(),
            reason,
        })
    }
}

fn parse(s: &str) -> Result<CorsOrigin, &'static str> {
    if s == "*" {
        return Ok(CorsOrigin::Any);
    }
    if s.is_empty() {
        return Err("empty");
    }
    if s.len() > MAX_ORIGIN_LEN {
        return Err("too long");
    }
    if s.eq_ignore_ascii_case("null") {
        return Err(
            "`null` is what sandboxed frames and file:// pages send, and any page can make itself one",
        );
    }
    if !s.is_ascii() || s.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(
            "only ASCII without spaces (give an internationalized host in punycode, xn--…)",
        );
    }
    let (scheme, rest) = s.split_once("://").ok_or("no scheme:// (e.g. https://)")?;
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-'));
    if !scheme_ok {
        return Err("the scheme is not a URL scheme");
    }
    if rest.contains(['/', '?', '#']) {
        return Err("an origin has no path, query or trailing slash");
    }
    if rest.contains('@') {
        return Err("an origin has no user info");
    }
    if rest.contains('*') {
        return Err("wildcards in the host are not supported: list each origin, or give * alone");
    }
    let scheme = scheme.to_ascii_lowercase();
    let (host, port) = split_port(rest)?;
    let host = if let Some(v6) = host.strip_prefix('[') {
        let inner = v6.strip_suffix(']').ok_or("unclosed [ in the host")?;
        let addr: Ipv6Addr = inner.parse().map_err(|_| "not an IPv6 address in [ ]")?;
        format!("[{addr}]")
    } else {
        let ok = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            });
        if !ok {
            return Err("the host is not a DNS name or an IP address");
        }
        host.to_ascii_lowercase()
    };
    let default_port = match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    Ok(CorsOrigin::Exact(match port {
        Some(p) if Some(p) != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    }))
}

/// `host` and its port, if any (`[::1]:8080`, `example.com:8080`).
fn split_port(rest: &str) -> Result<(&str, Option<u16>), &'static str> {
    let colon = match rest.rfind(':') {
        // A colon inside [ ] belongs to an IPv6 address.
        Some(i) if !rest[i..].contains(']') => i,
        _ => return Ok((rest, None)),
    };
    let (host, port) = (&rest[..colon], &rest[colon + 1..]);
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
        _ => return Err("the port is not a number from 1 to 65535"),
    };
    Ok((host, Some(port)))
}

impl fmt::Display for CorsOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorsOrigin::Any => f.write_str("*"),
            CorsOrigin::Exact(o) => f.write_str(o),
        }
    }
}

/// Why a list of origins was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} CORS origins given; at most {MAX_ORIGINS}")]
pub struct TooManyOrigins(pub usize);

/// A list of origins is at most [`MAX_ORIGINS`] long.
pub fn check_count(origins: &[CorsOrigin]) -> Result<(), TooManyOrigins> {
    if origins.len() > MAX_ORIGINS {
        return Err(TooManyOrigins(origins.len()));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        s.parse::<CorsOrigin>()
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    fn bad(s: &str) -> String {
        s.parse::<CorsOrigin>().unwrap_err().to_string()
    }

    #[test]
    fn origins_are_normalized_as_browsers_send_them() {
        assert_eq!(ok("*"), "*");
        assert_eq!(ok("https://app.example.com"), "https://app.example.com");
        assert_eq!(ok("HTTPS://App.Example.COM:443"), "https://app.example.com");
        assert_eq!(ok("http://localhost:80"), "http://localhost");
        assert_eq!(ok("http://localhost:5173"), "http://localhost:5173");
        assert_eq!(ok("https://example.com:8443"), "https://example.com:8443");
        assert_eq!(ok("http://127.0.0.1:3000"), "http://127.0.0.1:3000");
        assert_eq!(ok("http://[::1]:3000"), "http://[::1]:3000");
        assert_eq!(ok("http://[0:0::1]"), "http://[::1]");
        assert_eq!(ok("capacitor://localhost"), "capacitor://localhost");
        assert_eq!(ok("tauri://localhost:1"), "tauri://localhost:1");
        assert_eq!(
            ok("https://xn--bcher-kva.example"),
            "https://xn--bcher-kva.example"
        );
    }

    #[test]
    fn what_is_no_origin_is_refused_with_the_reason() {
        for (s, needle) in [
            ("", "empty"),
            ("null", "sandboxed"),
            ("example.com", "no scheme"),
            ("https://example.com/", "trailing slash"),
            ("https://example.com/app", "no path"),
            ("https://example.com?x", "no path"),
            ("https://u:p@example.com", "user info"),
            ("https://*.example.com", "wildcards"),
            ("https://example.com:0", "port"),
            ("https://example.com:65536", "port"),
            ("https://example.com:+1", "port"),
            ("https://example.com:", "port"),
            ("https://", "DNS name"),
            ("https://exa mple.com", "ASCII"),
            ("https://bücher.example", "punycode"),
            ("https://a..b", "DNS name"),
            ("https://[::1", "unclosed"),
            ("https://[zz]:1", "IPv6"),
            ("1http://x", "scheme"),
            ("https://x\r\nSet-Cookie: a", "ASCII"),
        ] {
            let e = bad(s);
            assert!(e.contains(needle), "{s:?}: {e}");
            assert!(e.contains("expected scheme://host[:port]"), "{e}");
        }
        let long = format!("https://{}.com", "a".repeat(400));
        let e = bad(&long);
        assert!(e.contains("too long"), "{e}");
        assert!(
            e.len() < MAX_ORIGIN_LEN + 200,
            "the error repeats the whole input"
        );
    }

    #[test]
    fn lists_are_bounded() {
        let one: CorsOrigin = "https://a.example".parse().unwrap();
        assert!(check_count(&vec![one.clone(); MAX_ORIGINS]).is_ok());
        let e = check_count(&vec![one; MAX_ORIGINS + 1]).unwrap_err();
        assert_eq!(e.to_string(), "33 CORS origins given; at most 32");
    }
}
