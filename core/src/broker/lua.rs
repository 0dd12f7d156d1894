//! Building the text of the Lua scripts. The scripts live in `.lua` files
//! (loaded with `include_str!`); where they name a stream field that Rust
//! reads back (the persistence stream's, the conversation log's, the
//! dead-letter stream's) they write a placeholder, `{{NAME}}`, and
//! [`render`] replaces it with the Rust constant once, when the script's
//! text is first needed. A field name is then written once, in Rust, and
//! costs no bytes per call (ARGV would).

/// `template` with every `{{NAME}}` that one of `tables` defines replaced by
/// its value. Unknown names are left as they are, for the scripts' unit
/// tests to find with [`unresolved`] (a placeholder inside a Lua string is
/// valid Lua: the script would silently write a wrong field).
pub fn render(template: &str, tables: &[&[(&str, &str)]]) -> String {
    let lookup = |name: &str| {
        tables
            .iter()
            .flat_map(|t| t.iter())
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
    };
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            rest = &rest[start..];
            break;
        };
        match lookup(&after[..end]) {
            Some(value) => out.push_str(value),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The placeholders (`{{…}}`) left in rendered script text.
pub fn unresolved(text: &str) -> Vec<String> {
    let mut left = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            left.push(format!("{{{{{after}"));
            break;
        };
        left.push(format!("{{{{{}}}}}", &after[..end]));
        rest = &after[end + 2..];
    }
    left
}

/// One `redis.call('XADD', …)` of a script, as the scripts' tests see it.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Xadd {
    /// The key argument as written (`KEYS[5]`).
    pub key: String,
    /// `(field, value)` pairs as written; a field that is a string literal
    /// has its quotes removed, anything else (a variable, `unpack(f)`) is
    /// kept as written so a test sees it is not a literal.
    pub pairs: Vec<(String, String)>,
}

/// Every XADD call in `script`. A small scanner for the shape our scripts
/// use (`redis.call('XADD', KEY, [NOMKSTREAM,] [MAXLEN|MINID [~|=] N,] ID,
/// field, value, …)`), not a Lua parser.
#[cfg(test)]
pub(crate) fn xadd_calls(script: &str) -> Vec<Xadd> {
    const CALL: &str = "redis.call('XADD',";
    let mut calls = Vec::new();
    let mut rest = script;
    while let Some(i) = rest.find(CALL) {
        let body = &rest[i + "redis.call(".len()..];
        let (args, used) = split_args(body);
        rest = &body[used..];
        let mut it = args.into_iter().skip(1).peekable();
        let key = it.next().unwrap_or_default();
        if it.peek().map(String::as_str) == Some("'NOMKSTREAM'") {
            it.next();
        }
        if matches!(it.peek().map(String::as_str), Some("'MAXLEN'" | "'MINID'")) {
            it.next();
            if matches!(it.peek().map(String::as_str), Some("'~'" | "'='")) {
                it.next();
            }
            it.next();
        }
        let _id = it.next();
        let rest_args: Vec<String> = it.collect();
        let pairs = rest_args
            .chunks(2)
            .map(|p| {
                let field = p[0].clone();
                let field = field
                    .strip_prefix('\'')
                    .and_then(|f| f.strip_suffix('\''))
                    .map(str::to_owned)
                    .unwrap_or(field);
                (field, p.get(1).cloned().unwrap_or_default())
            })
            .collect();
        calls.push(Xadd { key, pairs });
    }
    calls
}

/// The top-level, comma-separated arguments of a call whose text starts
/// after its `(`, and how many bytes up to its `)` they took.
#[cfg(test)]
fn split_args(text: &str) -> (Vec<String>, usize) {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) => {
                cur.push(c);
                if c == q {
                    quote = None;
                }
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                cur.push(c);
            }
            (None, '(' | '{' | '[') => {
                depth += 1;
                cur.push(c);
            }
            (None, ')') if depth == 0 => {
                args.push(cur.trim().to_owned());
                return (args, i + 1);
            }
            (None, ')' | '}' | ']') => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            (None, ',') if depth == 0 => {
                args.push(cur.trim().to_owned());
                cur.clear();
            }
            (None, c) => cur.push(c),
        }
    }
    args.push(cur.trim().to_owned());
    (args, text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_known_placeholders_and_leaves_unknown_ones_to_be_found() {
        let t: &[(&str, &str)] = &[("A", "x"), ("B", "yy")];
        let out = render("-- {{A}}\nf('{{A}}', '{{B}}', '{{C}}') {{", &[t]);
        assert_eq!(out, "-- x\nf('x', 'yy', '{{C}}') {{");
        assert_eq!(unresolved(&out), vec!["{{C}}", "{{"]);
        assert!(unresolved(&render("{{A}}{{B}}", &[t])).is_empty());
    }

    #[test]
    fn scans_xadd_calls() {
        let calls = xadd_calls(
            "redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], seq .. '-0',\n  'id', ARGV[2], 'ts', f(a, b))\n\
             redis.call('XADD', KEYS[3], '*', unpack(f))",
        );
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].key, "KEYS[2]");
        assert_eq!(
            calls[0].pairs,
            vec![
                ("id".to_owned(), "ARGV[2]".to_owned()),
                ("ts".to_owned(), "f(a, b)".to_owned())
            ]
        );
        assert_eq!(
            calls[1].pairs,
            vec![("unpack(f)".to_owned(), String::new())]
        );
    }
}
