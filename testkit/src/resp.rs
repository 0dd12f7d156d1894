//! A minimal RESP client: enough to ping a server and read `CLUSTER INFO`
//! without pulling an async Redis client into sync set-up code.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Send one command to `addr` and return the reply rendered as text:
/// simple strings, errors (prefixed `-`), integers and bulk strings as they
/// are; arrays as their elements joined by newlines.
pub fn resp_command(addr: &str, args: &[&str]) -> std::io::Result<String> {
    resp_command_auth(addr, None, args)
}

/// [`resp_command`] on a connection that first sends `AUTH password` (when
/// given); a refused `AUTH` is an error.
pub fn resp_command_auth(
    addr: &str,
    password: Option<&str>,
    args: &[&str],
) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(s.try_clone()?);
    if let Some(password) = password {
        s.write_all(request(&["AUTH", password]).as_bytes())?;
        let reply = read_reply(&mut r)?;
        if reply.starts_with('-') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("AUTH refused: {reply}"),
            ));
        }
    }
    s.write_all(request(args).as_bytes())?;
    read_reply(&mut r)
}

fn request(args: &[&str]) -> String {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    req
}

fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(line.trim_end_matches("\r\n").to_owned())
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned())
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<String> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Ok(format!("-{rest}")),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad("bulk length"))?;
            if n < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            String::from_utf8(buf).map_err(|_| bad("utf8"))
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad("array length"))?;
            let mut parts = vec![];
            for _ in 0..n.max(0) {
                parts.push(read_reply(r)?);
            }
            Ok(parts.join("\n"))
        }
        _ => Err(bad("unknown reply type")),
    }
}
