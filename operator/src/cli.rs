//! The `switchboard-operator` command line: `run` the controller or print
//! the `crd`, and how `run`'s flags become a [`RunConfig`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::partitions::PartitionsConfig;
use crate::redis_manager::RedisConfig;
use crate::run::RunConfig;

#[derive(Parser)]
#[command(
    name = "switchboard-operator",
    version,
    about = "Kubernetes operator for Switchboard ChatClusters"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
    #[command(flatten)]
    pub log: switchboard_core::telemetry::LogArgs,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Reconcile ChatClusters (KUBECONFIG, or the in-cluster service account)
    Run(RunArgs),
    /// Print the ChatCluster CustomResourceDefinition as YAML
    Crd(CrdArgs),
}

#[derive(Args)]
pub struct CrdArgs {
    /// Print it as the Helm chart's template (behind `crds.install`,
    /// annotated `helm.sh/resource-policy: keep`)
    #[arg(long)]
    pub helm_template: bool,
}

#[derive(Args)]
pub struct RunArgs {
    /// Watch only this namespace (default: all namespaces)
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address for /metrics and /healthz
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Run without leader election (only safe with a single replica)
    #[arg(long)]
    no_leader_election: bool,
    /// Namespace of the leader Lease (default: the pod's namespace)
    #[arg(long, env = switchboard_core::env::POD_NAMESPACE, default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease
    #[arg(long, default_value = "switchboard-operator")]
    lease_name: String,
    /// The namespace this operator's pods run in (default: the pod's
    /// namespace). The NetworkPolicies it builds let pods labelled
    /// `app.kubernetes.io/name=switchboard-operator` from there reach the
    /// managed Redis and PostgreSQL; unset, from any namespace.
    #[arg(long, env = switchboard_core::env::POD_NAMESPACE)]
    operator_namespace: Option<String>,
    /// This replica's identity (default: the pod name, else a random one)
    #[arg(long, env = switchboard_core::env::POD_NAME)]
    identity: Option<String>,
    /// Seconds between two autoscaler syncs (`autoscaling.mode: operator`)
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    autoscale_interval_seconds: u64,
    /// Seconds between two partition maintenance runs of one ChatCluster
    /// (migrations, premake, retention)
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    partition_interval_seconds: u64,
    /// Seconds between two checks of a formed managed Redis Cluster (one
    /// that is not ready yet is checked every 5 s)
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    redis_check_interval_seconds: u64,
}

impl RunArgs {
    /// The configuration these flags ask for.
    pub fn into_config(self) -> RunConfig {
        let identity = self.identity.unwrap_or_else(|| {
            let id: [u8; 4] = rand::random();
            format!(
                "switchboard-operator-{}",
                id.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        });
        RunConfig {
            namespace: self.namespace,
            listen: self.listen,
            leader_election: !self.no_leader_election,
            lease_namespace: self.lease_namespace,
            lease_name: self.lease_name,
            identity,
            operator_namespace: self.operator_namespace.filter(|n| !n.is_empty()),
            autoscale_interval: Duration::from_secs(self.autoscale_interval_seconds),
            partitions: PartitionsConfig {
                interval: Duration::from_secs(self.partition_interval_seconds),
                ..PartitionsConfig::default()
            },
            redis: RedisConfig {
                interval: Duration::from_secs(self.redis_check_interval_seconds),
                ..RedisConfig::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_are_the_managers_defaults() {
        let Ok(Cli {
            cmd: Cmd::Run(args),
            log,
        }) = Cli::try_parse_from(["switchboard-operator", "run", "--identity", "op-1"])
        else {
            panic!("`run` parses");
        };
        assert_eq!(log.log_format, switchboard_core::telemetry::LogFormat::Text);
        let cfg = args.into_config();
        assert_eq!(cfg.identity, "op-1");
        assert!(cfg.leader_election);
        assert_eq!(cfg.autoscale_interval, crate::autoscaler::DEFAULT_INTERVAL);
        assert_eq!(cfg.partitions.interval, crate::partitions::DEFAULT_INTERVAL);
        assert_eq!(cfg.redis.interval, crate::redis_manager::DEFAULT_INTERVAL);
        assert!(
            Cli::try_parse_from([
                "switchboard-operator",
                "run",
                "--autoscale-interval-seconds",
                "0"
            ])
            .is_err()
        );
    }
}
