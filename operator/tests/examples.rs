//! The shipped examples parse, pass validation and build: every ChatCluster,
//! and every Ingress (`<example>-ingress.yaml`, next to the ChatCluster of
//! `<example>.yaml`) routes that cluster's domain, over TLS, to the gateway
//! Service the operator builds for it.

use std::path::{Path, PathBuf};

use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use switchboard_operator::ChatCluster;
use switchboard_operator::build::{self, Desired, Generated, Observed};

fn examples() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".yaml"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read");
            (path, text)
        })
        .collect();
    out.sort();
    out
}

fn kind_of(path: &Path, text: &str) -> String {
    let value: serde_norway::Value =
        serde_norway::from_str(text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    value["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no kind", path.display()))
        .to_string()
}

#[test]
fn examples_are_valid_chatclusters_and_ingresses() {
    let mut clusters: Vec<(PathBuf, ChatCluster, Desired)> = Vec::new();
    let mut ingresses: Vec<(PathBuf, Ingress)> = Vec::new();
    for (path, text) in examples() {
        match kind_of(&path, &text).as_str() {
            "ChatCluster" => {
                let mut cluster: ChatCluster = serde_norway::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let name = cluster.metadata.name.clone().expect("name");
                let problems = switchboard_operator::validate::validate(&name, &cluster.spec);
                assert!(problems.is_empty(), "{}: {problems:?}", path.display());
                // What the API server would add.
                cluster.metadata.namespace = Some("default".into());
                cluster.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
                let desired = build::desired(&cluster, &Observed::default(), &Generated::random())
                    .expect("builds");
                clusters.push((path, cluster, desired));
            }
            "Ingress" => {
                let ingress: Ingress = serde_norway::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                ingresses.push((path, ingress));
            }
            other => panic!("{}: unexpected kind {other}", path.display()),
        }
    }
    assert_eq!(clusters.len(), 4, "every ChatCluster example checked");
    assert_eq!(ingresses.len(), 1, "every Ingress example checked");

    for (path, ingress) in &ingresses {
        let spec = ingress.spec.as_ref().expect("spec");
        let tls_hosts: Vec<&String> = spec
            .tls
            .iter()
            .flatten()
            .flat_map(|t| t.hosts.iter().flatten())
            .collect();
        for rule in spec.rules.iter().flatten() {
            let host = rule.host.as_ref().expect("host");
            assert!(
                tls_hosts.contains(&host),
                "{}: {host} is served without TLS",
                path.display()
            );
            let cluster_file = path.to_string_lossy().replace("-ingress.yaml", ".yaml");
            let (_, cluster, desired) = clusters
                .iter()
                .find(|(p, _, _)| p.to_string_lossy() == cluster_file)
                .unwrap_or_else(|| panic!("{}: no {cluster_file}", path.display()));
            // Sign-in messages name the domain: the host must be it.
            assert_eq!(host, &cluster.spec.auth.domain, "{}", path.display());
            let service = desired
                .services
                .iter()
                .find(|s| s.name_any() == build::names::gateway(cluster))
                .expect("the gateway Service");
            let ports = service
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .expect("ports");
            for p in rule.http.iter().flat_map(|h| &h.paths) {
                let backend = p.backend.service.as_ref().expect("a Service backend");
                assert_eq!(backend.name, service.name_any(), "{}", path.display());
                let port = backend.port.as_ref().expect("port");
                assert!(
                    ports
                        .iter()
                        .any(|sp| (port.name.is_some() && sp.name == port.name)
                            || port.number == Some(sp.port)),
                    "{}: port {port:?} is not one of the gateway Service's {ports:?}",
                    path.display()
                );
            }
        }
    }
}
