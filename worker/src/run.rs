//! The worker loop: read → batch → write → acknowledge, plus housekeeping
//! (claiming stale entries, dead letters, trimming, partition maintenance).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_core::broker::RedisTarget;
use switchboard_core::broker::persist::{PersistEntry, parse_entry};
use switchboard_core::broker::{BrokerConfig, BrokerError, RedisBroker};
use switchboard_core::store::partitions::{self, PartitionPolicy};
use switchboard_core::store::{Batch, BatchOutcome, PgStore, Store, StoreError};
use switchboard_proto::ids::ConvId;
use tokio_util::sync::CancellationToken;

use crate::metrics::{KindLabel, Metrics};
use crate::streams::{Entry, Pending, Streams};

/// Why the worker stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Tunables; the defaults suit production, tests shorten the intervals.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Logical shards of the broker (must match the gateways').
    pub shards: u16,
    /// This consumer's name in the group; unique per process.
    pub consumer: String,
    /// Most entries per transaction. Reads ask each shard for its share of
    /// what is still missing, so a batch overshoots by fewer than `shards`
    /// entries. Large by default: a durable commit costs a fixed ~30 ms on
    /// slow disks, so a backlog must drain in big transactions, while under
    /// steady load a batch only holds what arrived within `linger` anyway.
    pub batch_size: usize,
    /// Most entries read per shard per round.
    pub read_count: u64,
    /// How long a batch waits for more entries once the first arrived.
    pub linger: Duration,
    /// Longest sleep between polls while the streams are empty.
    pub idle_poll: Duration,
    /// An entry pending this long (its worker died or keeps failing on it)
    /// is taken over.
    pub claim_idle: Duration,
    /// How often stale entries are looked for.
    pub claim_interval: Duration,
    /// Deliveries after which a failing entry goes to the dead-letter stream.
    pub max_attempts: u64,
    /// How often fully persisted entries are trimmed from the streams.
    pub trim_interval: Duration,
    /// Backoff bounds while PostgreSQL or Redis is unavailable.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Partition maintenance policy and interval (`None`: someone else, e.g.
    /// the operator, maintains partitions).
    pub partitions: Option<(PartitionPolicy, Duration)>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            shards: switchboard_core::broker::BrokerConfig::default().shards,
            consumer: consumer_name(None),
            batch_size: 10_000,
            read_count: 256,
            linger: Duration::from_millis(10),
            idle_poll: Duration::from_millis(50),
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            max_attempts: 5,
            trim_interval: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            partitions: None,
        }
    }
}

/// `<pod>-<pid>-<random>`: unique even when a pod restarts with the same
/// name and pid (its old entries are then claimed like anyone's). The pod
/// name comes from `--pod-name` (the downward API's `POD_NAME`); without
/// it, `$HOSTNAME` (a pod's hostname is its name), then `worker`.
pub fn consumer_name(pod_name: Option<&str>) -> String {
    let host = pod_name
        .map(str::to_owned)
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into());
    format!(
        "{host}-{}-{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// One consumer of the persistence streams.
pub struct Worker {
    cfg: WorkerConfig,
    streams: Arc<Streams>,
    /// For the repairs only the broker can make (a seq conflict).
    broker: RedisBroker,
    store: PgStore,
    metrics: Arc<Metrics>,
    /// Last failure of entries that failed here, for the dead-letter reason.
    failures: std::sync::Mutex<HashMap<String, String>>,
}

/// The outcome of waiting out an outage.
enum Retry<T> {
    Done(T),
    Cancelled,
}

impl Worker {
    /// Connect to the Redis at `redis_url` and create the consumer groups.
    pub async fn connect(
        redis_url: &str,
        store: PgStore,
        cfg: WorkerConfig,
    ) -> Result<Self, WorkerError> {
        Self::connect_to(&RedisTarget::from(redis_url), store, cfg).await
    }

    /// [`connect`](Self::connect) with a password given apart from the URL.
    pub async fn connect_to(
        redis: &RedisTarget,
        store: PgStore,
        cfg: WorkerConfig,
    ) -> Result<Self, WorkerError> {
        Self::connect_within(redis, store, cfg, Duration::ZERO).await
    }

    /// [`connect_to`](Self::connect_to), waiting up to `wait` while Redis is
    /// unreachable (see `switchboard_core::startup`).
    pub async fn connect_within(
        redis: &RedisTarget,
        store: PgStore,
        cfg: WorkerConfig,
        wait: Duration,
    ) -> Result<Self, WorkerError> {
        let streams =
            Streams::connect_within(redis, cfg.shards, cfg.consumer.clone(), wait).await?;
        streams.ensure_groups().await?;
        // Reachable by now: the broker's own connect need not wait.
        let broker = RedisBroker::connect_to(
            redis,
            BrokerConfig {
                shards: cfg.shards,
                // A resequenced message goes through the stream like any.
                persist: true,
                ..BrokerConfig::default()
            },
        )
        .await?;
        Ok(Worker {
            cfg,
            streams: Arc::new(streams),
            broker,
            store,
            metrics: Arc::new(Metrics::new()),
            failures: Default::default(),
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn streams(&self) -> Arc<Streams> {
        self.streams.clone()
    }

    pub fn store(&self) -> &PgStore {
        &self.store
    }

    /// Run until `cancel` fires. The batch in hand is finished (written and
    /// acknowledged) first, unless PostgreSQL is down: then its entries stay
    /// pending for the next worker and nothing is lost.
    pub async fn run(&self, cancel: CancellationToken) {
        tracing::info!(consumer = %self.cfg.consumer, shards = self.cfg.shards, "worker started");
        let mut next_claim = Instant::now();
        let mut next_trim = Instant::now() + self.cfg.trim_interval;
        let mut next_maintenance = Instant::now();
        let mut idle = Duration::from_millis(1);
        let mut backoff = self.cfg.backoff_min;
        let mut in_hand: Vec<Entry> = Vec::new();
        while !cancel.is_cancelled() {
            let now = Instant::now();
            let mut entries = Vec::new();
            if now >= next_claim {
                next_claim = now + self.cfg.claim_interval;
                match self.claim_stale().await {
                    Ok(claimed) => entries = claimed,
                    Err(e) => tracing::warn!(error = %e, "claiming stale entries failed"),
                }
            }
            if now >= next_trim {
                next_trim = now + self.cfg.trim_interval;
                self.trim_and_sample().await;
            }
            if let Some((policy, every)) = &self.cfg.partitions
                && now >= next_maintenance
            {
                next_maintenance = now + *every;
                self.maintain_partitions(policy).await;
            }

            // Write the previous batch while reading the next one: the two
            // wait on different servers, so overlapping them roughly doubles
            // throughput. Batches may commit in any order; every write is
            // idempotent and commutative, so order does not matter.
            let previous = std::mem::take(&mut in_hand);
            let write = async {
                if !previous.is_empty() {
                    self.process(previous, &cancel).await;
                }
            };
            let ((), read) = tokio::join!(write, self.gather(&mut entries, &cancel));
            match read {
                Ok(()) => backoff = self.cfg.backoff_min,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the persistence streams failed; retrying");
                    if entries.is_empty() {
                        sleep_or_cancel(backoff, &cancel).await;
                        backoff = (backoff * 2).min(self.cfg.backoff_max);
                        continue;
                    }
                }
            }
            if entries.is_empty() {
                sleep_or_cancel(idle, &cancel).await;
                idle = (idle * 2).min(self.cfg.idle_poll);
                continue;
            }
            idle = Duration::from_millis(1);
            in_hand = entries;
        }
        // Finish the batch in hand (written and acknowledged) before stopping.
        if !in_hand.is_empty() {
            self.process(in_hand, &cancel).await;
        }
        tracing::info!(consumer = %self.cfg.consumer, "worker stopped");
    }

    /// Read a first round; once something arrived, keep reading for up to
    /// `linger` or until the batch is full.
    async fn gather(
        &self,
        entries: &mut Vec<Entry>,
        cancel: &CancellationToken,
    ) -> Result<(), fred::error::Error> {
        entries.extend(self.streams.read_new(self.per_shard(entries.len())).await?);
        if entries.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.cfg.linger;
        while entries.len() < self.cfg.batch_size && !cancel.is_cancelled() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let more = self.streams.read_new(self.per_shard(entries.len())).await?;
            if more.is_empty() {
                tokio::time::sleep((deadline - now).min(Duration::from_millis(2))).await;
            }
            entries.extend(more);
        }
        Ok(())
    }

    /// How many entries to ask each shard for when `have` are in hand: the
    /// missing part of the batch spread over the shards (at least one, at
    /// most `read_count`). Asking every shard for `read_count` would let one
    /// round of 64 shards × 256 entries blow far past a small batch size.
    fn per_shard(&self, have: usize) -> u64 {
        let missing = self.cfg.batch_size.saturating_sub(have) as u64;
        missing
            .div_ceil(u64::from(self.cfg.shards.max(1)))
            .clamp(1, self.cfg.read_count.max(1))
    }

    /// Write `entries` and acknowledge the ones that are stored.
    async fn process(&self, entries: Vec<Entry>, cancel: &CancellationToken) {
        let mut good: Vec<(Entry, PersistEntry)> = Vec::with_capacity(entries.len());
        for e in entries {
            match parse_entry(&e.fields) {
                Ok(p) => good.push((e, p)),
                Err(reason) => {
                    // Left pending: claimed again later, and dead-lettered
                    // after `max_attempts` deliveries.
                    tracing::warn!(shard = e.shard, id = %e.id, %reason, "unreadable stream entry");
                    self.metrics
                        .failures
                        .get_or_create(&KindLabel {
                            kind: crate::metrics::FAILURE_UNREADABLE,
                        })
                        .inc();
                    self.remember_failure(&e, reason);
                }
            }
        }
        if good.is_empty() {
            return;
        }
        let batch = to_batch(good.iter().map(|(_, p)| p));
        match self.write_retrying(&batch, cancel).await {
            Retry::Cancelled => {}
            Retry::Done(Ok(outcome)) => {
                let unrepaired = self.resequence(&outcome).await;
                self.record(&batch, outcome);
                let done = good.iter().filter(|(_, p)| !is_in(p, &unrepaired));
                self.ack_retrying(done.map(|(e, _)| e), cancel).await;
            }
            Retry::Done(Err(e)) => {
                // Some entry is refused by the database. Write them one by
                // one so the rest get through; the refused stay pending.
                tracing::warn!(error = %e, entries = good.len(), "batch rejected; writing entries one by one");
                self.metrics
                    .failures
                    .get_or_create(&KindLabel {
                        kind: crate::metrics::FAILURE_REJECTED,
                    })
                    .inc();
                for (entry, p) in &good {
                    let single = to_batch(std::iter::once(p));
                    match self.write_retrying(&single, cancel).await {
                        Retry::Cancelled => return,
                        Retry::Done(Ok(outcome)) => {
                            let unrepaired = self.resequence(&outcome).await;
                            self.record(&single, outcome);
                            if !is_in(p, &unrepaired) {
                                self.ack_retrying(std::iter::once(entry), cancel).await;
                            }
                        }
                        Retry::Done(Err(e)) => {
                            tracing::warn!(shard = entry.shard, id = %entry.id, error = %e, "entry rejected by the database");
                            self.remember_failure(entry, e.to_string());
                        }
                    }
                }
            }
        }
    }

    /// Give every conflicting message of `outcome` a new seq (see
    /// [`RedisBroker::resequence`]). Returns the ones that could not be
    /// repaired now: their entries stay pending and come back, and the
    /// conflict is found again.
    async fn resequence(&self, outcome: &BatchOutcome) -> Vec<(ConvId, u64)> {
        let mut failed = Vec::new();
        for c in &outcome.conflicts {
            let m = &c.message;
            match self.broker.resequence(m, c.stored_max).await {
                Ok(seq) => {
                    self.metrics.resequenced.inc();
                    tracing::warn!(
                        conv = %m.conv, taken = m.seq, seq, stored_max = c.stored_max,
                        "the broker's seq counter went back below stored seqs: message given a new seq"
                    );
                }
                Err(e) => {
                    tracing::warn!(conv = %m.conv, seq = m.seq, error = %e, "resequencing failed; retried later");
                    failed.push((m.conv.clone(), m.seq));
                }
            }
        }
        failed
    }

    fn record(&self, batch: &Batch, outcome: BatchOutcome) {
        self.metrics.batches.inc();
        self.metrics.messages.inc_by(outcome.inserted);
        self.metrics.duplicates.inc_by(outcome.duplicates);
        self.metrics
            .watermarks
            .inc_by(batch.watermarks.len() as u64);
    }

    fn remember_failure(&self, e: &Entry, reason: String) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a flood of bad entries must not grow memory without limit.
        if f.len() < 10_000 {
            f.insert(failure_key(e.shard, &e.id), reason);
        }
    }

    /// Write, waiting out transient failures with backoff. A permanent
    /// failure is returned; cancellation abandons the batch unacknowledged.
    async fn write_retrying(
        &self,
        batch: &Batch,
        cancel: &CancellationToken,
    ) -> Retry<Result<BatchOutcome, StoreError>> {
        let mut backoff = self.cfg.backoff_min;
        loop {
            let started = Instant::now();
            match self.store.write_batch(batch).await {
                Ok(o) => {
                    self.metrics
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return Retry::Done(Ok(o));
                }
                Err(e) if e.is_transient() => {
                    self.metrics
                        .failures
                        .get_or_create(&KindLabel {
                            kind: crate::metrics::FAILURE_TRANSIENT,
                        })
                        .inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, "database unavailable; holding the batch");
                    if sleep_or_cancel(backoff, cancel).await {
                        return Retry::Cancelled;
                    }
                    backoff = (backoff * 2).min(self.cfg.backoff_max);
                }
                Err(e) => return Retry::Done(Err(e)),
            }
        }
    }

    /// Acknowledge after commit. If Redis is unreachable the entries stay
    /// pending and are written again later (a no-op), so giving up on
    /// cancellation is safe.
    async fn ack_retrying<'a>(
        &self,
        entries: impl Iterator<Item = &'a Entry>,
        cancel: &CancellationToken,
    ) {
        let mut by_shard: HashMap<u16, Vec<String>> = HashMap::new();
        for e in entries {
            by_shard.entry(e.shard).or_default().push(e.id.clone());
        }
        let mut backoff = self.cfg.backoff_min;
        loop {
            match self.streams.ack(&by_shard).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "acknowledging failed; retrying");
                    if sleep_or_cancel(backoff, cancel).await {
                        return;
                    }
                    backoff = (backoff * 2).min(self.cfg.backoff_max);
                }
            }
        }
    }

    /// Take over entries idle for `claim_idle`; dead-letter those delivered
    /// `max_attempts` times already that this worker saw refused (the
    /// database rejected them, or they do not parse). An entry that was
    /// only ever held up by an outage — claimed again and again by workers
    /// restarting while PostgreSQL was down — is claimed and written, never
    /// moved aside: its delivery count says nothing about its data.
    async fn claim_stale(&self) -> Result<Vec<Entry>, fred::error::Error> {
        let idle_ms = self.cfg.claim_idle.as_millis() as u64;
        let stale = self.streams.stale(idle_ms, 256).await?;
        let mut to_claim: HashMap<u16, Vec<String>> = HashMap::new();
        for p in stale {
            let refused = self
                .failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&failure_key(p.shard, &p.id));
            if p.deliveries >= self.cfg.max_attempts && refused {
                self.dead_letter(&p).await?;
            } else {
                to_claim.entry(p.shard).or_default().push(p.id);
            }
        }
        let mut out = Vec::new();
        for (shard, ids) in to_claim {
            let claimed = self.streams.claim(shard, ids, idle_ms).await?;
            self.metrics.claimed.inc_by(claimed.len() as u64);
            out.extend(claimed);
        }
        if !out.is_empty() {
            tracing::info!(entries = out.len(), "claimed stale pending entries");
        }
        Ok(out)
    }

    async fn dead_letter(&self, p: &Pending) -> Result<(), fred::error::Error> {
        let reason = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&failure_key(p.shard, &p.id))
            .unwrap_or_else(|| format!("not persisted after {} deliveries", p.deliveries));
        if self.streams.dead_letter(p, &reason).await? {
            self.metrics.dead_letters.inc();
            tracing::error!(
                shard = p.shard,
                id = %p.id,
                deliveries = p.deliveries,
                %reason,
                "entry moved to the dead-letter stream sb:{{{}}}:dead",
                p.shard
            );
        }
        Ok(())
    }

    async fn trim_and_sample(&self) {
        if let Err(e) = self.streams.trim().await {
            tracing::warn!(error = %e, "trimming the persistence streams failed");
        }
        if let Ok(n) = self.streams.backlog().await {
            self.metrics.backlog.set(n as i64);
        }
        if let Ok(n) = self.streams.dead_letter_len().await {
            self.metrics.dead_letter_size.set(n as i64);
        }
    }

    async fn maintain_partitions(&self, policy: &PartitionPolicy) {
        match partitions::maintain(self.store.pool(), policy, time::OffsetDateTime::now_utc()).await
        {
            Ok(r) => {
                if !r.created.is_empty() || !r.removed.is_empty() || r.moved_rows > 0 {
                    tracing::info!(created = ?r.created, removed = ?r.removed, moved_rows = r.moved_rows, "partition maintenance");
                }
            }
            Err(e) => tracing::warn!(error = %e, "partition maintenance failed"),
        }
    }
}

/// The key of an entry's last refusal in `Worker::failures`.
fn failure_key(shard: u16, id: &str) -> String {
    format!("{shard}/{id}")
}

/// Whether `p` is a message among `keys` (conversation, seq).
fn is_in(p: &PersistEntry, keys: &[(ConvId, u64)]) -> bool {
    matches!(p, PersistEntry::Message(m) if keys.iter().any(|(c, s)| *c == m.conv && *s == m.seq))
}

fn to_batch<'a>(entries: impl Iterator<Item = &'a PersistEntry>) -> Batch {
    let mut b = Batch::default();
    for p in entries {
        match p {
            PersistEntry::Message(m) => b.messages.push(m.clone()),
            PersistEntry::Watermark(w) => b.watermarks.push(w.clone()),
        }
    }
    b
}

/// Sleep for `d`; `true` when cancelled first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = cancel.cancelled() => true,
    }
}
