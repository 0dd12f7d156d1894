//! The control plane's PKI, generated fresh for every start: a CA, one serving
//! certificate (kube-apiserver and kube-controller-manager) for 127.0.0.1 /
//! localhost and the in-cluster `kubernetes` service names, the
//! service-account token signing key pair, and the aggregation layer's
//! front-proxy CA + client certificate (as kubeadm sets them up: components
//! that delegate authentication, like kube-controller-manager, expect them).
//! All keys are ECDSA P-256.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::TestkitError;

/// The first address of `--service-cluster-ip-range`: the `kubernetes` service.
pub(crate) const SERVICE_CIDR: &str = "10.0.0.0/24";
const KUBERNETES_SERVICE_IP: &str = "10.0.0.1";

/// PEM text of everything the components need.
pub(crate) struct Pki {
    /// Signs client certificates later ([`Pki::client_cert`]): a node's
    /// kubelet, kube-proxy and kube-scheduler authenticate with them.
    pub ca_issuer: Issuer<'static, KeyPair>,
    /// kube-apiserver's client certificate towards kubelets (logs, exec),
    /// in group `system:masters`, as kubeadm's `apiserver-kubelet-client`.
    pub kubelet_client_cert: String,
    pub kubelet_client_key: String,
    pub ca_cert: String,
    /// DER of the CA certificate, for the Rust-side TLS probe.
    pub ca_der: Vec<u8>,
    pub serving_cert: String,
    pub serving_key: String,
    pub sa_public_key: String,
    pub sa_private_key: String,
    pub front_proxy_ca_cert: String,
    pub front_proxy_client_cert: String,
    pub front_proxy_client_key: String,
}

/// The CN kube-apiserver accepts on front-proxy client certificates.
pub(crate) const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

fn pki_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> TestkitError {
    move |e| TestkitError::Other(format!("generate {what}: {e}"))
}

fn params(common_name: &str, sans: Vec<String>) -> Result<CertificateParams, TestkitError> {
    let mut p = CertificateParams::new(sans).map_err(pki_err("certificate parameters"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    // A little slack for clock differences; long enough for any test session.
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(365);
    Ok(p)
}

/// A self-signed CA: its certificate and an issuer for signing with it.
fn ca(common_name: &str) -> Result<(Certificate, Issuer<'static, KeyPair>), TestkitError> {
    let key = KeyPair::generate().map_err(pki_err("CA key"))?;
    let mut p = params(common_name, vec![])?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).map_err(pki_err("CA certificate"))?;
    Ok((cert, Issuer::new(p, key)))
}

impl Pki {
    /// `extra_san`: one more address for the serving certificate (see
    /// `ControlPlaneOptions::pod_reachable_address`).
    pub(crate) fn generate(extra_san: Option<&str>) -> Result<Pki, TestkitError> {
        let (ca_cert, issuer) = ca("switchboard-local-ca")?;

        let serving_key = KeyPair::generate().map_err(pki_err("serving key"))?;
        let sans = [
            "127.0.0.1",
            "localhost",
            KUBERNETES_SERVICE_IP,
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ];
        let mut serving_params = params(
            "kube-apiserver",
            sans.iter()
                .copied()
                .chain(extra_san)
                .map(str::to_string)
                .collect(),
        )?;
        serving_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        serving_params.use_authority_key_identifier_extension = true;
        let serving_cert = serving_params
            .signed_by(&serving_key, &issuer)
            .map_err(pki_err("serving certificate"))?;

        let sa_key = KeyPair::generate().map_err(pki_err("service-account key"))?;

        let (front_proxy_ca, front_proxy_issuer) = ca("switchboard-local-front-proxy-ca")?;
        let front_proxy_key = KeyPair::generate().map_err(pki_err("front-proxy key"))?;
        let mut front_proxy_params = params(FRONT_PROXY_CLIENT, vec![])?;
        front_proxy_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        front_proxy_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        front_proxy_params.use_authority_key_identifier_extension = true;
        let front_proxy_cert = front_proxy_params
            .signed_by(&front_proxy_key, &front_proxy_issuer)
            .map_err(pki_err("front-proxy client certificate"))?;

        let (kubelet_client_cert, kubelet_client_key) = client_cert(
            &issuer,
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
        )?;

        Ok(Pki {
            ca_issuer: issuer,
            kubelet_client_cert,
            kubelet_client_key,
            ca_cert: ca_cert.pem(),
            ca_der: ca_cert.der().to_vec(),
            serving_cert: serving_cert.pem(),
            serving_key: serving_key.serialize_pem(),
            sa_public_key: sa_key.public_key_pem(),
            sa_private_key: sa_key.serialize_pem(),
            front_proxy_ca_cert: front_proxy_ca.pem(),
            front_proxy_client_cert: front_proxy_cert.pem(),
            front_proxy_client_key: front_proxy_key.serialize_pem(),
        })
    }
}

/// A client certificate for user `common_name` in `group` (the API server
/// reads them from CN and O; rcgen keeps one O), signed by the control plane's CA: PEM of the
/// certificate and of its key.
pub(crate) fn client_cert(
    issuer: &Issuer<'static, KeyPair>,
    common_name: &str,
    group: Option<&str>,
) -> Result<(String, String), TestkitError> {
    let key = KeyPair::generate().map_err(pki_err("client key"))?;
    let mut p = params(common_name, vec![])?;
    if let Some(g) = group {
        p.distinguished_name.push(DnType::OrganizationName, g);
    }
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    let cert = p
        .signed_by(&key, issuer)
        .map_err(pki_err("client certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}
