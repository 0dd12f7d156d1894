//! A tiny synchronous HTTP(S) GET for readiness checks (etcd `/health`,
//! kube-apiserver `/readyz`, kube-controller-manager `/healthz`), so starting
//! the control plane needs no async runtime and works from sync and async
//! tests alike. HTTPS verifies the server against the control plane's own CA.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::TestkitError;

const TIMEOUT: Duration = Duration::from_secs(3);

/// A TLS client configuration trusting only `ca_der`.
pub(crate) fn tls_config(ca_der: &[u8]) -> Result<Arc<ClientConfig>, TestkitError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| TestkitError::Other(format!("trust the control plane CA: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TestkitError::Other(format!("TLS client config: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `GET path` on 127.0.0.1:`port`; HTTPS when `tls` is given. Returns the
/// status code and the body (raw: chunked encoding is not decoded; it is only
/// used for status checks and error messages).
pub(crate) fn get(
    port: u16,
    path: &str,
    token: Option<&str>,
    tls: Option<&Arc<ClientConfig>>,
) -> io::Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let sock = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.set_write_timeout(Some(TIMEOUT))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    if let Some(t) = token {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");

    let raw = match tls {
        None => exchange(sock, &request)?,
        Some(config) => {
            let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
            let conn = ClientConnection::new(Arc::clone(config), name)
                .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
            exchange(StreamOwned::new(conn, sock), &request)?
        }
    };
    parse(&raw)
}

fn exchange(mut stream: impl Read + Write, request: &str) -> io::Result<Vec<u8>> {
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut buf = Vec::new();
    match stream.read_to_end(&mut buf) {
        Ok(_) => Ok(buf),
        // A peer that closes without TLS close_notify: the response is complete.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof && !buf.is_empty() => Ok(buf),
        Err(e) => Err(e),
    }
}

fn parse(raw: &[u8]) -> io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "no HTTP status line"))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_status_and_body() {
        let (status, body) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"));
        assert!(parse(b"garbage").is_err());
    }
}
