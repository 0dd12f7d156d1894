//! A TLS-terminating listener for tests (feature `tls`): a test CA, a
//! server certificate it signed for `localhost` and `127.0.0.1`, and a TCP
//! proxy that accepts TLS with it and forwards the plain bytes to an
//! upstream address (a gateway serving plain HTTP), as a load balancer or
//! an ingress terminating TLS would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::TestkitError;

fn err(what: &'static str) -> impl FnOnce(rcgen::Error) -> TestkitError {
    move |e| TestkitError::Other(format!("generate {what}: {e}"))
}

/// A CA and a server certificate it signed (`localhost`, `127.0.0.1`).
pub struct TestCa {
    ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
}

impl TestCa {
    pub fn generate() -> Result<TestCa, TestkitError> {
        let ca_key = KeyPair::generate().map_err(err("CA key"))?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err("CA params"))?;
        ca.distinguished_name
            .push(DnType::CommonName, "switchboard-test-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).map_err(err("CA certificate"))?;
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().map_err(err("server key"))?;
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(err("server params"))?;
        p.distinguished_name.push(DnType::CommonName, "localhost");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p
            .signed_by(&key, &issuer)
            .map_err(err("server certificate"))?;
        Ok(TestCa {
            ca_pem: ca_cert.pem(),
            server_chain: vec![cert.der().clone()],
            server_key: key.serialize_der(),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Write the CA certificate to `dir/ca.pem`.
    pub fn write_ca(&self, dir: &Path) -> Result<PathBuf, TestkitError> {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).map_err(|source| TestkitError::Io {
            what: format!("write {}", path.display()),
            source,
        })?;
        Ok(path)
    }

    fn acceptor(&self) -> Result<TlsAcceptor, TestkitError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_no_client_auth()
                    .with_single_cert(self.server_chain.clone(), key)
            })
            .map_err(|e| TestkitError::Other(format!("TLS server config: {e}")))?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Accepts TLS on a free local port and forwards each connection's bytes
/// to `upstream`. Stops when dropped.
pub struct TlsProxy {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsProxy {
    pub async fn start(ca: &TestCa, upstream: SocketAddr) -> Result<TlsProxy, TestkitError> {
        let acceptor = ca.acceptor()?;
        let listener =
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|source| TestkitError::Io {
                    what: "bind the TLS proxy".into(),
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| TestkitError::Io {
            what: "TLS proxy address".into(),
            source,
        })?;
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        Ok(TlsProxy { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://localhost:PORT` (the certificate names `localhost`).
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
