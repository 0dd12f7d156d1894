//! Spec validation in the operator.
//!
//! The API server already enforces the CRD's schema and CEL rules, so a
//! manifest that reaches the reconciler normally passes these checks. They are
//! repeated here because the installed CRD may be older than the operator (or
//! installed with validation off), and because a few checks — quantities,
//! host syntax — are clearer in Rust than in CEL. An invalid spec sets the
//! Degraded condition and waits for the next change; it is never retried in a
//! loop.

use switchboard_core::cors::{self, CorsOrigin};
use switchboard_core::reserved::ReservedPattern;

use crate::crd::{ChatClusterSpec, RedisMode};

/// Longest ChatCluster name: children append `-postgres` and StatefulSet pods
/// append `-N` plus a revision hash that must fit a 63-character label.
pub const MAX_NAME: usize = 40;

/// Every problem with `spec`, as sentences naming the field; empty if valid.
pub fn validate(name: &str, spec: &ChatClusterSpec) -> Vec<String> {
    let mut errs = Vec::new();
    if name.len() > MAX_NAME {
        errs.push(format!(
            "metadata.name: at most {MAX_NAME} characters (child names append to it)"
        ));
    }

    if spec.auth.domain.is_empty() {
        errs.push("auth.domain: required".into());
    } else if spec.auth.domain.contains("://") || spec.auth.domain.contains('/') {
        errs.push("auth.domain: an authority (host[:port]), not a URL".into());
    }
    if spec.auth.chain_ids.is_empty() {
        errs.push("auth.chainIds: at least one chain id".into());
    }
    if spec.auth.chain_ids.iter().any(|&c| c <= 0) {
        errs.push("auth.chainIds: chain ids are positive".into());
    }

    let gw = &spec.gateway;
    if gw.replicas.min < 1 {
        errs.push("gateway.replicas.min: at least 1".into());
    }
    if gw.replicas.min > gw.replicas.max {
        errs.push("gateway.replicas: min must be less than or equal to max".into());
    }
    if gw.autoscaling.target_connections_per_replica < 1 {
        errs.push("gateway.autoscaling.targetConnectionsPerReplica: at least 1".into());
    }
    if !(1..=65535).contains(&gw.service.port) {
        errs.push("gateway.service.port: 1-65535".into());
    }
    if gw.drain.pre_stop_seconds < 0 || gw.drain.timeout_seconds < 1 {
        errs.push("gateway.drain: preStopSeconds ≥ 0 and timeoutSeconds ≥ 1".into());
    }
    for (i, p) in gw.reserved_channels.iter().enumerate() {
        if let Err(e) = p.parse::<ReservedPattern>() {
            errs.push(format!("gateway.reservedChannels[{i}]: {e}"));
        }
    }
    let origins = &gw.cors.allowed_origins;
    if origins.len() > cors::MAX_ORIGINS {
        errs.push(format!(
            "gateway.cors.allowedOrigins: at most {} origins (got {})",
            cors::MAX_ORIGINS,
            origins.len()
        ));
    }
    for (i, o) in origins.iter().enumerate() {
        if let Err(e) = o.parse::<CorsOrigin>() {
            errs.push(format!("gateway.cors.allowedOrigins[{i}]: {e}"));
        }
    }
    if spec.worker.replicas < 1 {
        errs.push("worker.replicas: at least 1".into());
    }

    match (&spec.redis.managed, &spec.redis.external) {
        (Some(_), Some(_)) | (None, None) => {
            errs.push("redis: set exactly one of managed and external".into())
        }
        (Some(m), None) => {
            if m.mode == RedisMode::Cluster && m.shards < 3 {
                errs.push("redis.managed.shards: at least 3 in cluster mode".into());
            }
            if m.replicas_per_shard < 0 {
                errs.push("redis.managed.replicasPerShard: 0 or more".into());
            }
            check_quantity(&m.storage.size, "redis.managed.storage.size", &mut errs);
            if let Err(e) = crate::build::redis::maxmemory(m) {
                errs.push(e);
            }
        }
        (None, Some(e)) => {
            if e.url_secret_ref.name.is_empty() {
                errs.push("redis.external.urlSecretRef.name: required".into());
            }
        }
    }

    let pg = &spec.postgres;
    match (&pg.managed, &pg.external) {
        (Some(_), Some(_)) | (None, None) => {
            errs.push("postgres: set exactly one of managed and external".into())
        }
        (Some(m), None) => {
            check_quantity(&m.storage.size, "postgres.managed.storage.size", &mut errs)
        }
        (None, Some(e)) => {
            if e.secret_ref.name.is_empty() {
                errs.push("postgres.external.secretRef.name: required".into());
            }
        }
    }
    let part = &pg.partitioning;
    if part.premake < 1 {
        errs.push("postgres.partitioning.premake: at least 1".into());
    }
    if part.retention_days <= part.interval.max_days() {
        errs.push(format!(
            "postgres.partitioning.retentionDays: must be longer than one {} partition ({} days)",
            part.interval.as_str(),
            part.interval.max_days()
        ));
    }

    if let Some(relay) = &spec.fallback_relay {
        if relay.hosts.is_empty() {
            errs.push("fallbackRelay.hosts: at least one host".into());
        }
        for h in relay.hosts.iter().chain(&relay.fallback_hosts) {
            if h.is_empty() || h.contains("://") || h.contains('/') || h.contains(' ') {
                errs.push(format!(
                    "fallbackRelay: {h:?} is not a host or host:port (no scheme, no path)"
                ));
            }
        }
        if relay.provider == crate::crd::RelayProvider::Ably && relay.api_key_secret_ref.is_none() {
            errs.push("fallbackRelay.apiKeySecretRef: required when provider is ably".into());
        }
    }

    check_pod(&spec.gateway.pod, "gateway.pod", &mut errs);
    check_pod(&spec.worker.pod, "worker.pod", &mut errs);
    if let Some(m) = &spec.redis.managed {
        check_pod(&m.pod, "redis.managed.pod", &mut errs);
    }
    if let Some(m) = &spec.postgres.managed {
        check_pod(&m.pod, "postgres.managed.pod", &mut errs);
    }

    let mon = &spec.monitoring;
    check_labels(&mon.labels, "monitoring.labels", &mut errs);
    if !(1..=60_000).contains(&mon.delivery_p99_target_millis) {
        errs.push("monitoring.deliveryP99TargetMillis: 1-60000".into());
    }
    if !(1..=100_000_000).contains(&mon.backlog_threshold) {
        errs.push("monitoring.backlogThreshold: 1-100000000".into());
    }
    errs
}

/// Longest annotation value a pod override may set (the API server caps
/// all of a pod's annotations at 256 KiB together).
pub const MAX_ANNOTATION_VALUE: usize = 4096;

/// A component's pod overrides: label syntax for labels and the node
/// selector, label-key syntax and a length for annotations, a DNS subdomain
/// for the priority class.
fn check_pod(o: &crate::crd::PodOverrides, field: &str, errs: &mut Vec<String>) {
    check_labels(&o.labels, &format!("{field}.labels"), errs);
    check_labels(&o.node_selector, &format!("{field}.nodeSelector"), errs);
    let keys_only: std::collections::BTreeMap<String, String> = o
        .annotations
        .keys()
        .map(|k| (k.clone(), String::new()))
        .collect();
    check_labels(&keys_only, &format!("{field}.annotations"), errs);
    for (k, v) in &o.annotations {
        if v.len() > MAX_ANNOTATION_VALUE {
            errs.push(format!(
                "{field}.annotations.{k}: at most {MAX_ANNOTATION_VALUE} bytes"
            ));
        }
    }
    if let Some(class) = &o.priority_class_name {
        let ok = !class.is_empty()
            && class.len() <= 253
            && class.split('.').all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !p.starts_with('-')
                    && !p.ends_with('-')
            });
        if !ok {
            errs.push(format!(
                "{field}.priorityClassName: {class:?} is not a PriorityClass name (lowercase DNS subdomain)"
            ));
        }
    }
    for (i, s) in o.image_pull_secrets.iter().enumerate() {
        if s.name.is_empty() {
            errs.push(format!("{field}.imagePullSecrets[{i}].name: required"));
        }
    }
}

/// Most labels (or annotations) one spec map may add.
pub const MAX_LABELS: usize = 16;

/// Kubernetes label syntax: keys `[prefix/]name` (a DNS subdomain prefix of
/// at most 253 characters, a name of at most 63 alphanumerics with `-_.`
/// inside), values empty or a name. The API server would refuse the child
/// with a 422; this names the field instead.
pub fn check_labels(
    labels: &std::collections::BTreeMap<String, String>,
    field: &str,
    errs: &mut Vec<String>,
) {
    if labels.len() > MAX_LABELS {
        errs.push(format!(
            "{field}: at most {MAX_LABELS} entries (got {})",
            labels.len()
        ));
    }
    fn name_ok(n: &str) -> bool {
        let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        n.len() <= 63
            && edge(n.chars().next())
            && edge(n.chars().last())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    }
    fn prefix_ok(p: &str) -> bool {
        p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    }
    for (k, v) in labels {
        let key_ok = match k.split_once('/') {
            Some((prefix, name)) => prefix_ok(prefix) && name_ok(name),
            None => name_ok(k),
        };
        if !key_ok {
            errs.push(format!(
                "{field}: {k:?} is not a label key ([prefix/]name: name up to 63 alphanumerics and -_. inside)"
            ));
        }
        if !(v.is_empty() || name_ok(v)) {
            errs.push(format!(
                "{field}.{k}: {v:?} is not a label value (up to 63 alphanumerics and -_. inside)"
            ));
        }
    }
}

/// A loose check of a Kubernetes quantity (`10Gi`, `500M`, `1e9`): digits,
/// an optional fraction, an optional suffix. The API server has the final say
/// when the StatefulSet is applied; this catches typos with a clearer message.
fn check_quantity(q: &str, field: &str, errs: &mut Vec<String>) {
    const SUFFIXES: [&str; 14] = [
        "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E", "m",
    ];
    let digits_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(digits_end);
    let number_ok = !number.is_empty() && number.parse::<f64>().is_ok();
    let suffix_ok = SUFFIXES.contains(&suffix)
        || (suffix.starts_with(['e', 'E']) && suffix[1..].parse::<i32>().is_ok());
    if !(number_ok && suffix_ok) {
        errs.push(format!("{field}: {q:?} is not a quantity like 10Gi"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::*;

    fn spec() -> ChatClusterSpec {
        serde_json::from_value(serde_json::json!({"auth": {"domain": "chat.example.com"}})).unwrap()
    }

    #[test]
    fn monitoring_labels_and_thresholds() {
        let mut s = spec();
        s.monitoring.labels = [
            ("release", "kube-prometheus-stack"),
            ("example.com/team", "chat"),
            ("empty", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(validate("chat", &s), Vec::<String>::new());
        for (k, v, want) in [
            ("-bad", "x", "is not a label key"),
            ("Example.com/x", "x", "is not a label key"),
            ("ok", "has space", "is not a label value"),
            ("ok", &"v".repeat(64), "is not a label value"),
            ("a/b/c", "x", "is not a label key"),
        ] {
            let mut s = spec();
            s.monitoring.labels.insert(k.into(), v.into());
            let errs = validate("chat", &s);
            assert!(errs.iter().any(|e| e.contains(want)), "{k}={v}: {errs:?}");
        }
        let mut s = spec();
        s.monitoring.labels = (0..17).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(
            validate("chat", &s)
                .iter()
                .any(|e| e.contains("at most 16"))
        );
        let mut s = spec();
        s.monitoring.delivery_p99_target_millis = 0;
        assert!(
            validate("chat", &s)
                .iter()
                .any(|e| e.contains("deliveryP99TargetMillis"))
        );
    }

    #[test]
    fn pod_overrides_are_checked() {
        let mut s = spec();
        s.gateway.pod.labels.insert("team".into(), "chat".into());
        s.gateway
            .pod
            .annotations
            .insert("example.com/note".into(), "any text: at all".into());
        s.gateway.pod.priority_class_name = Some("platform-critical".into());
        assert_eq!(validate("chat", &s), Vec::<String>::new());
        s.gateway.pod.priority_class_name = Some("Not_A_Class".into());
        s.worker
            .pod
            .node_selector
            .insert("zone".into(), "has space".into());
        s.redis
            .managed
            .as_mut()
            .unwrap()
            .pod
            .annotations
            .insert("bad key!".into(), "v".into());
        let errs = validate("chat", &s);
        for want in [
            "gateway.pod.priorityClassName",
            "worker.pod.nodeSelector.zone",
            "redis.managed.pod.annotations: \"bad key!\"",
        ] {
            assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(validate("chat", &spec()), Vec::<String>::new());
    }

    #[test]
    fn min_above_max() {
        let mut s = spec();
        s.gateway.replicas = ReplicaRange { min: 5, max: 2 };
        let errs = validate("chat", &s);
        assert!(
            errs.iter().any(|e| e.contains("min must be less")),
            "{errs:?}"
        );
    }

    #[test]
    fn exactly_one_backend() {
        let mut s = spec();
        s.redis.external = Some(ExternalRedis {
            url_secret_ref: SecretKeyRef {
                name: "r".into(),
                key: "url".into(),
            },
        });
        s.postgres.managed = None;
        let errs = validate("chat", &s);
        assert!(errs.iter().any(|e| e.starts_with("redis:")), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("postgres:")), "{errs:?}");
    }

    #[test]
    fn retention_must_exceed_interval() {
        let mut s = spec();
        s.postgres.partitioning.interval = PartitionInterval::Weekly;
        s.postgres.partitioning.retention_days = 7;
        assert_eq!(validate("chat", &s).len(), 1);
        s.postgres.partitioning.retention_days = 8;
        assert!(validate("chat", &s).is_empty());
    }

    #[test]
    fn cluster_needs_three_shards() {
        let mut s = spec();
        let m = s.redis.managed.as_mut().unwrap();
        m.mode = RedisMode::Cluster;
        m.shards = 2;
        assert_eq!(validate("chat", &s).len(), 1);
    }

    #[test]
    fn relay_hosts_and_key() {
        let mut s = spec();
        s.fallback_relay = Some(FallbackRelaySpec {
            provider: RelayProvider::Ably,
            hosts: vec!["https://rest.ably.io".into()],
            fallback_hosts: vec![],
            api_key_secret_ref: None,
            tls: true,
        });
        let errs = validate("chat", &s);
        assert_eq!(errs.len(), 2, "{errs:?}");
    }

    #[test]
    fn cors_origins() {
        let mut s = spec();
        s.gateway.cors.allowed_origins = vec!["https://app.example.com".into(), "*".into()];
        assert!(
            validate("chat", &s).is_empty(),
            "{:?}",
            validate("chat", &s)
        );
        s.gateway
            .cors
            .allowed_origins
            .push("https://app.example.com/".into());
        let errs = validate("chat", &s);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("gateway.cors.allowedOrigins[2]: ")
                && errs[0].contains("trailing slash"),
            "{errs:?}"
        );
        s.gateway.cors.allowed_origins = (0..33).map(|i| format!("https://a{i}.example")).collect();
        let errs = validate("chat", &s);
        assert_eq!(
            errs,
            ["gateway.cors.allowedOrigins: at most 32 origins (got 33)"]
        );
    }

    #[test]
    fn reserved_channel_patterns() {
        let mut s = spec();
        s.gateway.reserved_channels = vec!["announcements:*".into(), "ops".into()];
        assert!(validate("chat", &s).is_empty());
        s.gateway.reserved_channels.push("bad name".into());
        let errs = validate("chat", &s);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("gateway.reservedChannels[2]: "),
            "{errs:?}"
        );
    }

    #[test]
    fn managed_redis_needs_a_usable_memory_limit() {
        use k8s_openapi::api::core::v1::ResourceRequirements;
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let with = |limits: Option<(&str, &str)>| {
            let mut s = spec();
            if let Some(m) = s.redis.managed.as_mut() {
                m.resources = Some(ResourceRequirements {
                    limits: limits.map(|(k, v)| {
                        std::collections::BTreeMap::from([(k.to_string(), Quantity(v.into()))])
                    }),
                    ..ResourceRequirements::default()
                });
            }
            validate("chat", &s)
        };
        assert!(with(Some(("memory", "2Gi"))).is_empty());
        let none = with(None);
        assert!(
            none.iter().any(|e| e.contains("limits.memory: required")),
            "{none:?}"
        );
        let cpu_only = with(Some(("cpu", "1")));
        assert!(
            cpu_only.iter().any(|e| e.contains("limits.memory")),
            "{cpu_only:?}"
        );
        let bad = with(Some(("memory", "lots")));
        assert!(bad.iter().any(|e| e.contains("not a quantity")), "{bad:?}");
        let tiny = with(Some(("memory", "16Mi")));
        assert!(tiny.iter().any(|e| e.contains("too small")), "{tiny:?}");
    }

    #[test]
    fn quantities_and_names() {
        let mut s = spec();
        s.redis.managed.as_mut().unwrap().storage.size = "10 GB".into();
        let errs = validate(&"x".repeat(41), &s);
        assert_eq!(errs.len(), 2, "{errs:?}");
        for ok in ["10Gi", "500M", "1.5Gi", "1e9", "100"] {
            let mut e = Vec::new();
            check_quantity(ok, "f", &mut e);
            assert!(e.is_empty(), "{ok}");
        }
    }
}
