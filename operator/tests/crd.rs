//! `crds/chatcluster.yaml` (and the Helm chart's copy) must be exactly what
//! `switchboard-operator crd` prints, so the checked-in CRD never drifts from
//! the Rust types.

use std::path::PathBuf;

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

fn check(rel: &str) {
    let want = switchboard_operator::crd_yaml().expect("CRD serializes");
    let path = repo_file(rel);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &want).expect("write CRD");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{rel} is out of date with the ChatCluster Rust types.\n\
         Regenerate it: cargo run -p switchboard-operator -- crd > {rel}\n\
         (or UPDATE_GOLDEN=1 cargo test -p switchboard-operator --test crd)"
    );
}

#[test]
fn checked_in_crd_matches_the_rust_types() {
    check("crds/chatcluster.yaml");
}

#[test]
fn helm_chart_crd_matches_the_rust_types() {
    check("charts/switchboard-operator/crds/chatcluster.yaml");
}
