//! The names of the project's own images, as the operator (its default
//! data-plane image, `switchboard_operator::crd::DEFAULT_IMAGE`) and the
//! chart (`image.repository`, tag `appVersion`) spell them, for the local
//! images (`node::images`, feature `node`). `operator/tests/contract.rs`
//! checks they agree.

/// Repository of the data-plane image (`switchboard`, `switchboard-gateway`,
/// `switchboard-worker`).
pub const SWITCHBOARD_IMAGE_REPO: &str = "ghcr.io/switchboard-dev/switchboard";
/// Repository of the operator's image.
pub const OPERATOR_IMAGE_REPO: &str = "ghcr.io/switchboard-dev/switchboard-operator";

/// `ghcr.io/switchboard-dev/switchboard:<workspace version>`: the image the
/// operator runs gateways and workers from when a ChatCluster names none.
pub fn switchboard_image_name() -> String {
    format!("{SWITCHBOARD_IMAGE_REPO}:{}", env!("CARGO_PKG_VERSION"))
}

/// `ghcr.io/switchboard-dev/switchboard-operator:<workspace version>`: the
/// chart's default operator image.
pub fn operator_image_name() -> String {
    format!("{OPERATOR_IMAGE_REPO}:{}", env!("CARGO_PKG_VERSION"))
}
