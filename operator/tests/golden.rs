//! Golden tests of the pure builders: each `fixtures/NAME.yaml` ChatCluster
//! must build exactly the objects in `golden/NAME.yaml`.
//!
//! After an intended change, regenerate and review the diff:
//! `UPDATE_GOLDEN=1 cargo test -p switchboard-operator --test golden`.

use std::path::{Path, PathBuf};

use serde::Serialize;
use switchboard_operator::ChatCluster;
use switchboard_operator::build::{self, Desired, Generated, Observed};

fn dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(sub)
}

/// Fixed "random" material so the output is reproducible.
fn generated() -> Generated {
    Generated {
        session_key: b"0123456789abcdef0123456789abcdef".to_vec(),
        postgres_password: "fixture-password".into(),
        redis_password: "fixture-redis-password".into(),
    }
}

fn push<T: Serialize>(out: &mut String, objs: &[T]) {
    for o in objs {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(o).expect("serialize"));
    }
}

fn render(d: &Desired) -> String {
    let mut out = String::new();
    push(&mut out, &d.config_maps);
    push(&mut out, &d.generated_secrets);
    push(&mut out, &d.services);
    push(&mut out, &d.stateful_sets);
    push(&mut out, &d.deployments);
    push(&mut out, &d.pdbs);
    push(&mut out, &d.network_policies);
    push(&mut out, &d.monitoring);
    out
}

#[test]
fn builders_match_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(dir("fixtures"))
        .expect("fixtures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    fixtures.sort();
    assert!(!fixtures.is_empty());
    let mut drifted = Vec::new();
    for fixture in fixtures {
        let text = std::fs::read_to_string(&fixture).expect("read fixture");
        let cluster: ChatCluster = serde_norway::from_str(&text).expect("fixture parses");
        let problems = switchboard_operator::validate::validate(
            cluster.metadata.name.as_deref().unwrap_or_default(),
            &cluster.spec,
        );
        assert!(problems.is_empty(), "{}: {problems:?}", fixture.display());
        let observed = Observed {
            operator_namespace: Some("switchboard-system".into()),
            ..Observed::default()
        };
        let desired = build::desired(&cluster, &observed, &generated()).expect("builds");
        // Pruning finds generated Secrets by name (the operator may not
        // list Secrets): every one built must be among those names.
        let known = build::names::generated_secrets(&cluster);
        for s in &desired.generated_secrets {
            let name = s.metadata.name.clone().unwrap_or_default();
            assert!(
                known.contains(&name),
                "{}: Secret {name} is not in names::generated_secrets",
                fixture.display()
            );
        }
        let got = render(&desired);
        let golden = dir("golden").join(fixture.file_name().expect("name"));
        if update {
            std::fs::write(&golden, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if want != got {
            drifted.push(golden.display().to_string());
        }
    }
    assert!(
        drifted.is_empty(),
        "built objects differ from {drifted:?}.\n\
         If the change is intended: UPDATE_GOLDEN=1 cargo test -p switchboard-operator --test golden, \
         then review the diff."
    );
}
