//! TLS for `https://` and `wss://` gateways: rustls (with the `ring`
//! provider) and the platform's trust store through
//! rustls-platform-verifier, plus private CAs the app adds
//! ([`Tls::with_ca_file`], the CLI's `--ca-file`). One configuration serves
//! both the REST calls and the WebSocket.

use std::error::Error as StdError;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls_platform_verifier::Verifier;

use crate::error::ClientError;

/// Largest CA file read: a bundle of a few hundred certificates fits.
pub const MAX_CA_FILE_BYTES: u64 = 1 << 20;

/// How the certificates of `https://` / `wss://` gateways are checked: the
/// platform's trust store (the system's CA bundle on Linux, the OS verifier
/// on macOS and Windows), plus any CA added here. `Default` is the platform
/// store alone. Cheap to clone; the configuration is built on first use
/// and then shared.
#[derive(Clone, Default)]
pub struct Tls {
    extra_roots: Arc<Vec<CertificateDer<'static>>>,
    config: Arc<OnceLock<Arc<ClientConfig>>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

impl Tls {
    /// Also trust the CA certificates in `pem` (one or more `CERTIFICATE`
    /// blocks), e.g. a private CA that signed the gateway's certificate.
    pub fn with_ca_pem(&self, pem: &[u8]) -> Result<Tls, ClientError> {
        let bad = |m: String| ClientError::Tls(format!("CA certificates: {m}"));
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("unreadable PEM: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no -----BEGIN CERTIFICATE----- block".into()));
        }
        // Each must be usable as a trust anchor (parsable X.509).
        let mut store = rustls::RootCertStore::empty();
        for (i, c) in certs.iter().enumerate() {
            store.add(c.clone()).map_err(|e| {
                bad(format!(
                    "certificate {} is not a valid CA certificate: {e}",
                    i + 1
                ))
            })?;
        }
        let mut extra = (*self.extra_roots).clone();
        extra.extend(certs);
        Ok(Tls {
            extra_roots: Arc::new(extra),
            config: Arc::default(),
        })
    }

    /// [`Tls::with_ca_pem`] with the PEM file at `path` (at most
    /// [`MAX_CA_FILE_BYTES`]).
    pub fn with_ca_file(&self, path: &Path) -> Result<Tls, ClientError> {
        let at = path.display();
        let bad = |m: String| ClientError::Tls(format!("CA file {at}: {m}"));
        let len = std::fs::metadata(path)
            .map_err(|e| bad(format!("cannot read it: {e}")))?
            .len();
        if len > MAX_CA_FILE_BYTES {
            return Err(bad(format!(
                "{len} bytes; a CA file is at most {MAX_CA_FILE_BYTES} bytes"
            )));
        }
        let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        self.with_ca_pem(&pem).map_err(|e| match e {
            ClientError::Tls(m) => bad(m),
            other => other,
        })
    }

    /// CA certificates added to the platform's.
    pub fn extra_roots(&self) -> usize {
        self.extra_roots.len()
    }

    /// The rustls configuration: built once, then shared by every
    /// connection made with this `Tls` (and its clones).
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, ClientError> {
        if let Some(c) = self.config.get() {
            return Ok(c.clone());
        }
        let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            Verifier::new_with_extra_roots(self.extra_roots.iter().cloned(), provider.clone())
                .map_err(|e| ClientError::Tls(format!("no trusted CA certificates: {e}")))?;
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(format!("TLS versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(self.config.get_or_init(|| Arc::new(config)).clone())
    }
}

/// The TLS failure in an error's chain, if any, as a sentence that says
/// what to do about an untrusted certificate.
pub(crate) fn tls_failure(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = rustls_error(e) {
            return Some(describe(r));
        }
        cur = e.source();
    }
    None
}

/// `e` as a rustls error, also when wrapped in (layers of) `io::Error`,
/// whose `source()` skips the error it wraps.
fn rustls_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_error(inner)
}

pub(crate) fn describe(r: &rustls::Error) -> String {
    match r {
        rustls::Error::InvalidCertificate(c) => format!(
            "the gateway's certificate is not trusted ({c:?}): if a private CA signed it, trust that CA (Tls::with_ca_file, the CLI's --ca-file)"
        ),
        other => format!("TLS handshake failed: {other}"),
    }
}

/// An error and its sources, joined with `: `.
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_input_is_refused_clearly() {
        let t = Tls::default();
        let e = t.with_ca_pem(b"hello").unwrap_err().to_string();
        assert!(e.contains("no -----BEGIN CERTIFICATE-----"), "{e}");
        let e = t
            .with_ca_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid CA certificate"), "{e}");
        let e = t
            .with_ca_file(Path::new("/nonexistent/ca.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CA file /nonexistent/ca.pem: cannot read it"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("sb-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.pem");
        std::fs::write(&big, vec![b'a'; (MAX_CA_FILE_BYTES + 1) as usize]).unwrap();
        let e = t.with_ca_file(&big).unwrap_err().to_string();
        assert!(e.contains("at most 1048576 bytes"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
