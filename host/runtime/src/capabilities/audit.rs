//! The audit log: every capability use (allowed or denied) and every mutating
//! API call, in the database (SQLite or PostgreSQL). Capability uses go
//! through a background writer that batches them, so a capability call never
//! waits on a disk flush; readers call [`Audit::flush`] first and so always
//! see everything recorded before. The writer lets a batch gather for
//! [`LINGER`] before it stores it (a group commit: one transaction and one
//! sync for many records, and no wake-up of the writer per record); a flush
//! cuts the wait short. The writer's queue is bounded ([`QUEUE_CAPACITY`]):
//! when it is full a record is counted as dropped
//! (`capstan_audit_records_dropped_total`) instead of growing memory. A batch
//! the database refuses is retried with backoff until it is stored, never
//! dropped. Records of mutations ([`Audit::record_durable`]) join the next
//! batch without lingering, and their caller waits for its commit: many
//! API changes share one sync. If that batch fails, each durable record is
//! tried alone once and its caller gets the database's answer; while the
//! writer is retrying a refused batch, durable records bypass it.
//! Retention ([`Retention`]) deletes old records in bounded chunks.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, channel, sync_channel};
use std::time::Duration;

use crate::store::args;
use crate::store::sql::{Conn, DbError};
use backon::{BackoffBuilder, ExponentialBuilder};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::store::Store;
pub use retention::{Retention, prune};

mod retention;

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Row id (0 until stored).
    pub id: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Who acted: `plugin:<name>` or `token:<name>`.
    pub actor: String,
    /// Plugin name, for capability uses.
    pub plugin: Option<String>,
    /// Plugin version.
    pub version: Option<String>,
    /// Invocation id.
    pub invocation: Option<String>,
    /// `http`, `fs`, `kv`, `secrets`, `kube` or `api`.
    pub capability: String,
    /// What was acted on (URL, path, key, secret name, object, route).
    pub target: String,
    /// The operation.
    pub verb: String,
    /// Whether the grant allowed it.
    pub allowed: bool,
    /// `ok`, or why it was denied or failed.
    pub outcome: String,
    /// What a mutation changed (name, version, digest, grants, from/to...);
    /// null for capability uses.
    #[schema(value_type = Option<Object>)]
    pub detail: serde_json::Value,
}

impl AuditRecord {
    /// A record of a change made by `actor` (`token:<name>`, `directory`,
    /// `bundled`...): `what` is the kind of change (`plugin.upload`,
    /// `plugin.activate`, `ceiling.set`...), `target` what it changed.
    pub fn change(actor: &str, what: &str, target: &str, detail: serde_json::Value) -> AuditRecord {
        AuditRecord {
            id: 0,
            at_ms: 0,
            actor: actor.into(),
            plugin: None,
            version: None,
            invocation: None,
            capability: "change".into(),
            target: target.into(),
            verb: what.into(),
            allowed: true,
            outcome: "ok".into(),
            detail,
        }
    }
}

/// Why a durable audit write failed.
#[derive(Debug, thiserror::Error)]
#[error("audit log write failed: {0}")]
pub struct AuditError(#[from] DbError);

/// A filter for [`Audit::query`].
#[derive(Debug, Default, Clone, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this plugin.
    pub plugin: Option<String>,
    /// Only this capability.
    pub capability: Option<String>,
    /// Only allowed (true) or denied (false) records.
    pub allowed: Option<bool>,
    /// Only this invocation.
    pub invocation: Option<String>,
    /// Newest N records (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Records the writer's queue holds at most; more are dropped and counted.
pub const QUEUE_CAPACITY: usize = 32_768;
/// Records stored per transaction.
const BATCH: usize = 512;
/// How long the writer lets records gather after the first one of a batch.
/// Readers never wait for it: [`Audit::flush`] wakes the writer at once.
pub const LINGER: Duration = Duration::from_millis(10);
/// How long a durable record waits for the writer before the caller is
/// told it is not stored yet.
const DURABLE_WAIT: Duration = Duration::from_secs(5);
enum Msg {
    Record(Box<AuditRecord>),
    /// Stored in the next batch, at once (no linger); answered once committed.
    Durable(
        Box<AuditRecord>,
        tokio::sync::oneshot::Sender<Result<(), DbError>>,
    ),
    Flush(std::sync::mpsc::Sender<()>),
}

/// Counters of records the log could not take, for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct AuditStats {
    /// Records dropped because the writer's queue was full.
    pub dropped: Counter,
    /// Batch writes the database refused (each retried until stored).
    pub write_failures: Counter,
}

/// Handle to the audit log.
#[derive(Clone)]
pub struct Audit {
    tx: SyncSender<Msg>,
    /// The writer thread, unparked by a flush so that it stops lingering.
    writer: std::thread::Thread,
    store: Arc<Store>,
    stats: AuditStats,
    /// Set while the writer retries a batch the database refused: durable
    /// records then go to the database directly, so that their callers get
    /// the database's answer instead of waiting behind the retries.
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Audit {
    /// Starts the background writer over `store`.
    pub fn start(store: Arc<Store>) -> Audit {
        let (tx, rx) = sync_channel(QUEUE_CAPACITY);
        let stats = AuditStats::default();
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (writer_store, writer_stats) = (store.clone(), stats.clone());
        let writer_failing = failing.clone();
        let writer = std::thread::Builder::new()
            .name("capstan-audit".into())
            .spawn(move || writer(writer_store, rx, writer_stats, &writer_failing))
            .expect("spawn audit writer")
            .thread()
            .clone();
        Audit {
            tx,
            writer,
            store,
            stats,
            failing,
        }
    }

    /// The counters of dropped records and failed writes.
    pub fn stats(&self) -> AuditStats {
        self.stats.clone()
    }

    /// Records an action. Never blocks on the database.
    pub fn record(&self, mut r: AuditRecord) {
        r.at_ms = now_ms();
        if r.allowed {
            tracing::debug!(target: "capstan::audit", actor = %r.actor, capability = %r.capability, verb = %r.verb, target = %r.target, outcome = %r.outcome, "allowed");
        } else {
            tracing::warn!(target: "capstan::audit", actor = %r.actor, capability = %r.capability, verb = %r.verb, target = %r.target, outcome = %r.outcome, "denied");
        }
        match self.tx.try_send(Msg::Record(Box::new(r))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let before = self.stats.dropped.inc();
                if (before + 1).is_power_of_two() {
                    tracing::error!(
                        dropped = before + 1,
                        "audit queue full: records dropped (the database is not keeping up)"
                    );
                }
            }
        }
    }

    /// Stores a record before returning: for mutations, whose record must
    /// be durable before the change is acknowledged.
    pub async fn record_durable(&self, mut r: AuditRecord) -> Result<(), AuditError> {
        r.at_ms = now_ms();
        log_change(&r);
        if !self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            // Group commit with whatever else is being stored right now.
            let (done, answer) = tokio::sync::oneshot::channel();
            match self.tx.try_send(Msg::Durable(Box::new(r), done)) {
                Ok(()) => {
                    self.writer.unpark();
                    return match tokio::time::timeout(DURABLE_WAIT, answer).await {
                        Ok(Ok(stored)) => Ok(stored?),
                        Ok(Err(_)) => Err(AuditError(DbError::Unavailable(
                            "the audit writer stopped".into(),
                        ))),
                        Err(_) => Err(AuditError(DbError::Unavailable(format!(
                            "the audit writer did not store the record within {DURABLE_WAIT:?}"
                        )))),
                    };
                }
                Err(TrySendError::Full(m) | TrySendError::Disconnected(m)) => {
                    let Msg::Durable(back, _) = m else {
                        unreachable!("sent a durable record")
                    };
                    r = *back;
                }
            }
        }
        let store = self.store.clone();
        Ok(store.run(move |c| insert(c, &r)).await?)
    }

    /// Waits until every record sent so far is stored.
    pub async fn flush(&self) {
        let (done, wait) = channel();
        let (tx, writer) = (self.tx.clone(), self.writer.clone());
        let _ = tokio::task::spawn_blocking(move || {
            // Blocks while the queue is full: a flush waits its turn.
            if tx.send(Msg::Flush(done)).is_ok() {
                // The writer may be lingering over a batch: store it now.
                writer.unpark();
                let _ = wait.recv_timeout(Duration::from_secs(10));
            }
        })
        .await;
    }

    /// Newest records matching `q`, newest first.
    pub async fn query(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, DbError> {
        self.flush().await;
        let q = q.clone();
        self.store.run(move |c| query(c, &q)).await
    }
}

fn query(c: &mut Conn, q: &AuditQuery) -> Result<Vec<AuditRecord>, DbError> {
    let limit = q.limit.unwrap_or(100).min(1000);
    // Typed NULL tests (`CAST`) so that PostgreSQL knows each parameter's type.
    let rows = c.rows(
        "SELECT id, at_ms, actor, plugin, version, invocation, capability, target, verb, allowed, outcome, detail
         FROM audit
         WHERE (CAST(?1 AS TEXT) IS NULL OR plugin = ?1) AND (CAST(?2 AS TEXT) IS NULL OR capability = ?2)
           AND (CAST(?3 AS BIGINT) IS NULL OR allowed = ?3) AND (CAST(?4 AS TEXT) IS NULL OR invocation = ?4)
         ORDER BY id DESC LIMIT ?5",
        args![q.plugin, q.capability, q.allowed, q.invocation, limit],
    )?;
    rows.iter()
        .map(|r| {
            Ok(AuditRecord {
                id: r.get(0)?,
                at_ms: r.get(1)?,
                actor: r.get(2)?,
                plugin: r.get(3)?,
                version: r.get(4)?,
                invocation: r.get(5)?,
                capability: r.get(6)?,
                target: r.get(7)?,
                verb: r.get(8)?,
                allowed: r.get(9)?,
                outcome: r.get(10)?,
                detail: parse_detail(&r.get::<String>(11)?),
            })
        })
        .collect()
}

fn writer(
    store: Arc<Store>,
    rx: Receiver<Msg>,
    stats: AuditStats,
    failing: &std::sync::atomic::AtomicBool,
) {
    while let Ok(first) = rx.recv() {
        if matches!(first, Msg::Record(_)) {
            // Group commit: records sent meanwhile wait in the queue without
            // waking this thread; a flush or a durable record unparks it.
            std::thread::park_timeout(LINGER);
        }
        let (mut records, mut durable, mut waiters) = (Vec::new(), Vec::new(), Vec::new());
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Record(r) => records.push(*r),
                Msg::Durable(r, done) => durable.push((*r, done)),
                Msg::Flush(done) => waiters.push(done),
            }
            if records.len() + durable.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        store_durable(&store, &mut records, durable);
        store_with_retry(&store, &records, &stats, failing);
        for w in waiters {
            let _ = w.send(());
        }
    }
}

type Durable = (
    AuditRecord,
    tokio::sync::oneshot::Sender<Result<(), DbError>>,
);

/// Stores the durable records together with `records` in one transaction
/// and answers their callers; `records` is then empty. If that transaction
/// fails, each durable record is tried once alone and its caller gets that
/// answer, and `records` are left for [`store_with_retry`].
fn store_durable(store: &Store, records: &mut Vec<AuditRecord>, durable: Vec<Durable>) {
    if durable.is_empty() {
        return;
    }
    let together = store.with(|c| {
        c.tx(|c| {
            for r in records.iter().chain(durable.iter().map(|(r, _)| r)) {
                insert(c, r)?;
            }
            Ok::<_, DbError>(())
        })
    });
    if together.is_ok() {
        records.clear();
        for (_, done) in durable {
            let _ = done.send(Ok(()));
        }
        return;
    }
    for (r, done) in durable {
        let _ = done.send(store.with(|c| insert(c, &r)));
    }
}

/// Stores `records` in one transaction, retrying with exponential backoff
/// (jittered, at most 5 s apart) until the database takes them.
fn store_with_retry(
    store: &Store,
    records: &[AuditRecord],
    stats: &AuditStats,
    failing: &std::sync::atomic::AtomicBool,
) {
    if records.is_empty() {
        return;
    }
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        let result = store.with(|c| {
            c.tx(|c| {
                for r in records {
                    insert(c, r)?;
                }
                Ok::<_, DbError>(())
            })
        });
        let Err(e) = result else {
            failing.store(false, std::sync::atomic::Ordering::Relaxed);
            return;
        };
        failing.store(true, std::sync::atomic::Ordering::Relaxed);
        stats.write_failures.inc();
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tracing::error!(
            records = records.len(),
            "audit write failed, retrying in {delay:?}: {e}"
        );
        std::thread::sleep(delay);
    }
}

/// Stores `r` with the current time on `conn`, inside the caller's
/// transaction: the change and its record commit together, with one sync
/// (a key rotation, a new pipeline run). Log it with [`log_change`] once
/// the transaction is committed.
pub fn insert_now(conn: &mut Conn, mut r: AuditRecord) -> Result<(), DbError> {
    r.at_ms = now_ms();
    insert(conn, &r)
}

/// Writes a change's record to the server log (`capstan::audit`).
pub fn log_change(r: &AuditRecord) {
    tracing::info!(target: "capstan::audit", actor = %r.actor, capability = %r.capability, verb = %r.verb, target = %r.target, outcome = %r.outcome, "change");
}

fn insert(conn: &mut Conn, r: &AuditRecord) -> Result<(), DbError> {
    let detail = if r.detail.is_null() {
        String::new()
    } else {
        r.detail.to_string()
    };
    conn.exec(
        "INSERT INTO audit (at_ms, actor, plugin, version, invocation, capability, target, verb, allowed, outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        args![r.at_ms, r.actor, r.plugin, r.version, r.invocation, r.capability, r.target, r.verb, r.allowed, r.outcome, detail],
    )?;
    Ok(())
}

fn parse_detail(text: &str) -> serde_json::Value {
    if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.into()))
    }
}

use crate::store::unix_millis as now_ms;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::Backend;

    pub(super) fn rec(target: &str) -> AuditRecord {
        AuditRecord::change("test", "thing.do", target, serde_json::Value::Null)
    }

    pub(super) fn count(store: &Store) -> i64 {
        store
            .with(|c| c.value("SELECT count(*) FROM audit", args![]))
            .unwrap()
    }

    #[tokio::test]
    async fn a_batch_the_database_refuses_is_retried_not_dropped() {
        for t in crate::store::testing::backends() {
            refused_batch_is_retried(t.store.clone()).await;
        }
    }

    async fn refused_batch_is_retried(store: Arc<Store>) {
        let b = store.backend();
        let audit = Audit::start(store.clone());
        // The table disappears: every write fails until it is back.
        store
            .with(|c| c.batch("ALTER TABLE audit RENAME TO audit_away"))
            .unwrap();
        for i in 0..3 {
            audit.record(rec(&format!("r{i}")));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while audit.stats().write_failures.get() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "{b:?}: no failed write seen"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        store
            .with(|c| c.batch("ALTER TABLE audit_away RENAME TO audit"))
            .unwrap();
        audit.flush().await;
        let got = audit.query(&AuditQuery::default()).await.unwrap();
        let targets: Vec<_> = got.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(targets, ["r2", "r1", "r0"], "{b:?}");
        assert_eq!(audit.stats().dropped.get(), 0, "{b:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durable_records_share_a_commit_and_a_refused_one_fails_without_hanging() {
        for t in crate::store::testing::backends() {
            let (store, b) = (t.store.clone(), t.store.backend());
            let audit = Audit::start(store.clone());
            let mut calls = tokio::task::JoinSet::new();
            for i in 0..100 {
                let audit = audit.clone();
                calls.spawn(async move { audit.record_durable(rec(&format!("d{i}"))).await });
            }
            while let Some(done) = calls.join_next().await {
                done.unwrap().expect("stored");
            }
            // Answered means stored: another connection sees all of them.
            assert_eq!(count(&t.reopen()), 100, "{b:?}");

            store
                .with(|c| c.batch("ALTER TABLE audit RENAME TO audit_away"))
                .unwrap();
            let refused = audit.record_durable(rec("lost")).await;
            let err = refused.expect_err("no audit table").to_string();
            assert!(err.contains("audit"), "{b:?}: {err}");
            store
                .with(|c| c.batch("ALTER TABLE audit_away RENAME TO audit"))
                .unwrap();
            audit
                .record_durable(rec("after"))
                .await
                .expect("stored again");
            assert_eq!(count(&store), 101, "{b:?}");
        }
    }

    #[tokio::test]
    async fn a_record_is_stored_without_anyone_flushing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let audit = Audit::start(store.clone());
        audit.record(rec("r0"));
        // The writer lingers over a batch, then stores it by itself.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while count(&store) < 1 {
            assert!(std::time::Instant::now() < deadline, "never stored");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(audit.stats().dropped.get(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_growing() {
        for t in crate::store::testing::backends() {
            full_queue_drops(t.store.clone()).await;
        }
    }

    async fn full_queue_drops(store: Arc<Store>) {
        let b = store.backend();
        let audit = Audit::start(store.clone());
        let extra = 1000;
        // The writer is stuck on a lock held by another connection while
        // records pour in: SQLite's write lock (`BEGIN IMMEDIATE`, taken by
        // `tx`), or on PostgreSQL an exclusive lock on the audit table.
        store
            .with(|c| {
                c.tx(|c| {
                    if c.backend() == Backend::Postgres {
                        c.batch("LOCK TABLE audit IN ACCESS EXCLUSIVE MODE")?;
                    }
                    for i in 0..QUEUE_CAPACITY + extra {
                        audit.record(rec(&format!("r{i}")));
                    }
                    let stored: i64 = c.value("SELECT count(*) FROM audit", args![])?;
                    assert_eq!(stored, 0, "{b:?}: the writer stored while blocked");
                    Ok::<_, DbError>(())
                })
            })
            .unwrap();
        let dropped = audit.stats().dropped.get() as usize;
        // The writer may have taken one batch before it blocked.
        assert!(
            (extra - BATCH..=extra).contains(&dropped),
            "{b:?}: dropped {dropped}"
        );
        audit.flush().await;
        assert_eq!(
            count(&store) as usize,
            QUEUE_CAPACITY + extra - dropped,
            "{b:?}"
        );
    }
}
