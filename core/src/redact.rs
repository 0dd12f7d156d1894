//! Secrets out of messages: the one function that takes the password out of
//! a URL before it goes into a log line, an error or a start-up banner.

/// `url` with the password of its user info replaced by `***`
/// (`redis://:s3cret@r:6379` → `redis://:***@r:6379`,
/// `postgres://u:s3cret@db/x` → `postgres://u:***@db/x`). A URL without a
/// password comes back unchanged. User info without a colon is kept: it is a
/// user name, not a password.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|s| s + 3) else {
        return url.to_string();
    };
    // The authority ends at the first `/`, `?` or `#`; only an `@` inside it
    // ends user info. The last one counts: a password may contain `@`.
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let creds = &authority[..at];
    match creds.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &creds[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact_url("postgres://u:secret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(redact_url("redis://:secret@r:6379"), "redis://:***@r:6379");
        assert_eq!(redact_url("redis://r:6379"), "redis://r:6379");
        assert_eq!(redact_url("redis://user@r:6379"), "redis://user@r:6379");
        assert_eq!(
            redact_url("redis-cluster://:p@ss@a:7000?node=b:7000"),
            "redis-cluster://:***@a:7000?node=b:7000"
        );
        // An `@` after the authority is not user info.
        assert_eq!(
            redact_url("redis://r:6379/0?x=a:b@c"),
            "redis://r:6379/0?x=a:b@c"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
