//! Fallback relay: a ConfigMap with the relay's hosts, mounted into the
//! gateways. The API key stays in the user's Secret and reaches the gateways
//! as `SWITCHBOARD_RELAY_API_KEY` (see the gateway Deployment), so the
//! ConfigMap holds nothing secret.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::{Ctx, Desired};
use crate::crd::RelayProvider;

pub const COMPONENT: &str = "relay";
pub const SUFFIX: &str = "relay";
/// Where gateways find the relay configuration.
pub const MOUNT_DIR: &str = "/etc/switchboard/relay";
pub const FILE: &str = "relay.json";

pub fn build(ctx: &Ctx, out: &mut Desired) {
    out.config_maps.extend(config_map(ctx));
}

/// The relay ConfigMap, or `None` when the spec has no relay.
pub fn config_map(ctx: &Ctx) -> Option<ConfigMap> {
    let relay = ctx.cluster.spec.fallback_relay.as_ref()?;
    let provider = match relay.provider {
        RelayProvider::Ably => "ably",
        RelayProvider::Switchboard => "switchboard",
    };
    let doc = serde_json::json!({
        "provider": provider,
        "hosts": relay.hosts,
        "fallbackHosts": relay.fallback_hosts,
        "apiKeyEnv": relay.api_key_secret_ref.as_ref().map(|_| "SWITCHBOARD_RELAY_API_KEY"),
    });
    Some(ConfigMap {
        metadata: ctx.meta(SUFFIX, COMPONENT),
        data: Some(BTreeMap::from([(FILE.to_string(), doc.to_string())])),
        ..ConfigMap::default()
    })
}
