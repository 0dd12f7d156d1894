//! The local Kubernetes control plane (feature `kube`). All tests share one
//! control plane (`ControlPlane::shared`) and work in namespaces of their own.
#![cfg(feature = "kube")]
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use switchboard_testkit::ControlPlane;

async fn namespace(client: &Client, name: &str) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

fn config_map(name: &str, owner: Option<&ConfigMap>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: owner.map(|o| {
                vec![OwnerReference {
                    api_version: ConfigMap::api_version(&()).into(),
                    kind: ConfigMap::kind(&()).into(),
                    name: o.name_any(),
                    uid: o.uid().unwrap(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn lists_the_system_namespaces() {
    let cp = ControlPlane::shared().unwrap();
    let client = cp.client().await.unwrap();
    let names: Vec<String> = Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    for expected in ["default", "kube-system", "kube-public"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    assert!(cp.server_url().starts_with("https://127.0.0.1:"));
    assert!(cp.kubeconfig_path().is_file());
}

/// Deleting an owner makes the controller-manager's garbage collector delete
/// its dependents: proof that kube-controller-manager runs and is authorized.
#[tokio::test]
async fn garbage_collector_deletes_dependents() {
    let cp = ControlPlane::shared().unwrap();
    let client = cp.client().await.unwrap();
    namespace(&client, "cp-gc").await;
    let cms = Api::<ConfigMap>::namespaced(client, "cp-gc");
    let owner = cms
        .create(&PostParams::default(), &config_map("owner", None))
        .await
        .unwrap();
    cms.create(
        &PostParams::default(),
        &config_map("dependent", Some(&owner)),
    )
    .await
    .unwrap();

    cms.delete("owner", &Default::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cms.get_opt("dependent").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "dependent ConfigMap still there after 60 s; logs:\n{}",
            cp.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn server_side_apply_with_a_field_manager() {
    let cp = ControlPlane::shared().unwrap();
    let client = cp.client().await.unwrap();
    namespace(&client, "cp-ssa").await;
    let cms = Api::<ConfigMap>::namespaced(client, "cp-ssa");
    let desired = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": "applied" },
        "data": { "replicas": "3" },
    });
    let params = PatchParams::apply("switchboard-test").force();
    let cm = cms
        .patch("applied", &params, &Patch::Apply(&desired))
        .await
        .unwrap();
    assert_eq!(cm.data.unwrap()["replicas"], "3");
    let managers: Vec<String> = cm
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.operation.as_deref() == Some("Apply"))
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["switchboard-test"]);

    // A second manager that conflicts is refused unless it forces.
    let other = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": "applied" },
        "data": { "replicas": "5" },
    });
    let err = cms
        .patch(
            "applied",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&other),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_bad_token_gets_401() {
    let cp = ControlPlane::shared().unwrap();
    let client = cp.client_with_token("not-a-valid-token").await.unwrap();
    let err = Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 401),
        "{err:?}"
    );
}

/// RBAC is on: an authenticated user without bindings is forbidden.
#[tokio::test]
async fn rbac_forbids_an_unbound_service_account() {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;

    let cp = ControlPlane::shared().unwrap();
    let client = cp.client().await.unwrap();
    namespace(&client, "cp-rbac").await;
    let sas = Api::<ServiceAccount>::namespaced(client, "cp-rbac");
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("nobody".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let token = sas
        .create_token_request("nobody", &PostParams::default(), &TokenRequest::default())
        .await
        .unwrap()
        .status
        .unwrap()
        .token;

    let as_sa = cp.client_with_token(&token).await.unwrap();
    let err = Api::<ConfigMap>::namespaced(as_sa, "cp-rbac")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err:?}"
    );
}

/// A control plane of its own: drop stops every process and removes the dir.
#[test]
fn drop_stops_everything() {
    let cp = ControlPlane::start().unwrap();
    let dir = cp.dir().to_path_buf();
    let port = cp.port();
    assert!(dir.is_dir());
    drop(cp);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "kube-apiserver still listening on {port}"
    );
}
