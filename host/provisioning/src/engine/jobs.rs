//! Applies and destroys as jobs. The worker claims a job's instance lease
//! (`provision/<name>`), then runs the steps not yet in the job's journal,
//! writing the journal after each: a replica that dies mid-apply leaves a
//! `running` job that the next holder of the lease resumes where it
//! stopped. Apply: the ApplySet parent is recorded with the union of old
//! and new group-kinds and namespaces before members are applied (after the
//! step that creates its namespace), then each step is applied and waited
//! on, then the prune, then the parent is rewritten with the new set only.
//! The lease is kept by the shared [`LeaseKeeper`]; a job whose lease is
//! lost (another replica took it) stops at once, journal intact.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use capstan_store::leases::LeaseKeeper;
use capstan_store::unix_millis;
use serde_json::{Value, json};

use super::check::stale_objects;
use super::plan::{Desired, set_id};
use super::{Engine, ProvisionError};
use crate::applyset;
use crate::kstatus::{self, Status};
use crate::kube::{Granted, KubeError};
use crate::model::{Instance, ObjectRef, Plan, Progress, Verdict};
use crate::order;
use crate::store::{Job, Member};

/// Why a job stopped.
pub(super) enum Stop {
    /// It failed; recorded as the job's result.
    Failed(ProvisionError),
}

impl From<ProvisionError> for Stop {
    fn from(e: ProvisionError) -> Self {
        Stop::Failed(e)
    }
}

impl From<KubeError> for Stop {
    fn from(e: KubeError) -> Self {
        Stop::Failed(e.into())
    }
}

impl From<capstan_store::StoreError> for Stop {
    fn from(e: capstan_store::StoreError) -> Self {
        Stop::Failed(e.into())
    }
}

/// The job loop: runnable jobs whose lease this replica gets.
pub(super) async fn worker(engine: Weak<Engine>) {
    loop {
        let Some(e) = engine.upgrade() else { return };
        let poll = e.config.poll;
        // Jobs call the provisioner again: not before the stored plugins are loaded.
        if e.registry.is_ready()
            && let Err(err) = e.claim_jobs().await
        {
            tracing::warn!("provisioning jobs: {err}");
        }
        let wake = async { e.wake.notified().await };
        let _ = tokio::time::timeout(poll, wake).await;
    }
}

impl Engine {
    async fn claim_jobs(self: &Arc<Self>) -> Result<(), ProvisionError> {
        for job in self.db.runnable()? {
            if self
                .local
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&job.id)
            {
                continue;
            }
            let lease_name = format!("provision/{}", job.name);
            let Some(keeper) = LeaseKeeper::acquire(
                self.db_store().clone(),
                &lease_name,
                &self.config.replica,
                self.config.lease_ttl,
            )
            .await?
            else {
                continue;
            };
            self.local
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(job.id.clone());
            let engine = self.clone();
            tokio::spawn(async move { engine.run_job(job, keeper).await });
        }
        Ok(())
    }

    fn db_store(&self) -> &Arc<capstan_store::Store> {
        self.registry.store()
    }

    async fn run_job(self: Arc<Self>, mut job: Job, mut keeper: LeaseKeeper) {
        job.state = "running".into();
        let _ = self.db.save_job(&job);
        let id = job.id.clone();
        let work = async {
            if job.kind == "destroy" {
                self.run_destroy(&mut job).await
            } else {
                self.run_apply(&mut job).await
            }
        };
        let outcome = tokio::select! {
            outcome = work => outcome,
            () = keeper.lost() => {
                // Another replica may hold it now: stop here and leave the
                // job `running` for whoever holds the lease next.
                tracing::warn!(job = %id, "provisioning job stopped: its lease was lost");
                self.local.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                return;
            }
        };
        match outcome {
            Ok(()) => {
                job.state = "done".into();
                let _ = self.db.save_job(&job);
            }
            Err(Stop::Failed(e)) => {
                job.state = "failed".into();
                job.result = error_json(&e);
                let _ = self.db.save_job(&job);
                if let Ok(Some(mut p)) = self.db.plan(&job.plan_id) {
                    p.state = "failed".into();
                    let _ = self.db.save_plan(&p);
                }
                let state = if job.kind == "destroy" {
                    "destroying"
                } else {
                    "failed"
                };
                let _ = self.db.set_state(&job.name, state, &e.to_string());
            }
        }
        if let Err(e) = keeper.release().await {
            tracing::warn!(job = %job.id, "releasing the job's lease: {e}");
        }
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job.id);
    }

    pub(super) fn progress(&self, job: &mut Job, step: &str, message: String) {
        tracing::info!(instance = %job.name, job = %job.id, step, "{message}");
        job.progress.push(Progress {
            step: step.into(),
            message,
            at_ms: unix_millis(),
        });
        let _ = self.db.save_job(job);
    }

    fn mark(&self, job: &mut Job, step: &str) -> Result<(), Stop> {
        job.done.push(step.into());
        self.db.save_job(job)?;
        Ok(())
    }

    async fn run_apply(&self, job: &mut Job) -> Result<(), Stop> {
        let plan = self
            .db
            .plan(&job.plan_id)?
            .ok_or_else(|| ProvisionError::NotFound(format!("no plan {}", job.plan_id)))?;
        let (i, mut members) = self.get_instance(&job.name)?;
        let (g, _, _) = self.granted(&i).await?;
        if job.done.is_empty() {
            // Checked again here: time may have passed (an approval).
            let stale = stale_objects(&g, &plan).await?;
            if !stale.is_empty() {
                return Err(ProvisionError::conflict(
                    "stale",
                    format!(
                        "plan {} is stale: {} object(s) changed since it was made",
                        plan.id,
                        stale.len()
                    ),
                    json!({ "objects": stale }),
                )
                .into());
            }
            self.db
                .set_state(&i.name, "applying", &format!("applying plan {}", plan.id))?;
        }
        let (desired, _, _) = self.desired(&i, &i.spec).await?;
        let bodies: BTreeMap<&ObjectRef, &Desired> =
            desired.iter().map(|d| (&d.object, d)).collect();
        let steps: BTreeSet<u32> = plan
            .objects
            .iter()
            .filter(|o| o.verdict != Verdict::Prune)
            .map(|o| o.step)
            .collect();
        for step in steps {
            self.ensure_parent(&g, &plan, job, false).await?;
            let key = format!("step:{step}");
            if job.done.contains(&key) {
                continue;
            }
            let mut applied = Vec::new();
            for o in plan
                .objects
                .iter()
                .filter(|o| o.step == step && o.verdict != Verdict::Prune)
            {
                if o.verdict == Verdict::Unchanged {
                    continue;
                }
                let d = bodies.get(&o.object).ok_or_else(|| {
                    ProvisionError::conflict(
                        "plan-outdated",
                        format!("{} is no longer desired", o.object.label()),
                        json!({}),
                    )
                })?;
                if d.sha != o.desired_sha256 {
                    return Err(ProvisionError::conflict(
                        "plan-outdated",
                        format!("the provisioner now produces another {}", o.object.label()),
                        json!({}),
                    )
                    .into());
                }
                if o.immutable.is_some() {
                    self.recreate(&g, &o.object, o.live_uid.as_deref()).await?;
                }
                let force = job.options.force && !o.conflicts.is_empty();
                let live = g.apply(&o.object, &d.body, false, force).await.map_err(
                    |e| match e {
                        KubeError::Conflict(c) => ProvisionError::conflict(
                            "field-manager-conflict",
                            format!("{}: fields owned by other field managers", o.object.label()),
                            json!({ "objects": [{ "object": o.object.label(), "conflicts": c }] }),
                        ),
                        other => ProvisionError::Failed(format!("{}: {other}", o.object.label())),
                    },
                )?;
                let uid = live
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                members.retain(|m| m.object != o.object);
                members.push(Member {
                    object: o.object.clone(),
                    uid: uid.into(),
                });
                applied.push(o.object.clone());
            }
            self.db.set_inventory(&i.name, &members)?;
            self.progress(
                job,
                &key,
                format!(
                    "{}: applied {} object(s)",
                    order::describe(step),
                    applied.len()
                ),
            );
            self.wait_ready(
                &g,
                plan.objects
                    .iter()
                    .filter(|o| o.step == step && o.verdict != Verdict::Prune)
                    .map(|o| &o.object),
            )
            .await?;
            self.progress(job, &key, format!("{}: ready", order::describe(step)));
            self.mark(job, &key)?;
        }
        self.ensure_parent(&g, &plan, job, false).await?;
        if !job.done.iter().any(|d| d == "prune") {
            let mut pruned = 0;
            for o in plan.objects.iter().filter(|o| o.verdict == Verdict::Prune) {
                match g.delete(&o.object, o.live_uid.as_deref()).await {
                    Ok(_) | Err(KubeError::NotFound(_)) => pruned += 1,
                    Err(KubeError::Precondition(m)) => {
                        self.progress(
                            job,
                            "prune",
                            format!(
                                "{}: recreated since the plan, left alone ({m})",
                                o.object.label()
                            ),
                        );
                    }
                    Err(e) => return Err(e.into()),
                }
                members.retain(|m| m.object != o.object);
                self.db.set_inventory(&i.name, &members)?;
            }
            self.progress(job, "prune", format!("pruned {pruned} object(s)"));
            self.mark(job, "prune")?;
        }
        self.ensure_parent(&g, &plan, job, true).await?;
        let mut done = plan.clone();
        done.state = "applied".into();
        self.db.save_plan(&done)?;
        self.db
            .set_state(&i.name, "applied", &format!("plan {} applied", plan.id))?;
        self.db
            .set_drift(&i.name, "in-sync", &format!("plan {} applied", plan.id))?;
        self.metrics.drifted(&i.name, false);
        Ok(())
    }

    /// Writes the parent: first (once its namespace exists) with the union
    /// of the recorded and planned group-kinds and namespaces, at the end
    /// with the planned ones only.
    async fn ensure_parent(
        &self,
        g: &Granted,
        plan: &Plan,
        job: &mut Job,
        last: bool,
    ) -> Result<(), Stop> {
        let key = if last {
            "parent-final"
        } else {
            "parent-superset"
        };
        if job.done.iter().any(|d| d == key) {
            return Ok(());
        }
        let ns = plan.parent.namespace.clone().unwrap_or_default();
        let ns_ref = ObjectRef {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            namespace: None,
            name: ns.clone(),
        };
        let ns_live = match g.get(&ns_ref).await {
            Ok(l) => l.is_some(),
            // Without a grant on Namespaces the parent's namespace is taken to exist.
            Err(KubeError::Denied(_)) => true,
            Err(e) => return Err(e.into()),
        };
        if !ns_live {
            return Ok(());
        }
        let live = g.get(&plan.parent).await?;
        if let Some(l) = &live {
            let tooling = l
                .pointer(&format!(
                    "/metadata/annotations/{}",
                    applyset::TOOLING.replace('/', "~1")
                ))
                .and_then(Value::as_str);
            let id = l
                .pointer(&format!(
                    "/metadata/labels/{}",
                    applyset::ID.replace('/', "~1")
                ))
                .and_then(Value::as_str);
            if tooling.is_some_and(|t| !t.starts_with("capstan/"))
                || id.is_some_and(|i| i != set_id(&plan.parent))
            {
                return Err(ProvisionError::conflict(
                    "applyset-parent",
                    format!(
                        "{} belongs to another tool ({tooling:?}) or set ({id:?})",
                        plan.parent.label()
                    ),
                    json!({}),
                )
                .into());
            }
        }
        let (mut gks, mut nss) = if last {
            Default::default()
        } else {
            live.as_ref().map(applyset::recorded).unwrap_or_default()
        };
        for o in &plan.objects {
            if last && o.verdict == Verdict::Prune {
                continue;
            }
            gks.insert(o.object.group_kind());
            nss.extend(o.object.namespace.clone());
        }
        let body = applyset::parent(&plan.parent.name, &ns, &gks, &nss);
        g.apply(&plan.parent, &body, false, true).await?;
        self.progress(
            job,
            key,
            format!(
                "ApplySet parent {} records {}",
                plan.parent.label(),
                gks.into_iter().collect::<Vec<_>>().join(",")
            ),
        );
        self.mark(job, key)
    }

    /// Deletes (UID precondition) and waits until gone, for an immutable change.
    async fn recreate(&self, g: &Granted, o: &ObjectRef, uid: Option<&str>) -> Result<(), Stop> {
        match g.delete(o, uid).await {
            Ok(_) | Err(KubeError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let until = tokio::time::Instant::now() + self.config.wait_timeout;
        while g.get(o).await?.is_some() {
            if tokio::time::Instant::now() >= until {
                return Err(ProvisionError::Failed(format!(
                    "{}: still present after delete (recreate)",
                    o.label()
                ))
                .into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Waits (bounded) until every object is Current by kstatus rules.
    async fn wait_ready<'a>(
        &self,
        g: &Granted,
        objects: impl Iterator<Item = &'a ObjectRef>,
    ) -> Result<(), Stop> {
        let objects: Vec<&ObjectRef> = objects.collect();
        let until = tokio::time::Instant::now() + self.config.wait_timeout;
        let mut classes: BTreeMap<String, bool> = BTreeMap::new();
        loop {
            let mut waiting = Vec::new();
            for o in &objects {
                let Some(live) = g.get(o).await? else {
                    waiting.push(format!("{}: not found", o.label()));
                    continue;
                };
                if let Some(class) = live
                    .pointer("/spec/storageClassName")
                    .and_then(Value::as_str)
                    .filter(|c| o.kind == "PersistentVolumeClaim" && !classes.contains_key(*c))
                {
                    classes.insert(class.into(), binds_on_first_consumer(g, class).await);
                }
                match kstatus::status(&live, |c| classes.get(c).copied().unwrap_or(false)) {
                    Status::Current => {}
                    Status::Failed(why) => {
                        return Err(ProvisionError::Failed(format!("{}: {why}", o.label())).into());
                    }
                    Status::InProgress(why) | Status::Terminating(why) => {
                        waiting.push(format!("{}: {why}", o.label()))
                    }
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                return Err(ProvisionError::Failed(format!(
                    "not ready after {} s: {}",
                    self.config.wait_timeout.as_secs(),
                    waiting.join("; ")
                ))
                .into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub(super) fn instance_of(
        &self,
        name: &str,
    ) -> Result<(Instance, Vec<Member>), ProvisionError> {
        self.get_instance(name)
    }
}

/// Whether a StorageClass binds on first consumer (false if it cannot be read).
async fn binds_on_first_consumer(g: &Granted, class: &str) -> bool {
    let sc = ObjectRef {
        api_version: "storage.k8s.io/v1".into(),
        kind: "StorageClass".into(),
        namespace: None,
        name: class.into(),
    };
    match g.get(&sc).await {
        Ok(Some(s)) => {
            s.get("volumeBindingMode").and_then(Value::as_str) == Some("WaitForFirstConsumer")
        }
        _ => false,
    }
}

fn error_json(e: &ProvisionError) -> Value {
    match e {
        ProvisionError::Conflict { message, details }
        | ProvisionError::OutsideGrant { message, details } => {
            let mut out = json!({ "error": details.get("reason").cloned().unwrap_or(json!("outside-grant")), "message": message });
            if let (Some(o), Some(d)) = (out.as_object_mut(), details.as_object()) {
                for (k, v) in d.iter().filter(|(k, _)| *k != "reason") {
                    o.insert(k.clone(), v.clone());
                }
            }
            out
        }
        other => json!({ "error": "failed", "message": other.to_string() }),
    }
}
