//! `crds/chatcluster.yaml` and the Helm chart's template of it must be
//! exactly what `switchboard-operator crd` (`--helm-template`) prints, so
//! neither checked-in copy drifts from the Rust types (the one source).

use std::path::PathBuf;

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

fn check(rel: &str, want: String) {
    let path = repo_file(rel);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &want).expect("write CRD");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{rel} is out of date with the ChatCluster Rust types.\n\
         Regenerate it: cargo run -p switchboard-operator -- crd [--helm-template] > {rel}\n\
         (or UPDATE_GOLDEN=1 cargo test -p switchboard-operator --test crd)"
    );
}

#[test]
fn checked_in_crd_matches_the_rust_types() {
    check(
        "crds/chatcluster.yaml",
        switchboard_operator::crd_yaml().expect("CRD serializes"),
    );
}

#[test]
fn helm_chart_crd_matches_the_rust_types() {
    check(
        "charts/switchboard-operator/templates/crd-chatcluster.yaml",
        switchboard_operator::crd_chart_template().expect("CRD template renders"),
    );
}

/// The chart's copy differs from `crds/` only by what makes it a template:
/// the `crds.install` guard and the keep annotation. Same schema, same
/// names, same printer columns.
#[test]
fn helm_chart_crd_is_the_same_crd() {
    let plain: serde_json::Value =
        serde_norway::from_str(&switchboard_operator::crd_yaml().unwrap()).unwrap();
    let template = switchboard_operator::crd_chart_template().unwrap();
    let body: String = template
        .lines()
        .filter(|l| !l.starts_with("{{"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut chart: serde_json::Value = serde_norway::from_str(&body).unwrap();
    let annotations = chart["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations")
        .unwrap();
    assert_eq!(
        annotations,
        serde_json::json!({"helm.sh/resource-policy": "keep"})
    );
    assert_eq!(chart, plain);
}
