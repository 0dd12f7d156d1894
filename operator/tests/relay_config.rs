//! The relay ConfigMap the operator builds is what the gateway accepts: every
//! fixture and example with a `fallbackRelay` is built, and its `relay.json`
//! goes through the gateway's own parser and validation
//! (`switchboard_gateway::relay::RelayConfig`), with the API key where the
//! Deployment puts it. Both sides share `switchboard_core::relay::RelayFile`;
//! this catches drift in everything around it (the env var names, the mount
//! path, the validation rules vs. what the CRD lets through).
#![allow(clippy::unwrap_used)]

mod clusters;

use clusters::clusters;
use switchboard_gateway::relay::{API_KEY_ENV, RelayConfig, RelayProvider};
use switchboard_operator::build::{self, Generated, Observed};

#[test]
fn the_gateway_accepts_the_relay_config_the_operator_writes() {
    let mut checked = 0;
    for (path, cluster) in clusters() {
        let Some(spec) = cluster.spec.fallback_relay.as_ref() else {
            continue;
        };
        let at = path.display();
        let d = build::desired(&cluster, &Observed::default(), &Generated::random()).unwrap();
        let name = cluster.metadata.name.as_deref().unwrap();
        let cm = d
            .config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(&format!("{name}-relay")))
            .unwrap_or_else(|| panic!("{at}: no relay ConfigMap"));
        let json = &cm.data.as_ref().unwrap()["relay.json"];

        // The Deployment maps the Secret to the variable the file names.
        let gw = d
            .deployments
            .iter()
            .find(|x| x.metadata.name.as_deref() == Some(&format!("{name}-gateway")))
            .unwrap();
        let pod = gw.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let container = &pod.containers[0];
        let env = container.env.as_deref().unwrap_or_default();
        let key_in_env = env.iter().any(|e| {
            e.name == API_KEY_ENV
                && e.value_from
                    .as_ref()
                    .is_some_and(|v| v.secret_key_ref.is_some())
        });
        assert_eq!(
            key_in_env,
            spec.api_key_secret_ref.is_some(),
            "{at}: {API_KEY_ENV} in the gateway env"
        );
        let key = key_in_env.then(|| "appid.keyid:fixture-secret".to_string());
        let relay = RelayConfig::parse(json, key)
            .unwrap_or_else(|e| panic!("{at}: the gateway rejects {json}: {e}"));
        assert_eq!(relay.hosts().len(), spec.hosts.len(), "{at}");
        assert_eq!(
            relay.fallback_hosts().len(),
            spec.fallback_hosts.len(),
            "{at}"
        );
        assert_eq!(
            relay.provider().as_str(),
            serde_json::to_value(spec.provider).unwrap(),
            "{at}"
        );
        if spec.api_key_secret_ref.is_some() {
            // Without the Secret mapped in, the gateway refuses to start.
            assert!(RelayConfig::parse(json, None).is_err(), "{at}");
        }

        // The gateway finds the file: SWITCHBOARD_RELAY_CONFIG (from the
        // gateway ConfigMap, envFrom) points into the relay mount.
        let gw_cm = d
            .config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(&format!("{name}-gateway")))
            .unwrap();
        let file = &gw_cm.data.as_ref().unwrap()["SWITCHBOARD_RELAY_CONFIG"];
        let mount = container
            .volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|m| m.name == "relay")
            .unwrap_or_else(|| panic!("{at}: no relay mount"));
        assert_eq!(file, &format!("{}/relay.json", mount.mount_path), "{at}");
        checked += 1;
        if relay.provider() == RelayProvider::Ably {
            assert!(relay.api_key().is_some(), "{at}");
        }
    }
    // production + external fixtures, the production example.
    assert!(checked >= 3, "only {checked} clusters with a relay");
}
