//! The pipelines engine's tables (migration `V11__pipelines`): pipeline
//! revisions, runs with their journaled [`Run`], each run's inbox of events
//! not yet applied, its log, and the queues of environment locks. Every
//! change a run goes through is one transaction here before anything acts
//! on it. What triggers claim with a run (a delivery id, a cron due time)
//! is in [`claims`].

mod claims;
mod journal;
mod turns;

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_store::leases::Lease;
use capstan_store::sql::{Conn, DbError, Row};
use capstan_store::{Store, StoreError, args, unix_millis, unix_secs};
use serde::{Deserialize, Serialize};

use capstan_runtime::capabilities::AuditRecord;

use crate::machine::{Event, Run, RunStatus};
use crate::model::LockPolicy;

pub use claims::{Claim, CronMark};
use journal::Journal;

/// A plugin version a run pinned when it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pin {
    /// Version.
    pub version: String,
    /// sha256 of the component.
    pub digest: String,
}

/// A stored pipeline: its current revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PipelineRow {
    /// Name.
    pub name: String,
    /// Owning project.
    pub project: String,
    /// Current revision (1, 2, ...).
    pub revision: i64,
    /// `api` or `directory`.
    pub source: String,
    /// Unix seconds.
    pub updated_at: i64,
    /// Who stored the current revision.
    pub updated_by: String,
}

/// A stored run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    /// The journaled state.
    pub run: Run,
    /// The pipeline revision it runs.
    pub revision: i64,
    /// Plugin versions pinned at start, by plugin name.
    pub pins: BTreeMap<String, Pin>,
    /// Unix ms.
    pub created_ms: i64,
    /// Unix ms.
    pub updated_ms: i64,
}

/// One line of a run's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LogLine {
    /// Increasing id (resume a follow after it).
    pub id: i64,
    /// The step, if the line is about one.
    pub step: Option<String>,
    /// `engine`, `plugin` (an attempt's result) or `plugin:<level>` (a
    /// line the plugin logged).
    pub source: String,
    /// The line.
    pub message: String,
    /// Unix ms.
    pub at_ms: i64,
}

impl LogLine {
    /// The line as text: `<RFC 3339 time> <step or -> <source>: <message>`.
    pub fn to_text(&self) -> String {
        let at = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(self.at_ms).unwrap_or(0));
        format!(
            "{} {} {}: {}",
            humantime::format_rfc3339_millis(at),
            self.step.as_deref().unwrap_or("-"),
            self.source,
            self.message
        )
    }
}

/// A run the driver should look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The run.
    pub id: String,
    /// Whether it waits to start.
    pub queued: bool,
    /// Its pipeline.
    pub pipeline: String,
    /// The pipeline revision it runs.
    pub revision: i64,
    /// Whether its inbox holds an event besides `start` (a cancel of a
    /// queued run, say).
    pub other_events: bool,
}

/// Runs to wake after a lock change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LockChange {
    /// Runs that now hold the lock.
    pub granted: Vec<String>,
    /// How long each of them waited, ms (same order).
    pub waited_ms: Vec<i64>,
    /// Runs a newer one superseded.
    pub superseded: Vec<String>,
}

/// A run just stored: when (its `created_ms`), and the lease to drive it,
/// if one was asked for and taken.
#[derive(Debug)]
pub struct Created {
    /// The time stored as the run's `created_ms` and `updated_ms`.
    pub at_ms: i64,
    /// The run's lease, for the replica that stored it.
    pub lease: Option<Lease>,
}

/// The engine's view of the store. A run's writes go through one
/// group-commit journal ([`journal`]): each is durable before its caller
/// goes on, and concurrent runs share a transaction.
#[derive(Clone)]
pub struct PipelineStore {
    store: Arc<Store>,
    journal: Arc<Journal>,
}

/// What a finished attempt leaves: the plugin's own lines, the engine's
/// summary line and the event for the run's inbox.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    /// The run.
    pub run: String,
    /// The step.
    pub step: String,
    /// The plugin's log lines: (level, message, Unix ms).
    pub plugin_lines: Vec<(String, String, i64)>,
    /// The summary line (source `plugin`).
    pub summary: String,
    /// `StepFinished` or `RollbackFinished`.
    pub event: Event,
}

const RUN_COLUMNS: &str = "record, revision, pins, created_ms, updated_ms";

impl PipelineStore {
    /// Over `store`.
    pub fn new(store: Arc<Store>) -> PipelineStore {
        PipelineStore {
            journal: Arc::new(Journal::start(store.clone())),
            store,
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stores `yaml` as the next revision of `name` unless it is the
    /// current one already; returns the current revision and whether it is
    /// new. A pipeline keeps the project it was first stored in.
    pub fn put(
        &self,
        name: &str,
        project: &str,
        yaml: &str,
        source: &str,
        by: &str,
    ) -> Result<(i64, bool), StoreError> {
        self.store.with(|c| {
            c.tx(|c| {
                if let Some(cur) = pipeline_row(c, name)? {
                    if cur.project != project {
                        return Err(StoreError::Conflict(format!(
                            "pipeline `{name}` belongs to project `{}`; it cannot move to `{project}`",
                            cur.project
                        )));
                    }
                    if revision_yaml(c, name, cur.revision)?.as_deref() == Some(yaml) {
                        return Ok((cur.revision, false));
                    }
                }
                let rev: i64 = c.value(
                    "SELECT COALESCE(MAX(revision), 0) + 1 FROM pipeline_revisions WHERE name = ?1",
                    args![name],
                )?;
                c.exec(
                    "INSERT INTO pipeline_revisions (name, revision, yaml, created_at, created_by)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    args![name, rev, yaml, unix_secs(), by],
                )?;
                c.exec(
                    "INSERT INTO pipelines (name, project, revision, source, updated_at, updated_by)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (name) DO UPDATE SET revision = ?3, source = ?4, updated_at = ?5, updated_by = ?6",
                    args![name, project, rev, source, unix_secs(), by],
                )?;
                Ok((rev, true))
            })
        })
    }

    /// A pipeline's current revision and its YAML.
    pub fn get(&self, name: &str) -> Result<Option<(PipelineRow, String)>, StoreError> {
        self.store.with(|c| {
            let Some(row) = pipeline_row(c, name)? else {
                return Ok(None);
            };
            let yaml = revision_yaml(c, name, row.revision)?.unwrap_or_default();
            Ok(Some((row, yaml)))
        })
    }

    /// The YAML of one revision.
    pub fn revision(&self, name: &str, revision: i64) -> Result<Option<String>, StoreError> {
        self.store.with(|c| revision_yaml(c, name, revision))
    }

    /// Every pipeline, by name.
    pub fn list(&self) -> Result<Vec<PipelineRow>, StoreError> {
        self.store.with(|c| {
            c.rows(
                "SELECT name, project, revision, source, updated_at, updated_by FROM pipelines ORDER BY name",
                args![],
            )?
            .iter()
            .map(to_pipeline)
            .collect()
        })
    }

    /// Deletes a pipeline (its revisions stay for the runs that used them).
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let n = self
            .store
            .with(|c| c.exec("DELETE FROM pipelines WHERE name = ?1", args![name]))?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no pipeline named `{name}`")));
        }
        Ok(())
    }

    /// Stores a new run with its `Start` event and takes `claim`, in one
    /// transaction; `false` (and nothing stored) if the claim was taken
    /// already.
    pub async fn create_run_claimed(
        &self,
        run: &Run,
        revision: i64,
        pins: &BTreeMap<String, Pin>,
        claim: Option<&Claim>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .create_run_leased(run, revision, pins, claim, None, None)
            .await?
            .is_some())
    }

    /// [`PipelineStore::create_run_claimed`], also taking the run's lease
    /// (`run/<id>`) for `holder` (replica, TTL) in the same transaction, so
    /// that the replica that stores a run drives it without another write
    /// first, and `audit`, the record of who started it, so that the start
    /// and its record share one sync. `None` if the claim was taken
    /// already.
    pub async fn create_run_leased(
        &self,
        run: &Run,
        revision: i64,
        pins: &BTreeMap<String, Pin>,
        claim: Option<&Claim>,
        holder: Option<(String, std::time::Duration)>,
        audit: Option<AuditRecord>,
    ) -> Result<Option<Created>, StoreError> {
        let record = to_json(run)?;
        let pins = to_json(pins)?;
        let claim = claim.cloned();
        let (id, pipeline, project, status) = (
            run.id.clone(),
            run.pipeline.clone(),
            run.project.clone(),
            run.status.name(),
        );
        self.journal
            .write(move |c| {
                if let Some(claim) = &claim
                    && !claims::take(c, claim)?
                {
                    return Ok(None);
                }
                let now = unix_millis();
                c.exec(
                    "INSERT INTO runs (id, pipeline, revision, project, status, record, pins, created_ms, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                    args![&id, &pipeline, revision, &project, status, &record, &pins, now],
                )?;
                push(c, &id, &Event::Start)?;
                log(c, &id, None, "engine", "queued")?;
                let lease = match &holder {
                    Some((replica, ttl)) => {
                        capstan_store::leases::acquire_lease_in(c, &format!("run/{id}"), replica, *ttl)?
                    }
                    None => None,
                };
                if let Some(record) = &audit {
                    capstan_runtime::capabilities::audit::insert_now(c, record.clone())?;
                }
                Ok(Some(Created { at_ms: now, lease }))
            })
            .await
    }

    /// One run.
    pub fn run(&self, id: &str) -> Result<Option<RunRow>, StoreError> {
        self.store.with(|c| {
            c.row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
                args![id],
            )?
            .map(|r| to_run(&r))
            .transpose()
        })
    }

    /// Newest runs first, of one pipeline or all.
    pub fn runs(&self, pipeline: Option<&str>, limit: i64) -> Result<Vec<RunRow>, StoreError> {
        self.store.with(|c| {
            c.rows(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE (CAST(?1 AS TEXT) IS NULL OR pipeline = ?1)
                     ORDER BY created_ms DESC, id DESC LIMIT ?2"
                ),
                args![pipeline, limit],
            )?
            .iter()
            .map(to_run)
            .collect()
        })
    }

    /// Runs not finished of `pipeline` that have started (for its
    /// concurrency limit).
    pub fn started_runs(&self, pipeline: &str) -> Result<i64, StoreError> {
        Ok(self.store.with(|c| {
            c.value::<i64>(
                "SELECT COUNT(*) FROM runs WHERE pipeline = ?1 AND status = 'running'",
                args![pipeline],
            )
        })?)
    }

    /// Runs started and not finished, over every pipeline.
    pub fn started_runs_all(&self) -> Result<i64, StoreError> {
        Ok(self.store.with(|c| {
            c.value::<i64>(
                "SELECT COUNT(*) FROM runs WHERE status = 'running'",
                args![],
            )
        })?)
    }

    /// Runs waiting to start, and runs waiting for an environment lock.
    pub fn depths(&self) -> Result<(i64, i64), StoreError> {
        Ok(self.store.with(|c| {
            let queued =
                c.value::<i64>("SELECT COUNT(*) FROM runs WHERE status = 'queued'", args![])?;
            let waiting =
                c.value::<i64>("SELECT COUNT(*) FROM env_locks WHERE holder = 0", args![])?;
            Ok::<_, DbError>((queued, waiting))
        })?)
    }

    /// Queues `event` for run `id`.
    pub fn push(&self, id: &str, event: &Event) -> Result<(), StoreError> {
        Ok(self.store.with(|c| push(c, id, event))?)
    }

    /// Runs that have events waiting, a wake-up due, or nobody driving them
    /// (no live lease: a replica died), oldest first. With `mine`, also the
    /// runs whose lease `mine` holds: after a restart, the runs this
    /// replica drove before (it keeps its name, so their leases are still
    /// live and its own).
    pub fn due(&self, now_ms: i64, mine: Option<&str>) -> Result<Vec<Due>, StoreError> {
        self.store.with(|c| {
            c.rows(
                "SELECT id, status, pipeline, revision,
                        CAST(CASE WHEN EXISTS (SELECT 1 FROM run_inbox i WHERE i.run_id = runs.id
                                                 AND i.event <> '{\"event\":\"start\"}')
                             THEN 1 ELSE 0 END AS BIGINT)
                 FROM runs WHERE finished_ms IS NULL
                   AND (wakeup_ms <= ?1
                        OR EXISTS (SELECT 1 FROM run_inbox i WHERE i.run_id = runs.id)
                        OR NOT EXISTS (SELECT 1 FROM leases l
                                       WHERE l.name = 'run/' || runs.id AND l.expires_at_ms > ?1)
                        OR EXISTS (SELECT 1 FROM leases l
                                   WHERE l.name = 'run/' || runs.id AND l.holder = ?2))
                 ORDER BY created_ms LIMIT 5000",
                args![now_ms, mine],
            )?
            .iter()
            .map(|r| {
                Ok(Due {
                    id: r.get(0)?,
                    queued: r.get::<String>(1)? == RunStatus::Queued.name(),
                    pipeline: r.get(2)?,
                    revision: r.get(3)?,
                    other_events: r.get::<i64>(4)? != 0,
                })
            })
            .collect()
        })
    }

    /// Runs not finished, for a replica taking over after a restart.
    pub fn unfinished(&self) -> Result<Vec<String>, StoreError> {
        self.store.with(|c| {
            c.rows(
                "SELECT id FROM runs WHERE finished_ms IS NULL ORDER BY created_ms",
                args![],
            )?
            .iter()
            .map(|r| Ok(r.get(0)?))
            .collect()
        })
    }

    /// The events waiting for run `id`, oldest first, with their ids.
    pub fn inbox(&self, id: &str) -> Result<Vec<(i64, Event)>, StoreError> {
        self.store.with(|c| {
            let rows = c.rows(
                "SELECT id, event FROM run_inbox WHERE run_id = ?1 ORDER BY id",
                args![id],
            )?;
            let mut out = Vec::new();
            for r in rows {
                let text: String = r.get(1)?;
                match serde_json::from_str(&text) {
                    Ok(e) => out.push((r.get(0)?, e)),
                    Err(e) => tracing::error!(run = %id, "unreadable inbox event, skipped: {e}"),
                }
            }
            Ok(out)
        })
    }

    /// Appends a line to a run's log.
    pub fn log(
        &self,
        id: &str,
        step: Option<&str>,
        source: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        Ok(self.store.with(|c| log(c, id, step, source, message))?)
    }

    /// A run's log lines after `after` (0: from the start).
    pub fn logs(&self, id: &str, after: i64, limit: i64) -> Result<Vec<LogLine>, StoreError> {
        self.store.with(|c| {
            c.rows(
                "SELECT id, step, source, message, at_ms FROM run_log
                 WHERE run_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                args![id, after, limit],
            )?
            .iter()
            .map(|r| {
                Ok(LogLine {
                    id: r.get(0)?,
                    step: r.get(1)?,
                    source: r.get(2)?,
                    message: r.get(3)?,
                    at_ms: r.get(4)?,
                })
            })
            .collect()
        })
    }

    /// Queues run `id` for environment lock `key`; grants it if free, and
    /// with `supersede` drops older waiters (telling them why). The runs
    /// concerned get their event in the same transaction.
    pub fn request_lock(
        &self,
        key: &str,
        id: &str,
        policy: LockPolicy,
    ) -> Result<LockChange, StoreError> {
        let policy_name = match policy {
            LockPolicy::Queue => "queue",
            LockPolicy::Supersede => "supersede",
        };
        self.store.with(|c| {
            c.tx(|c| {
                c.exec(
                    "INSERT INTO env_locks (environment, run_id, policy, holder, queued_ms)
                     VALUES (?1, ?2, ?3, 0, ?4) ON CONFLICT DO NOTHING",
                    args![key, id, policy_name, unix_millis()],
                )?;
                let mut change = LockChange::default();
                // Asked again (a resumed run): it may hold the lock already.
                let holds: i64 = c.value(
                    "SELECT COUNT(*) FROM env_locks WHERE environment = ?1 AND run_id = ?2 AND holder = 1",
                    args![key, id],
                )?;
                if holds > 0 {
                    let env = key.rsplit('/').next().unwrap_or(key).to_string();
                    push(c, id, &Event::LockGranted { environment: env })?;
                    change.granted.push(id.to_string());
                    change.waited_ms.push(0);
                    return Ok(change);
                }
                if policy == LockPolicy::Supersede {
                    let older = c.rows(
                        "SELECT run_id FROM env_locks WHERE environment = ?1 AND holder = 0 AND run_id != ?2
                           AND queued_ms <= (SELECT queued_ms FROM env_locks WHERE environment = ?1 AND run_id = ?2)",
                        args![key, id],
                    )?;
                    for r in older {
                        let run: String = r.get(0)?;
                        c.exec(
                            "DELETE FROM env_locks WHERE environment = ?1 AND run_id = ?2",
                            args![key, &run],
                        )?;
                        let env = key.rsplit('/').next().unwrap_or(key).to_string();
                        push(c, &run, &Event::Superseded { environment: env, by_run: id.to_string() })?;
                        change.superseded.push(run);
                    }
                }
                (change.granted, change.waited_ms) = grant_next(c, key)?;
                Ok(change)
            })
        })
    }

    /// Gives up run `id`'s place (held or waiting) for lock `key`; grants
    /// the next waiter.
    pub fn release_lock(&self, key: &str, id: &str) -> Result<LockChange, StoreError> {
        self.store.with(|c| {
            c.tx(|c| {
                c.exec(
                    "DELETE FROM env_locks WHERE environment = ?1 AND run_id = ?2",
                    args![key, id],
                )?;
                let (granted, waited_ms) = grant_next(c, key)?;
                Ok(LockChange {
                    granted,
                    waited_ms,
                    superseded: Vec::new(),
                })
            })
        })
    }

    /// Records a webhook delivery id; `false` if it was seen before.
    pub fn first_delivery(&self, provider: &str, delivery: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .with(|c| claims::insert_delivery(c, provider, delivery))?)
    }
}

/// Makes the oldest waiter the holder if nobody holds `key`; returns it
/// with how long it waited.
fn grant_next(c: &mut Conn, key: &str) -> Result<(Vec<String>, Vec<i64>), DbError> {
    let held: i64 = c.value(
        "SELECT COUNT(*) FROM env_locks WHERE environment = ?1 AND holder = 1",
        args![key],
    )?;
    if held > 0 {
        return Ok(Default::default());
    }
    let Some(next) = c.row(
        "SELECT run_id, queued_ms FROM env_locks WHERE environment = ?1 ORDER BY queued_ms, run_id LIMIT 1",
        args![key],
    )?
    else {
        return Ok(Default::default());
    };
    let run: String = next.get(0)?;
    let waited = unix_millis() - next.get::<i64>(1)?;
    c.exec(
        "UPDATE env_locks SET holder = 1 WHERE environment = ?1 AND run_id = ?2",
        args![key, &run],
    )?;
    let env = key.rsplit('/').next().unwrap_or(key).to_string();
    push(c, &run, &Event::LockGranted { environment: env })?;
    Ok((vec![run], vec![waited]))
}

fn push(c: &mut Conn, id: &str, event: &Event) -> Result<(), DbError> {
    let text = serde_json::to_string(event).map_err(|e| DbError::Decode(e.to_string()))?;
    c.exec(
        "INSERT INTO run_inbox (run_id, event, at_ms) VALUES (?1, ?2, ?3)",
        args![id, text, unix_millis()],
    )?;
    Ok(())
}

fn log(
    c: &mut Conn,
    id: &str,
    step: Option<&str>,
    source: &str,
    message: &str,
) -> Result<(), DbError> {
    c.exec(
        "INSERT INTO run_log (run_id, step, source, message, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![id, step, source, message, unix_millis()],
    )?;
    Ok(())
}

fn pipeline_row(c: &mut Conn, name: &str) -> Result<Option<PipelineRow>, StoreError> {
    c.row(
        "SELECT name, project, revision, source, updated_at, updated_by FROM pipelines WHERE name = ?1",
        args![name],
    )?
    .map(|r| to_pipeline(&r))
    .transpose()
}

fn revision_yaml(c: &mut Conn, name: &str, revision: i64) -> Result<Option<String>, StoreError> {
    Ok(c.row(
        "SELECT yaml FROM pipeline_revisions WHERE name = ?1 AND revision = ?2",
        args![name, revision],
    )?
    .map(|r| r.get(0))
    .transpose()?)
}

fn to_pipeline(r: &Row) -> Result<PipelineRow, StoreError> {
    Ok(PipelineRow {
        name: r.get(0)?,
        project: r.get(1)?,
        revision: r.get(2)?,
        source: r.get(3)?,
        updated_at: r.get(4)?,
        updated_by: r.get(5)?,
    })
}

fn to_run(r: &Row) -> Result<RunRow, StoreError> {
    let record: String = r.get(0)?;
    let pins: String = r.get(2)?;
    Ok(RunRow {
        run: serde_json::from_str(&record).map_err(|e| decode("run record", e))?,
        revision: r.get(1)?,
        pins: serde_json::from_str(&pins).map_err(|e| decode("run pins", e))?,
        created_ms: r.get(3)?,
        updated_ms: r.get(4)?,
    })
}

fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| decode("encoding", e))
}

fn decode(what: &str, e: serde_json::Error) -> StoreError {
    StoreError::Db(DbError::Decode(format!("{what}: {e}")))
}

impl RunStatus {
    /// Whether the run is over.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}
