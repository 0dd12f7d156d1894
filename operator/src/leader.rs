//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator
//! replicas are safe: only the holder runs the controller, the other waits
//! and takes over when the Lease expires or is released.
//!
//! kube-lease-manager does the Lease bookkeeping (server-side apply with
//! conflict detection, renewal before expiry, release on shutdown); this
//! module only turns its watch channel into "wait until leader" / "wait until
//! no longer leader".

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a Lease stays valid after the holder's last renewal. A crashed
/// leader is replaced after at most this long.
pub const LEASE_SECONDS: u64 = 15;
/// The holder renews this long before expiry (and tolerates this much clock
/// skew between nodes).
pub const GRACE_SECONDS: u64 = 5;

/// The server-side-apply field manager a replica takes the Lease with. It
/// must differ per replica: the API server detects a conflicting take only
/// between different field managers, so with one shared name two replicas
/// starting together could both apply `holderIdentity` and both believe
/// they lead until the next renewal.
pub fn field_manager(identity: &str) -> String {
    format!("{}-lease-{identity}", crate::FIELD_MANAGER)
}

/// A running election for one Lease.
pub struct Election {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Election {
    /// Joins the election for Lease `name` in `namespace` as `identity`
    /// (unique per replica: the pod name).
    pub async fn join(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
    ) -> Result<Self, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(GRACE_SECONDS)
            .with_field_manager(field_manager(identity))
            .build()
            .await?;
        let (state, task) = manager.watch().await;
        Ok(Election { state, task })
    }

    /// Waits until this replica holds the Lease. `false` if the election
    /// ended (its task failed) before that.
    pub async fn acquired(&mut self) -> bool {
        self.state.wait_for(|leader| *leader).await.is_ok()
    }

    /// Resolves when this replica no longer holds the Lease (or the election
    /// ended, which means the same). Independent of `self`, so it can stop a
    /// controller while the election keeps running.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut state = self.state.clone();
        async move {
            let _ = state.wait_for(|leader| !*leader).await;
        }
    }

    /// Leaves the election, releasing the Lease if held so a standby takes
    /// over at once instead of after [`LEASE_SECONDS`].
    pub async fn leave(self) {
        drop(self.state);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("released the leader lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release the leader lease"),
            Err(e) => tracing::warn!(error = %e, "lease task ended abnormally"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_replica_takes_the_lease_as_its_own_field_manager() {
        assert_ne!(field_manager("op-a"), field_manager("op-b"));
        assert!(field_manager("op-a").ends_with("op-a"));
    }
}
