//! Fallback relay: a ConfigMap with the relay's hosts, mounted into the
//! gateways. The API key stays in the user's Secret and reaches the gateways
//! as `SWITCHBOARD_RELAY_API_KEY` (see the gateway Deployment), so the
//! ConfigMap holds nothing secret.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use switchboard_core::relay as relay_file;

use super::{Ctx, Desired};
use crate::crd::RelayProvider;

pub const COMPONENT: &str = "relay";
/// Where gateways find the relay configuration.
pub const MOUNT_DIR: &str = "/etc/switchboard/relay";
pub const FILE: &str = relay_file::FILE_NAME;

pub fn build(ctx: &Ctx, out: &mut Desired) {
    out.config_maps.extend(config_map(ctx));
}

/// The relay ConfigMap, or `None` when the spec has no relay.
pub fn config_map(ctx: &Ctx) -> Option<ConfigMap> {
    let relay = ctx.cluster.spec.fallback_relay.as_ref()?;
    let provider = match relay.provider {
        RelayProvider::Ably => relay_file::RelayProvider::Ably,
        RelayProvider::Switchboard => relay_file::RelayProvider::Switchboard,
    };
    // The gateway parses this with the same type (and rejects unknown fields).
    let doc = relay_file::RelayFile {
        provider,
        hosts: relay.hosts.clone(),
        fallback_hosts: relay.fallback_hosts.clone(),
        api_key_env: relay
            .api_key_secret_ref
            .as_ref()
            .map(|_| relay_file::API_KEY_ENV.to_string()),
        tls: relay.tls,
    };
    // Serializing a plain struct of strings cannot fail.
    let text = serde_json::to_string(&doc).unwrap_or_default();
    Some(ConfigMap {
        metadata: ctx.meta(super::names::relay(ctx.cluster), COMPONENT),
        data: Some(BTreeMap::from([(FILE.to_string(), text)])),
        ..ConfigMap::default()
    })
}
