//! The Deployments the operator builds start the binaries they name: every
//! fixture and example is built, and the gateway's and the worker's
//! container (command, args, `env`, and `envFrom` of the ConfigMaps the
//! operator builds next to them) is parsed with the binaries' real argument
//! parsers (`switchboard_gateway::args::GatewayArgs`,
//! `switchboard_worker::cli::Cli`), as the kubelet would start them: `$(VAR)`
//! in args expanded from the container's variables, and every variable fed
//! to the argument that reads it (`#[arg(env = …)]`).
//!
//! It also checks that the local images (`switchboard_testkit::node::images`)
//! carry the names the operator and the chart run by default.
//!
//! It fails when the operator writes a flag the binary does not accept, or
//! a variable no argument reads (only `RUST_LOG`, read by the logger, is
//! known to be read elsewhere), and when what the binary would run with
//! differs from the spec (domain, chain ids, drain window, session lifetime,
//! reserved channel patterns, CORS origins, the mounted token secret and relay file, the
//! pod identity).
#![allow(clippy::unwrap_used)]

mod clusters;

use std::collections::BTreeMap;
use std::path::Path;

use clap::{CommandFactory, FromArgMatches, Parser};
use clusters::clusters;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;
use switchboard_core::cors::CorsOrigin;
use switchboard_core::env;
use switchboard_gateway::args::GatewayCli;
use switchboard_operator::build::{self, Desired, Generated, Observed};

/// Variables read by something other than the argument parser.
const READ_ELSEWHERE: &[&str] = &[env::LOG];

/// A stand-in for a value the kubelet fills at run time (a Secret's key, a
/// pod field), shaped as the binaries expect it.
fn runtime_value(name: &str) -> String {
    match name {
        n if n == env::REDIS_URL => "redis://redis:6379".into(),
        n if n == env::REDIS_PASSWORD => "generated-redis-password".into(),
        n if n == env::DATABASE_URL => "postgres://u:p@db:5432/switchboard".into(),
        n if n == env::API_KEYS => "app.key1:secret".into(),
        n if n == env::RELAY_API_KEY => "appid.keyid:secret".into(),
        n if n == env::POD_NAME => "pod-0".into(),
        n if n == env::POD_NAMESPACE => "chat".into(),
        other => panic!("no stand-in value for {other}: add one"),
    }
}

/// The container's variables as the kubelet sets them: `envFrom`
/// ConfigMaps first, then `env` (which wins).
fn variables(c: &Container, d: &Desired, at: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for from in c.env_from.as_deref().unwrap_or_default() {
        let name = &from.config_map_ref.as_ref().unwrap().name;
        let cm = d
            .config_maps
            .iter()
            .find(|m| m.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{at}: envFrom names ConfigMap {name}, which is not built"));
        vars.extend(cm.data.clone().unwrap_or_default());
    }
    for e in c.env.as_deref().unwrap_or_default() {
        let v = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(_)) => runtime_value(&e.name),
            (None, None) => String::new(),
        };
        vars.insert(e.name.clone(), v);
    }
    vars
}

/// The kubelet's `$(VAR)` expansion in args.
fn expand(arg: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("$({k})"), v);
    }
    assert!(!out.contains("$("), "unexpanded variable in {arg:?}");
    out
}

/// argv for `cmd`: the container's args, then each variable as the flag of
/// the argument that reads it (unless the args already give that flag,
/// which wins as it does in clap). `sub` is the subcommand, if any.
fn argv(
    cmd: &clap::Command,
    sub: Option<&str>,
    c: &Container,
    vars: &BTreeMap<String, String>,
    at: &str,
) -> Vec<String> {
    let bin = c.command.as_ref().unwrap()[0].clone();
    let mut argv = vec![bin.clone()];
    argv.extend(
        c.args
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|a| expand(a, vars)),
    );
    let target = match sub {
        Some(s) => cmd
            .find_subcommand(s)
            .unwrap_or_else(|| panic!("{at}: {bin} has no subcommand {s}")),
        None => cmd,
    };
    for (name, value) in vars {
        // The subcommand's own arguments, then the top level's global ones
        // (the logging flags every binary takes).
        let arg = target
            .get_arguments()
            .chain(cmd.get_arguments().filter(|a| a.is_global_set()))
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()));
        let Some(arg) = arg else {
            assert!(
                READ_ELSEWHERE.contains(&name.as_str()),
                "{at}: the operator gives {bin} the variable {name}, which no argument of it reads"
            );
            continue;
        };
        let long = format!("--{}", arg.get_long().unwrap());
        if !argv.contains(&long) && !value.is_empty() {
            argv.push(long);
            argv.push(value.clone());
        }
    }
    argv
}

fn container<'a>(d: &'a Desired, name: &str) -> &'a Container {
    let dep: &Deployment = d
        .deployments
        .iter()
        .find(|x| x.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no Deployment {name}"));
    &dep.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

#[test]
fn the_gateway_runs_with_what_the_operator_writes() {
    let (mut checked, mut with_reserved, mut with_cors) = (0, 0, 0);
    for (path, cluster) in clusters() {
        let at = path.display().to_string();
        let d = build::desired(&cluster, &Observed::default(), &Generated::random()).unwrap();
        let name = cluster.metadata.name.clone().unwrap();
        let c = container(&d, &format!("{name}-gateway"));
        assert_eq!(
            c.command.as_deref(),
            Some(&["switchboard-gateway".to_string()][..]),
            "{at}"
        );
        let vars = variables(c, &d, &at);
        let argv = argv(&GatewayCli::command(), None, c, &vars, &at);
        let cli = GatewayCli::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("{at}: switchboard-gateway refuses {argv:?}: {e}"));
        assert_eq!(
            cli.log.log_format,
            cluster.spec.logging.format.to_core(),
            "{at}: log format"
        );
        let parsed = cli.args;

        let spec = &cluster.spec;
        assert_eq!(parsed.domain, spec.auth.domain, "{at}");
        let want: Vec<u64> = spec
            .auth
            .chain_ids
            .iter()
            .map(|c| u64::try_from(*c).unwrap())
            .collect();
        assert_eq!(parsed.chain_ids, want, "{at}");
        assert_eq!(
            parsed.drain_seconds,
            u64::try_from(spec.gateway.drain.timeout_seconds).unwrap(),
            "{at}"
        );
        assert_eq!(
            parsed.session_ttl.as_secs(),
            std::time::Duration::from(spec.auth.session_ttl).as_secs(),
            "{at}"
        );
        assert!(parsed.redis_url.is_some(), "{at}: no Redis URL");
        // A managed Redis requires the password from its Secret; an
        // external one's URL carries its own.
        assert_eq!(
            parsed.redis_password.is_some(),
            spec.redis.managed.is_some(),
            "{at}: Redis password"
        );
        assert!(parsed.database_url.is_some(), "{at}: no PostgreSQL URL");
        assert_eq!(parsed.pod_name.as_deref(), Some("pod-0"), "{at}");
        assert_eq!(parsed.pod_namespace.as_deref(), Some("chat"), "{at}");
        assert_eq!(parsed.cluster.as_deref(), Some(name.as_str()), "{at}");
        // The token secret and the relay file are where the pod mounts them.
        let mounts: Vec<&str> = c
            .volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        let mounted = |p: &Path| mounts.iter().any(|m| p.starts_with(m));
        let secret = parsed.token_secret_file.as_deref().unwrap();
        assert!(mounted(secret), "{at}: {} is not mounted", secret.display());
        assert_eq!(
            parsed.relay_config.is_some(),
            spec.fallback_relay.is_some(),
            "{at}"
        );
        if let Some(file) = parsed.relay_config.as_deref() {
            assert!(mounted(file), "{at}: {} is not mounted", file.display());
        }
        assert_eq!(
            parsed.api_keys.is_empty(),
            spec.gateway.api_keys_secret_ref.is_none(),
            "{at}"
        );
        let reserved: Vec<String> = parsed
            .reserved_channels
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(reserved, spec.gateway.reserved_channels, "{at}");
        if !reserved.is_empty() {
            with_reserved += 1;
        }
        // The origins as the gateway normalizes them: the spec's, parsed
        // with the same rule.
        let origins: Vec<String> = parsed
            .cors_origins
            .iter()
            .map(ToString::to_string)
            .collect();
        let want: Vec<String> = spec
            .gateway
            .cors
            .allowed_origins
            .iter()
            .map(|o| o.parse::<CorsOrigin>().unwrap().to_string())
            .collect();
        assert_eq!(origins, want, "{at}");
        if !origins.is_empty() {
            with_cors += 1;
        }
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} clusters checked");
    assert!(with_reserved >= 1, "no cluster reserves channels");
    assert!(with_cors >= 1, "no cluster allows CORS origins");
}

#[test]
fn the_worker_runs_with_what_the_operator_writes() {
    let mut checked = 0;
    for (path, cluster) in clusters() {
        let at = path.display().to_string();
        let d = build::desired(&cluster, &Observed::default(), &Generated::random()).unwrap();
        let name = cluster.metadata.name.clone().unwrap();
        let c = container(&d, &format!("{name}-worker"));
        assert_eq!(
            c.command.as_deref(),
            Some(&["switchboard-worker".to_string()][..]),
            "{at}"
        );
        let vars = variables(c, &d, &at);
        let sub = c.args.as_ref().and_then(|a| a.first()).map(String::as_str);
        let cmd = switchboard_worker::cli::Cli::command();
        let argv = argv(&cmd, sub, c, &vars, &at);
        let matches = cmd
            .try_get_matches_from(&argv)
            .unwrap_or_else(|e| panic!("{at}: switchboard-worker refuses {argv:?}: {e}"));
        let cli = switchboard_worker::cli::Cli::from_arg_matches(&matches)
            .unwrap_or_else(|e| panic!("{at}: switchboard-worker refuses {argv:?}: {e}"));
        assert_eq!(
            cli.log.log_format,
            cluster.spec.logging.format.to_core(),
            "{at}: log format"
        );
        let switchboard_worker::cli::Cmd::Run(run) = cli.cmd else {
            panic!("{at}: the worker does not `run`");
        };
        assert_eq!(
            run.redis_password.is_some(),
            cluster.spec.redis.managed.is_some(),
            "{at}: Redis password"
        );
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} clusters checked");
}

/// The check itself: a variable no argument reads, or a flag the binary
/// does not know, is caught.
#[test]
fn an_unknown_variable_or_flag_fails_the_contract() {
    let (path, cluster) = clusters().into_iter().next().unwrap();
    let at = path.display().to_string();
    let d = build::desired(&cluster, &Observed::default(), &Generated::random()).unwrap();
    let name = cluster.metadata.name.clone().unwrap();
    let mut c = container(&d, &format!("{name}-gateway")).clone();

    let mut vars = variables(&c, &d, &at);
    vars.insert("SWITCHBOARD_NOT_READ".into(), "1".into());
    let caught = std::panic::catch_unwind(|| argv(&GatewayCli::command(), None, &c, &vars, &at));
    assert!(caught.is_err(), "an unread variable passed the contract");

    c.args
        .get_or_insert_with(Vec::new)
        .push("--no-such-flag".into());
    let vars = variables(&c, &d, &at);
    let argv = argv(&GatewayCli::command(), None, &c, &vars, &at);
    assert!(GatewayCli::try_parse_from(&argv).is_err());
}

/// The images the local node builds (`switchboard_testkit::node::images`)
/// carry the names the operator and the chart run by default, so an e2e
/// ChatCluster without `spec.image` and the chart's default operator pod
/// find them.
#[test]
fn the_local_images_have_the_default_names() {
    use switchboard_testkit::image_names;
    assert_eq!(
        image_names::switchboard_image_name(),
        switchboard_operator::crd::DEFAULT_IMAGE
    );
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/switchboard-operator");
    let values = std::fs::read_to_string(chart.join("values.yaml")).unwrap();
    let chart_yaml = std::fs::read_to_string(chart.join("Chart.yaml")).unwrap();
    // The `image:` block: its indented lines.
    let image: Vec<&str> = values
        .lines()
        .skip_while(|l| *l != "image:")
        .skip(1)
        .take_while(|l| l.starts_with(' ') || l.is_empty())
        .map(str::trim)
        .collect();
    let repo = format!("repository: {}", image_names::OPERATOR_IMAGE_REPO);
    assert!(
        image.contains(&repo.as_str()) && image.contains(&"tag: \"\""),
        "the chart's image is {} with the tag from appVersion: {image:?}",
        image_names::OPERATOR_IMAGE_REPO
    );
    let name = image_names::operator_image_name();
    let (_, tag) = name.rsplit_once(':').unwrap();
    assert!(
        chart_yaml.contains(&format!("\nappVersion: \"{tag}\"\n")),
        "the chart's appVersion is {tag}"
    );
}
