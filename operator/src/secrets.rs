//! Reading one key of one Secret, by name: the managers' way to the URLs and
//! passwords a ChatCluster names (its `…SecretRef`s, and the Secrets the
//! reconciler generates). By name only — the operator never lists Secrets —
//! so its RBAC needs `get`, not `list`.

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use switchboard_core::broker::RedisTarget;

use crate::build::{self, Ctx};
use crate::crd::{ChatCluster, SecretKeyRef};

/// Why a Secret's value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The Secret or its key is missing or unusable; the message names it
    /// (never its value).
    #[error("{0}")]
    Missing(String),
    #[error(transparent)]
    Build(#[from] build::BuildError),
}

/// The value of `r` in namespace `ns`, trimmed.
pub async fn read_key(client: &Client, ns: &str, r: &SecretKeyRef) -> Result<String, SecretError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets
        .get_opt(&r.name)
        .await?
        .ok_or_else(|| SecretError::Missing(format!("Secret {:?} does not exist", r.name)))?;
    let bytes = secret
        .data
        .and_then(|mut d| d.remove(&r.key))
        .ok_or_else(|| {
            SecretError::Missing(format!("Secret {:?} has no key {:?}", r.name, r.key))
        })?;
    let value = String::from_utf8(bytes.0).map_err(|_| {
        SecretError::Missing(format!("Secret {:?} key {:?} is not UTF-8", r.name, r.key))
    })?;
    Ok(value.trim().to_string())
}

/// The Redis the cluster's gateways use, as they reach it: the external
/// Secret's URL, or the managed Redis's in-cluster URL and the password from
/// the Secret the reconciler generated (missing until the first reconcile
/// created it).
pub async fn redis_target(
    client: &Client,
    cluster: &ChatCluster,
) -> Result<RedisTarget, SecretError> {
    let ctx = Ctx::new(cluster)?;
    let redis = &cluster.spec.redis;
    match (&redis.managed, &redis.external) {
        (_, Some(ext)) => Ok(RedisTarget::from(
            read_key(client, &ctx.namespace, &ext.url_secret_ref).await?,
        )),
        (Some(managed), None) => {
            let password =
                read_key(client, &ctx.namespace, &build::redis::password_ref(&ctx)).await?;
            Ok(RedisTarget::new(
                build::redis::managed_url(&ctx, managed),
                Some(password),
            ))
        }
        (None, None) => Err(SecretError::Missing("the spec names no Redis".into())),
    }
}
