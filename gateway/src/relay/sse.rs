//! A reader of `text/event-stream` (the relay's SSE subscribe answer) with
//! a bound on every line and event, so a broken or hostile relay cannot make
//! the gateway buffer without limit. (The SSE crates we looked at buffer an
//! event of any size; the format is a few rules, written out here.)

/// One event: its `event:` type (`message` when absent) and its `data:`
/// lines joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("an event stream line or event is longer than {0} bytes")]
    TooLong(usize),
    #[error("the event stream is not UTF-8")]
    NotUtf8,
}

/// Incremental parser: feed it the body's chunks as they come.
pub struct SseParser {
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` starting the next one
    /// belongs to the same line break.
    after_cr: bool,
    event: String,
    data: String,
    max: usize,
}

impl SseParser {
    /// A parser refusing lines and events longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        SseParser {
            line: Vec::new(),
            after_cr: false,
            event: String::new(),
            data: String::new(),
            max,
        }
    }

    /// The events completed by `chunk`.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        for &b in chunk {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(ev) = self.line_done(&line)? {
                        out.push(ev);
                    }
                }
                _ => {
                    if self.line.len() >= self.max {
                        return Err(SseError::TooLong(self.max));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &[u8]) -> Result<Option<SseEvent>, SseError> {
        if line.is_empty() {
            // Dispatch.
            let event = std::mem::take(&mut self.event);
            let mut data = std::mem::take(&mut self.data);
            if data.is_empty() {
                return Ok(None);
            }
            data.pop(); // the last data line's `\n`
            let event = if event.is_empty() {
                "message".into()
            } else {
                event
            };
            return Ok(Some(SseEvent { event, data }));
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
        if line.starts_with(':') {
            return Ok(None); // a comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.data.len() + value.len() + 1 > self.max {
                    return Err(SseError::TooLong(self.max));
                }
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => {
                self.event.clear();
                self.event.push_str(value);
            }
            // `id` and `retry` are not used: a relay stream restarts from
            // now, and reconnect pacing is ours.
            _ => {}
        }
        Ok(None)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn events_across_chunks_and_line_endings() {
        let mut p = SseParser::new(1024);
        let mut got = p.push(b": keepalive\n\nid: 1\ndata: {\"a\"").unwrap();
        assert!(got.is_empty());
        got.extend(p.push(b":1}\r").unwrap());
        got.extend(p.push(b"\n\r\nevent: close\ndata:x\ndata: y\n\n").unwrap());
        assert_eq!(
            got,
            vec![
                SseEvent {
                    event: "message".into(),
                    data: r#"{"a":1}"#.into()
                },
                SseEvent {
                    event: "close".into(),
                    data: "x\ny".into()
                },
            ]
        );
    }

    #[test]
    fn long_lines_and_events_are_refused() {
        let mut p = SseParser::new(16);
        assert_eq!(p.push(&[b'x'; 17]), Err(SseError::TooLong(16)));
        let mut p = SseParser::new(16);
        assert_eq!(
            p.push(b"data: 0123456789\ndata: 0123456789\n"),
            Err(SseError::TooLong(16))
        );
        let mut p = SseParser::new(16);
        assert_eq!(p.push(b"data: \xff\n"), Err(SseError::NotUtf8));
    }
}
