//! Every ChatCluster the tests build: the fixtures and the examples' (other
//! kinds among the examples are skipped), with
//! the metadata the API server would add (namespace, uid).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use switchboard_operator::ChatCluster;

pub fn clusters() -> Vec<(PathBuf, ChatCluster)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in [root.join("tests/fixtures"), root.join("../examples")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if !path.to_string_lossy().ends_with(".yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // The examples hold other kinds too (an Ingress in front of the
            // production cluster).
            let doc: serde_json::Value = serde_norway::from_str(&text).unwrap();
            if doc["kind"] != "ChatCluster" {
                continue;
            }
            let mut c: ChatCluster = serde_norway::from_str(&text).unwrap();
            c.metadata.namespace.get_or_insert_with(|| "default".into());
            c.metadata
                .uid
                .get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
            out.push((path, c));
        }
    }
    out
}
