//! Time partitions of `messages`: create the next ones ahead of time, move
//! stray rows out of the default partition, drop (or detach) the expired.
//!
//! Called by the worker on a timer (for `switchboard dev` and tests) and by the
//! operator on its schedule. Runs in one transaction under an advisory lock,
//! so concurrent callers take turns and each sees the other's result.
//!
//! Partitions are named `messages_p<YYYYMMDD>` after the UTC start of their
//! range; bounds are read back from the catalog, never parsed from names, so a
//! change of interval leaves older partitions valid (a new period that would
//! overlap an existing partition is skipped, and its rows wait in the default
//! partition until the old one expires).

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use time::{Date, Month, OffsetDateTime, Time};

use super::pg::classify;
use super::{Result, StoreError};

/// Advisory lock key (any constant unique to this job): "sbparts".
const LOCK_KEY: i64 = 0x0073_6270_6172_7473;

/// Length of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionInterval {
    Day,
    /// ISO weeks, Monday to Monday (UTC).
    Week,
    Month,
}

impl FromStr for PartitionInterval {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "daily" | "day" => Ok(PartitionInterval::Day),
            "weekly" | "week" => Ok(PartitionInterval::Week),
            "monthly" | "month" => Ok(PartitionInterval::Month),
            _ => Err(format!(
                "unknown partition interval {s:?} (expected daily, weekly or monthly)"
            )),
        }
    }
}

impl PartitionInterval {
    /// Start of the period holding `t`.
    pub fn floor(self, t: OffsetDateTime) -> OffsetDateTime {
        let d = t.to_offset(time::UtcOffset::UTC).date();
        let start = match self {
            PartitionInterval::Day => d,
            PartitionInterval::Week => {
                d - time::Duration::days(i64::from(d.weekday().number_days_from_monday()))
            }
            PartitionInterval::Month => d.replace_day(1).unwrap_or(d),
        };
        start.with_time(Time::MIDNIGHT).assume_utc()
    }

    /// Start of the period after the one starting at `start`.
    pub fn next(self, start: OffsetDateTime) -> OffsetDateTime {
        match self {
            PartitionInterval::Day => start + time::Duration::days(1),
            PartitionInterval::Week => start + time::Duration::weeks(1),
            PartitionInterval::Month => {
                let d = start.date();
                let (y, m) = match d.month() {
                    Month::December => (d.year() + 1, Month::January),
                    m => (d.year(), m.next()),
                };
                Date::from_calendar_date(y, m, 1)
                    .map(|d| d.with_time(Time::MIDNIGHT).assume_utc())
                    .unwrap_or(start + time::Duration::days(31))
            }
        }
    }
}

/// What to keep.
#[derive(Debug, Clone)]
pub struct PartitionPolicy {
    pub interval: PartitionInterval,
    /// Periods created ahead of the current one.
    pub premake: u32,
    /// Partitions whose whole range is older than this are removed.
    pub retention: Duration,
    /// Detach expired partitions (keep the table for archiving) instead of
    /// dropping them.
    pub detach_only: bool,
}

impl Default for PartitionPolicy {
    fn default() -> Self {
        PartitionPolicy {
            interval: PartitionInterval::Day,
            premake: 7,
            retention: Duration::from_secs(90 * 24 * 3600),
            detach_only: false,
        }
    }
}

/// One partition as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    /// Inclusive start, Unix ms.
    pub from_ms: i64,
    /// Exclusive end, Unix ms.
    pub to_ms: i64,
}

/// What one maintenance run did and what is there afterwards.
#[derive(Debug, Clone, Default)]
pub struct MaintenanceReport {
    pub created: Vec<String>,
    pub removed: Vec<String>,
    /// Rows moved out of the default partition into new partitions.
    pub moved_rows: u64,
    /// Rows in the default partition older than retention, deleted.
    pub expired_stray_rows: u64,
    /// Partitions after the run, oldest first.
    pub partitions: Vec<Partition>,
}

impl MaintenanceReport {
    pub fn oldest(&self) -> Option<&Partition> {
        self.partitions.first()
    }
    pub fn newest(&self) -> Option<&Partition> {
        self.partitions.last()
    }
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_ms(v: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(v) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn partition_name(start: OffsetDateTime) -> String {
    let d = start.date();
    format!(
        "messages_p{:04}{:02}{:02}",
        d.year(),
        u8::from(d.month()),
        d.day()
    )
}

/// List the range partitions of `messages`, oldest first (the default
/// partition is not listed).
pub async fn list(pool: &sqlx::PgPool) -> Result<Vec<Partition>> {
    let mut conn = pool.acquire().await.map_err(classify)?;
    list_on(&mut conn).await
}

async fn list_on(conn: &mut sqlx::PgConnection) -> Result<Vec<Partition>> {
    // pg_get_expr renders bounds in the session time zone; from_ts_ms turns
    // them back into absolute instants, so the zone does not matter.
    let rows = sqlx::query(
        "SELECT c.relname::text AS name,
                from_ts_ms((regexp_match(b, 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz) AS lo,
                from_ts_ms((regexp_match(b, 'TO \\(''([^'']+)''\\)'))[1]::timestamptz) AS hi
         FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid,
         LATERAL pg_get_expr(c.relpartbound, c.oid) AS b
         WHERE i.inhparent = 'messages'::regclass AND b <> 'DEFAULT'
         ORDER BY lo",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(classify)?;
    rows.iter()
        .map(|r| {
            Ok(Partition {
                name: r.try_get("name").map_err(classify)?,
                from_ms: r.try_get("lo").map_err(classify)?,
                to_ms: r.try_get("hi").map_err(classify)?,
            })
        })
        .collect()
}

/// Bring the partitions in line with `policy` as of `now`.
pub async fn maintain(
    pool: &sqlx::PgPool,
    policy: &PartitionPolicy,
    now: OffsetDateTime,
) -> Result<MaintenanceReport> {
    if policy.retention.is_zero() {
        return Err(StoreError::Rejected(
            "partition retention must be > 0".into(),
        ));
    }
    let mut tx = pool.begin().await.map_err(classify)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;

    let mut report = MaintenanceReport::default();
    let existing = list_on(&mut tx).await?;
    let cutoff = ms(now) - policy.retention.as_millis() as i64;

    // Stray rows older than retention would be dropped with their partition
    // anyway; delete them rather than create partitions only to drop them.
    report.expired_stray_rows =
        sqlx::query("DELETE FROM messages_default WHERE sent_at < to_ms_ts($1)")
            .bind(cutoff)
            .execute(&mut *tx)
            .await
            .map_err(classify)?
            .rows_affected();

    // Periods wanted: the current one, `premake` ahead, and every period that
    // holds a stray row in the default partition.
    let mut wanted: BTreeSet<i64> = BTreeSet::new();
    let mut start = policy.interval.floor(now);
    for _ in 0..=policy.premake {
        wanted.insert(ms(start));
        start = policy.interval.next(start);
    }
    let strays = sqlx::query(
        "SELECT DISTINCT from_ts_ms(date_trunc('day', sent_at, 'UTC')) AS d FROM messages_default",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(classify)?;
    for r in &strays {
        let d: i64 = r.try_get("d").map_err(classify)?;
        wanted.insert(ms(policy.interval.floor(from_ms(d))));
    }

    for lo in wanted {
        let hi = ms(policy.interval.next(from_ms(lo)));
        if hi <= cutoff || existing.iter().any(|p| p.from_ms < hi && lo < p.to_ms) {
            continue;
        }
        let name = partition_name(from_ms(lo));
        // Rows of this range waiting in the default partition block the new
        // partition; lift them out, create it, and put them back through the
        // parent so they land in it.
        sqlx::query(
            "CREATE TEMP TABLE sb_moving ON COMMIT DROP AS
             WITH d AS (DELETE FROM messages_default
                        WHERE sent_at >= to_ms_ts($1) AND sent_at < to_ms_ts($2) RETURNING *)
             SELECT * FROM d",
        )
        .bind(lo)
        .bind(hi)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        let bounds = sqlx::query("SELECT to_ms_ts($1)::text, to_ms_ts($2)::text")
            .bind(lo)
            .bind(hi)
            .fetch_one(&mut *tx)
            .await
            .map_err(classify)?;
        let (lo_txt, hi_txt): (String, String) = (
            bounds.try_get(0).map_err(classify)?,
            bounds.try_get(1).map_err(classify)?,
        );
        // DDL takes no bind parameters; the bounds are timestamps rendered by
        // PostgreSQL itself and the name is digits, so nothing is injectable.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {name} PARTITION OF messages FOR VALUES FROM ('{lo_txt}') TO ('{hi_txt}')"
        )))
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        report.moved_rows += sqlx::query("INSERT INTO messages SELECT * FROM sb_moving")
            .execute(&mut *tx)
            .await
            .map_err(classify)?
            .rows_affected();
        sqlx::query("DROP TABLE sb_moving")
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        report.created.push(name);
    }

    for p in &existing {
        if p.to_ms <= cutoff {
            let sql = if policy.detach_only {
                format!(
                    "ALTER TABLE messages DETACH PARTITION {}",
                    quote_ident(&p.name)
                )
            } else {
                format!("DROP TABLE {}", quote_ident(&p.name))
            };
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            report.removed.push(p.name.clone());
        }
    }

    report.partitions = list_on(&mut tx).await?;
    tx.commit().await.map_err(classify)?;
    Ok(report)
}

/// Quote an identifier read from the catalog (names we did not create may
/// hold anything).
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
