//! The host side of the pipelines engine: pipelines stored as revisions,
//! runs started through one entry point ([`Engine::start_run`]), and the
//! driver that applies each run's events to the pure [`crate::machine`],
//! journals the result, then carries out its actions: plugin calls through
//! the registry (the versions the run pinned), approvals through the shared
//! gate, environment locks and timers in the database. A run is driven by
//! the replica holding its lease; when that replica dies, another takes the
//! lease over and resumes the run. Runs are also started by triggers: push
//! webhooks ([`Engine::receive_push`]) and cron schedules (`cron`).

mod catalog;
mod cron;
mod driver;
mod driving;
mod metrics;
mod push;
mod steps;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use capstan_registry::registry::{ApprovalListener, Registry, RegistryError};
use capstan_registry::trust::approvals::Approval;
use capstan_registry::trust::{Authority, Role};
use capstan_runtime::capabilities::AuditRecord;
use capstan_store::leases::Lease;
use capstan_store::{StoreError, ids};
use serde_json::Value;

pub use catalog::RegistryCatalog;
pub use metrics::PipelineMetrics;
pub use push::{HookError, HookOutcome};

use crate::machine::{Decision, Event, Limits, RoleGrant, Run};
use crate::model::{Pipeline, resolve_params};
use crate::store::{Claim, Pin, PipelineRow, PipelineStore, RunRow};

/// The approval kind of pipeline gates in the shared gate; the subject is
/// `<run>/<step>`.
pub const APPROVAL_KIND: &str = "pipeline-step";

/// Who started a run and how, for its `run.start` audit record, which is
/// stored in the run's own transaction (one sync for both).
pub(crate) struct StartAudit<'a> {
    /// The starter.
    pub who: &'a Authority,
    /// How it was started (schedule, delivery...); the run's id, pipeline
    /// and parameters are added.
    pub detail: Value,
    /// A start by a caller, who needs the operator role in the pipeline's
    /// project (triggers were authorized when they were configured).
    pub by_caller: bool,
}

impl StartAudit<'_> {
    fn record(self, run: &Run) -> AuditRecord {
        let mut detail = self.detail;
        if let Some(d) = detail.as_object_mut() {
            d.insert("run".into(), Value::from(run.id.clone()));
            d.insert("pipeline".into(), Value::from(run.pipeline.clone()));
            d.insert("params".into(), serde_json::json!(run.params));
        }
        Registry::change_record(self.who, "run.start", &run.id, detail)
    }
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Runs started (not finished) at once, over every pipeline.
    pub max_running: i64,
    /// How long a run's lease lasts without renewal.
    pub lease_ttl: Duration,
    /// How often the driver looks for due runs when nothing wakes it.
    pub poll: Duration,
    /// This replica's name in leases.
    pub replica: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_running: 64,
            lease_ttl: Duration::from_secs(15),
            poll: Duration::from_millis(250),
            replica: format!("replica-{}", ids::new_id()),
        }
    }
}

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request or the pipeline is invalid; the message lists every problem.
    #[error("{0}")]
    Invalid(String),
    /// The caller lacks the role.
    #[error("{0}")]
    Forbidden(String),
    /// No such pipeline or run.
    #[error("{0}")]
    NotFound(String),
    /// The change contradicts what is stored.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<RegistryError> for EngineError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(m) => EngineError::NotFound(m),
            RegistryError::Forbidden(m) => EngineError::Forbidden(m),
            RegistryError::Conflict(m) => EngineError::Conflict(m),
            RegistryError::Store(s) => EngineError::Store(s),
            other => EngineError::Invalid(other.to_string()),
        }
    }
}

/// The pipelines engine of one replica.
pub struct Engine {
    db: PipelineStore,
    registry: Arc<Registry>,
    config: EngineConfig,
    limits: Limits,
    wake: tokio::sync::Notify,
    /// Leases of the runs this replica drives.
    held: Mutex<HashMap<String, Lease>>,
    /// Attempts in flight: (run, step, attempt).
    inflight: Mutex<HashMap<(String, String, u32), tokio::task::AbortHandle>>,
    /// Runs being driven right now, each by one task; `true` when that
    /// task is to drive its run once more (an event came meanwhile).
    driving: Mutex<HashMap<String, bool>>,
    /// The last state this replica journaled for each run it holds: no
    /// other writer can change it while the lease is held (commits are
    /// fenced), so a turn starts from it instead of reading it back.
    states: Mutex<HashMap<String, RunRow>>,
    /// Parsed pipeline revisions.
    parsed: Mutex<HashMap<(String, i64), Arc<Pipeline>>>,
    /// Files of the pipelines directory that did not load.
    dir_errors: watch::DirectoryErrors,
    metrics: PipelineMetrics,
    /// When the queue depths were last measured, Unix ms.
    depths_at: std::sync::atomic::AtomicI64,
}

impl Engine {
    /// Starts the engine: its driver, lease renewal, and its part in the
    /// approval gate.
    pub fn start(
        registry: Arc<Registry>,
        config: EngineConfig,
        metrics: PipelineMetrics,
    ) -> Arc<Engine> {
        let engine = Arc::new(Engine {
            db: PipelineStore::new(registry.store().clone()),
            registry: registry.clone(),
            config,
            limits: Limits::default(),
            wake: tokio::sync::Notify::new(),
            held: Mutex::default(),
            inflight: Mutex::default(),
            driving: Mutex::default(),
            states: Mutex::default(),
            parsed: Mutex::default(),
            dir_errors: Default::default(),
            metrics,
            depths_at: Default::default(),
        });
        registry.on_approval(Arc::new(Gatekeeper(Arc::downgrade(&engine))));
        tokio::spawn(driver::run(Arc::downgrade(&engine)));
        tokio::spawn(driver::renew(Arc::downgrade(&engine)));
        tokio::spawn(cron::run(Arc::downgrade(&engine)));
        engine
    }

    /// The engine's tables.
    pub fn db(&self) -> &PipelineStore {
        &self.db
    }

    /// Validates and stores `yaml` as the next revision of its pipeline.
    /// `who` needs the operator role in the pipeline's project.
    /// `name`, if given, must be the document's name.
    pub async fn put_pipeline(
        &self,
        yaml: &str,
        file: &str,
        name: Option<&str>,
        source: &str,
        who: &Authority,
    ) -> Result<(PipelineRow, bool), EngineError> {
        let catalog = RegistryCatalog::new(self.registry.store().clone());
        let p =
            crate::load(file, yaml, &catalog).map_err(|e| EngineError::Invalid(e.to_string()))?;
        if let Some(name) = name.filter(|n| *n != p.name) {
            return Err(EngineError::Invalid(format!(
                "{file}: the document is named `{}`, not `{name}`",
                p.name
            )));
        }
        check_approver_roles(file, &p)?;
        require(who, &p.project, Role::Operator, "store pipelines")?;
        if !self
            .registry
            .gate()
            .projects()
            .exists(&p.project)
            .map_err(RegistryError::from)?
        {
            return Err(EngineError::NotFound(format!(
                "{file}: project `{}` does not exist; create it first",
                p.project
            )));
        }
        let (revision, changed) = self.db.put(&p.name, &p.project, yaml, source, &who.actor)?;
        if changed {
            let detail = serde_json::json!({ "name": p.name, "project": p.project, "revision": revision, "source": source });
            self.registry
                .audit_change(who, "pipeline.put", &p.name, detail)
                .await;
        }
        let (row, _) = self
            .db
            .get(&p.name)?
            .ok_or_else(|| EngineError::NotFound(p.name.clone()))?;
        Ok((row, changed))
    }

    /// A stored pipeline and its YAML, for a caller with a role in its project.
    pub fn pipeline(
        &self,
        name: &str,
        who: &Authority,
    ) -> Result<(PipelineRow, String), EngineError> {
        let (row, yaml) = self
            .db
            .get(name)?
            .ok_or_else(|| EngineError::NotFound(format!("no pipeline named `{name}`")))?;
        require(who, &row.project, Role::Viewer, "read pipelines")?;
        Ok((row, yaml))
    }

    /// Deletes a pipeline; runs in flight finish on their revision.
    pub async fn delete_pipeline(&self, name: &str, who: &Authority) -> Result<(), EngineError> {
        let (row, _) = self.pipeline(name, who)?;
        require(who, &row.project, Role::Admin, "delete pipelines")?;
        self.db.delete(name)?;
        let detail =
            serde_json::json!({ "name": name, "project": row.project, "revision": row.revision });
        self.registry
            .audit_change(who, "pipeline.delete", name, detail)
            .await;
        Ok(())
    }

    /// The one entry point that starts runs (manual starts, webhooks,
    /// schedules, alert remediation): resolves the parameters, pins the
    /// pipeline revision and every plugin version, and queues the run.
    pub async fn start_run(
        &self,
        name: &str,
        given: BTreeMap<String, Value>,
        trigger: Value,
        started_by: &str,
    ) -> Result<Run, EngineError> {
        let row = self
            .start_claimed(name, given, trigger, started_by, None, None)
            .await?
            .ok_or_else(|| EngineError::Conflict(format!("pipeline `{name}`: already started")))?;
        Ok(row.run)
    }

    /// [`Engine::start_run`], taking `claim` (a webhook delivery, a cron
    /// due time) in the transaction that stores the run: `None` when it
    /// was taken before, and then no run is started. `audit` is stored in
    /// that transaction too, as the `run.start` record.
    pub(crate) async fn start_claimed(
        &self,
        name: &str,
        given: BTreeMap<String, Value>,
        mut trigger: Value,
        started_by: &str,
        claim: Option<&Claim>,
        audit: Option<StartAudit<'_>>,
    ) -> Result<Option<RunRow>, EngineError> {
        let (row, _) = self
            .db
            .get(name)?
            .ok_or_else(|| EngineError::NotFound(format!("no pipeline named `{name}`")))?;
        if let Some(a) = audit.as_ref().filter(|a| a.by_caller) {
            require(a.who, &row.project, Role::Viewer, "read pipelines")?;
            require(a.who, &row.project, Role::Operator, "start runs")?;
        }
        let p = self.pipeline_at(name, row.revision)?;
        let params = resolve_params(&p.params, &given).map_err(|errors| {
            let list: Vec<String> = errors
                .iter()
                .map(|e| format!("params.{}: {}", e.name, e.message))
                .collect();
            EngineError::Invalid(format!("pipeline `{name}`: {}", list.join("; ")))
        })?;
        let pins = self.pin(&p)?;
        // Every field expressions may read is there, empty if it does not
        // apply to this kind of trigger.
        if let Some(fields) = trigger.as_object_mut() {
            for f in crate::expr::TRIGGER_FIELDS {
                fields.entry(*f).or_insert_with(|| Value::from(""));
            }
            fields.insert("started_by".into(), Value::from(started_by));
        }
        let run = Run::new(&p, &ids::new_id(), trigger, params, Some(started_by));
        let record = audit.map(|a| a.record(&run));
        self.store_run(run, row.revision, pins, claim, record).await
    }

    /// Stores a new run (taking `claim` with it, and its audit record) and
    /// the lease to drive it here, then wakes the driver; `None` if the
    /// claim was taken before.
    async fn store_run(
        &self,
        run: Run,
        revision: i64,
        pins: BTreeMap<String, Pin>,
        claim: Option<&Claim>,
        audit: Option<AuditRecord>,
    ) -> Result<Option<RunRow>, EngineError> {
        let holder = (self.config.replica.clone(), self.config.lease_ttl);
        let Some(created) = self
            .db
            .create_run_leased(&run, revision, &pins, claim, Some(holder), audit.clone())
            .await?
        else {
            return Ok(None);
        };
        if let Some(record) = &audit {
            capstan_runtime::capabilities::audit::log_change(record);
        }
        let row = RunRow {
            run,
            revision,
            pins,
            created_ms: created.at_ms,
            updated_ms: created.at_ms,
        };
        if let Some(lease) = created.lease {
            let id = row.run.id.clone();
            self.states
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), row.clone());
            self.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, lease);
        }
        self.wake.notify_one();
        Ok(Some(row))
    }

    /// Starts a run for `who` (operator in the pipeline's project); the
    /// run, as stored.
    pub async fn start_run_as(
        &self,
        name: &str,
        given: BTreeMap<String, Value>,
        who: &Authority,
    ) -> Result<RunRow, EngineError> {
        let trigger = serde_json::json!({ "kind": "manual", "started_by": who.actor });
        let audit = StartAudit {
            who,
            detail: serde_json::json!({}),
            by_caller: true,
        };
        self.start_claimed(name, given, trigger, &who.actor, None, Some(audit))
            .await?
            .ok_or_else(|| EngineError::Conflict(format!("pipeline `{name}`: already started")))
    }

    /// Cancels a run, rolling back its completed steps if asked.
    pub async fn cancel(
        &self,
        id: &str,
        rollback: bool,
        who: &Authority,
    ) -> Result<(), EngineError> {
        let row = self.run(id, who)?;
        require(who, &row.run.project, Role::Operator, "cancel runs")?;
        if row.run.status.is_terminal() {
            return Err(EngineError::Conflict(format!(
                "run {id} is already {}",
                row.run.status.name()
            )));
        }
        self.db.push(
            id,
            &Event::Cancel {
                by: who.actor.clone(),
                rollback,
            },
        )?;
        self.wake.notify_one();
        let detail = serde_json::json!({ "run": id, "rollback": rollback });
        self.registry
            .audit_change(who, "run.cancel", id, detail)
            .await;
        Ok(())
    }

    /// Runs a finished run again from `from_step` (operator of its
    /// project): steps that succeeded and do not depend on it keep their
    /// outputs; the new run records where it came from. It runs the same
    /// pipeline revision, with the plugin versions active now (a rerun
    /// usually follows a fix).
    pub async fn rerun(
        &self,
        id: &str,
        from_step: &str,
        who: &Authority,
    ) -> Result<Run, EngineError> {
        let prev = self.run(id, who)?;
        require(who, &prev.run.project, Role::Operator, "rerun runs")?;
        if !prev.run.status.is_terminal() {
            return Err(EngineError::Conflict(format!(
                "run {id} is still {}; cancel it or wait for it to finish",
                prev.run.status.name()
            )));
        }
        let p = self.pipeline_at(&prev.run.pipeline, prev.revision)?;
        let run = crate::machine::Machine::new(&p)
            .rerun_from(&prev.run, from_step, &ids::new_id(), Some(&who.actor))
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let pins = self.pin(&p)?;
        let detail = serde_json::json!({ "run": run.id, "rerun_of": id, "from": from_step });
        let record = Registry::change_record(who, "run.rerun", &run.id, detail);
        let row = self
            .store_run(run, prev.revision, pins, None, Some(record))
            .await?
            .ok_or_else(|| EngineError::Conflict(format!("run {id}: rerun already stored")))?;
        Ok(row.run)
    }

    /// One run, for a caller with a role in its project.
    pub fn run(&self, id: &str, who: &Authority) -> Result<RunRow, EngineError> {
        let row = self
            .db
            .run(id)?
            .ok_or_else(|| EngineError::NotFound(format!("no run {id}")))?;
        require(who, &row.run.project, Role::Viewer, "read runs")?;
        Ok(row)
    }

    /// The parsed pipeline of one stored revision.
    /// What is wrong with stored pipeline `name` that storing it could not
    /// refuse: push triggers whose webhook secret is not stored (yet), so
    /// every delivery would be refused with 401.
    pub fn warnings(&self, name: &str) -> Result<Vec<String>, EngineError> {
        let Some(row) = self.db.get(name)?.map(|(row, _)| row) else {
            return Ok(Vec::new());
        };
        let p = self.pipeline_at(name, row.revision)?;
        let stored =
            capstan_runtime::capabilities::secrets::SecretBox::names(self.registry.store())
                .map_err(|e| EngineError::Invalid(e.to_string()))?;
        Ok(p.triggers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t {
                crate::model::Trigger::Push(push) => push
                    .secret
                    .as_ref()
                    .filter(|s| !stored.contains(s))
                    .map(|s| {
                        format!(
                            "triggers[{i}].push.secret: no secret named `{s}` is stored; \
                             its webhook deliveries are refused (401) until it is (PUT /v1/secrets/{s})"
                        )
                    }),
                _ => None,
            })
            .collect())
    }

    fn pipeline_at(&self, name: &str, revision: i64) -> Result<Arc<Pipeline>, EngineError> {
        let key = (name.to_string(), revision);
        if let Some(p) = self
            .parsed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(p.clone());
        }
        let yaml = self.db.revision(name, revision)?.ok_or_else(|| {
            EngineError::NotFound(format!("pipeline `{name}` has no revision {revision}"))
        })?;
        let p = Arc::new(Pipeline::from_yaml(&yaml).map_err(|e| {
            EngineError::Invalid(format!("stored pipeline `{name}` r{revision}: {e}"))
        })?);
        let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if parsed.len() > 256 {
            parsed.clear();
        }
        parsed.insert(key, p.clone());
        Ok(p)
    }

    /// The version (and digest) of every plugin the pipeline calls, as of
    /// now, read in one go.
    fn pin(&self, p: &Pipeline) -> Result<BTreeMap<String, Pin>, EngineError> {
        let mut wanted: Vec<(String, Option<String>)> = Vec::new();
        let mut users = Vec::new();
        for step in p.all_steps() {
            let Some(plugin) = &step.plugin else { continue };
            let key = (plugin.name.clone(), plugin.version.clone());
            let at = match wanted.iter().position(|k| *k == key) {
                Some(at) => at,
                None => {
                    wanted.push(key);
                    wanted.len() - 1
                }
            };
            users.push((step.id.as_str(), at));
        }
        let found = self.registry.store().resolve_versions(&wanted)?;
        let mut pins = BTreeMap::new();
        for (step, at) in users {
            let (name, asked) = &wanted[at];
            let Some((version, digest)) = found[at].clone() else {
                return Err(EngineError::Invalid(match asked {
                    Some(v) => format!("step `{step}`: plugin `{name}` has no version {v}"),
                    None => format!("step `{step}`: plugin `{name}` has no active version"),
                }));
            };
            pins.insert(name.clone(), Pin { version, digest });
        }
        Ok(pins)
    }

    /// Wakes the driver (an event was queued).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Refuses unless `who` holds `role` in `project`.
fn require(who: &Authority, project: &str, role: Role, what: &str) -> Result<(), EngineError> {
    if who.role_in(project).is_some_and(|r| r >= role) {
        return Ok(());
    }
    Err(EngineError::Forbidden(format!(
        "{}: to {what} of project `{project}` you need the `{role}` role there",
        who.actor
    )))
}

/// Approvers are named by one of the roles of the trust model.
fn check_approver_roles(file: &str, p: &Pipeline) -> Result<(), EngineError> {
    let bad: Vec<String> = p
        .all_steps()
        .filter_map(|s| s.approval.as_ref().map(|a| (s, a)))
        .filter(|(_, a)| a.approvers.role.parse::<Role>().is_err())
        .map(|(s, a)| {
            format!(
                "{file}: step \"{}\": approval.approvers.role: `{}` is not a role (viewer, operator or admin)",
                s.id, a.approvers.role
            )
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(EngineError::Invalid(bad.join("\n")))
    }
}

/// The engine's part in the shared approval gate: each decision on a
/// pipeline gate becomes the run's `Approval` event.
struct Gatekeeper(Weak<Engine>);

impl ApprovalListener for Gatekeeper {
    fn decided(&self, approval: &Approval, who: &Authority, approve: bool, comment: &str) {
        if approval.kind != APPROVAL_KIND {
            return;
        }
        let Some(engine) = self.0.upgrade() else {
            return;
        };
        let Some((run, step)) = approval.subject.split_once('/') else {
            return;
        };
        let event = Event::Approval(Decision {
            step: step.to_string(),
            user: who.actor.clone(),
            // The gate checked the role before storing the decision.
            roles: vec![RoleGrant {
                project: approval.project.clone(),
                role: approval.approver_role.as_str().to_string(),
            }],
            approve,
            comment: comment.to_string(),
        });
        if let Err(e) = engine.db.push(run, &event) {
            // The decision is stored in the gate; a resumed run reads it back.
            tracing::error!(%run, "queueing an approval decision: {e}");
        }
        engine.wake();
    }
}
