//! The shipped examples parse as ChatClusters, pass validation and build.

use std::path::Path;

use switchboard_operator::ChatCluster;
use switchboard_operator::build::{self, Generated, Observed};

#[test]
fn examples_are_valid_chatclusters() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if !path.to_string_lossy().ends_with(".yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let mut cluster: ChatCluster =
            serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = cluster.metadata.name.clone().expect("name");
        let problems = switchboard_operator::validate::validate(&name, &cluster.spec);
        assert!(problems.is_empty(), "{}: {problems:?}", path.display());
        // What the API server would add.
        cluster.metadata.namespace = Some("default".into());
        cluster.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
        build::desired(&cluster, &Observed::default(), &Generated::random()).expect("builds");
        seen += 1;
    }
    assert_eq!(seen, 3, "every example checked");
}
