//! The driver: finds runs with events waiting or a wake-up due, claims each
//! through its lease, applies the events to the machine, journals the new
//! state (one transaction), and only then carries out the actions.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};

use capstan_registry::trust::Role;
use capstan_registry::trust::approvals::{ApproverScope, NewApproval};
use capstan_store::leases::Lease;
use capstan_store::unix_millis;

use super::{APPROVAL_KIND, Engine, EngineError};
use crate::machine::{Action, Decision, Event, Machine, RoleGrant, Run, RunStatus};
use crate::model::Pipeline;
use crate::store::{AttemptResult, Due, LockChange, Pin, RunRow};

/// The driver loop; ends when the engine is dropped.
pub(super) async fn run(engine: Weak<Engine>) {
    // The first turn also takes up the runs this replica drove before a
    // restart, without waiting for their next event.
    let mut first = true;
    loop {
        let Some(e) = engine.upgrade() else { return };
        // Not before every stored plugin is loaded: a resumed run would find
        // its plugins missing.
        if e.registry.is_ready() {
            match e.drive_due(first).await {
                Ok(()) => first = false,
                Err(err) => tracing::error!("pipelines driver: {err}"),
            }
        }
        let poll = e.config.poll;
        // Holds the engine while waiting at most `poll`; dropping the server
        // ends the loop at the next turn.
        let _ = tokio::time::timeout(poll, e.wake.notified()).await;
    }
}

/// Renews the leases of the runs this replica drives, at a third of their
/// TTL, all in one transaction; a lease lost (this replica stalled past its
/// TTL) stops its attempts.
pub(super) async fn renew(engine: Weak<Engine>) {
    loop {
        let Some(e) = engine.upgrade() else { return };
        let ttl = e.config.lease_ttl;
        let held: Vec<Lease> = e
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        if !held.is_empty() {
            match e.db.store().renew_leases(&held, ttl) {
                Ok(answers) => e.renewed(&held, answers),
                Err(err) => tracing::warn!("renewing {} run leases: {err}", held.len()),
            }
        }
        drop(e);
        tokio::time::sleep(ttl / 3).await;
    }
}

/// Runs driven at once by one replica.
const DRIVE_CONCURRENCY: usize = 64;

impl Engine {
    /// Keeps the renewed leases; stops driving the runs whose lease is lost.
    fn renewed(&self, held: &[Lease], answers: Vec<Option<Lease>>) {
        for (lease, answer) in held.iter().zip(answers) {
            let run = lease.name.trim_start_matches("run/");
            let Some(l) = answer else {
                tracing::warn!(%run, "lost the lease of a run; another replica drives it now");
                self.forget(run);
                continue;
            };
            let mut map = self.held.lock().unwrap_or_else(|p| p.into_inner());
            // Not if the run ended (or changed hands) meanwhile.
            if let Some(h) = map.get_mut(run)
                && h.token == l.token
            {
                *h = l;
            }
        }
    }

    /// One turn: every due run, driven concurrently (each run by one task;
    /// a turn ends when all of them did). Queued runs are admitted first,
    /// oldest first, within the concurrency limits.
    async fn drive_due(self: &Arc<Self>, resume_own: bool) -> Result<(), EngineError> {
        let now = unix_millis();
        if now - self.depths_at.load(std::sync::atomic::Ordering::Relaxed) >= 2000 {
            self.depths_at
                .store(now, std::sync::atomic::Ordering::Relaxed);
            let (queued, waiting) = self.db.depths()?;
            self.metrics.set_depths(queued, waiting);
        }
        let queried = std::time::Instant::now();
        let mine = resume_own.then_some(self.config.replica.as_str());
        let due = self.db.due(now, mine)?;
        let admitted = self.admit(&due)?;
        let turn_started = std::time::Instant::now();
        let (n_due, n_admitted) = (due.len(), admitted.len());
        let slots = Arc::new(tokio::sync::Semaphore::new(DRIVE_CONCURRENCY));
        let mut turns = tokio::task::JoinSet::new();
        for d in due {
            let start = admitted.contains(&d.id);
            // A queued run that may not start yet has nothing to do.
            if d.queued && !start && !d.other_events {
                continue;
            }
            // A run driven right now (its step just finished) is driven
            // again by that task instead.
            if !self.begin_driving(&d.id) {
                continue;
            }
            let Ok(slot) = slots.clone().acquire_owned().await else {
                self.driving_lock().remove(&d.id);
                break;
            };
            let engine = self.clone();
            turns.spawn(async move {
                let _slot = slot;
                engine.drive_exclusively(&d.id, start).await;
            });
        }
        let spawned = turns.len();
        while let Some(done) = turns.join_next().await {
            if let Err(e) = done {
                tracing::error!("a run's turn panicked: {e}");
            }
        }
        tracing::debug!(
            due = n_due,
            admitted = n_admitted,
            driven = spawned,
            query_ms = (turn_started - queried).as_millis() as u64,
            drive_ms = turn_started.elapsed().as_millis() as u64,
            "pipelines driver turn"
        );
        Ok(())
    }

    /// Which queued runs may start now: oldest first, while the pipeline's
    /// and the server's limits of started runs allow.
    fn admit(&self, due: &[Due]) -> Result<HashSet<String>, EngineError> {
        let mut admitted = HashSet::new();
        if !due.iter().any(|d| d.queued) {
            return Ok(admitted);
        }
        let mut all = self.db.started_runs_all()?;
        let mut of_pipeline: HashMap<String, i64> = HashMap::new();
        for d in due.iter().filter(|d| d.queued) {
            if all >= self.config.max_running {
                break;
            }
            let limit = match self.pipeline_at(&d.pipeline, d.revision) {
                Ok(p) => p.concurrency,
                Err(err) => {
                    tracing::error!(run = %d.id, "loading its pipeline: {err}");
                    continue;
                }
            };
            let n = match of_pipeline.entry(d.pipeline.clone()) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => v.insert(self.db.started_runs(&d.pipeline)?),
            };
            if limit.is_some_and(|c| *n >= i64::from(c)) {
                continue;
            }
            *n += 1;
            all += 1;
            admitted.insert(d.id.clone());
        }
        Ok(admitted)
    }

    /// Claims run `id`; `Some(fresh)` when this replica holds its lease,
    /// `fresh` if it did not hold it before (it then resumes the run). A
    /// lease held with time to spare is used as it is: the journal checks
    /// it again in the transaction that commits the turn.
    fn claim(&self, id: &str) -> Result<Option<(Lease, bool)>, EngineError> {
        let name = format!("run/{id}");
        let had = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        let spare = (self.config.lease_ttl / 3).as_millis() as i64;
        if let Some(h) = &had
            && h.expires_at_ms - unix_millis() > spare
        {
            return Ok(Some((h.clone(), false)));
        }
        let Some(lease) =
            self.db
                .store()
                .acquire_lease(&name, &self.config.replica, self.config.lease_ttl)?
        else {
            return Ok(None);
        };
        let fresh = had.is_none_or(|h| h.token != lease.token);
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), lease.clone());
        Ok(Some((lease, fresh)))
    }

    /// Stops driving run `id` here: its attempts are aborted.
    fn forget(&self, id: &str) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(run, _, _), h| {
                if run == id {
                    h.abort();
                }
                run != id
            });
    }

    /// One turn of run `id`: its events applied to the machine, the result
    /// journaled, then its actions carried out. `may_start`: the run was
    /// admitted this turn (see [`Engine::admit`]).
    pub(super) async fn drive(
        self: &Arc<Self>,
        id: &str,
        may_start: bool,
    ) -> Result<(), EngineError> {
        let Some((lease, fresh)) = self.claim(id)? else {
            return Ok(());
        };
        let cached = if fresh { None } else { self.state(id) };
        let row = match cached {
            Some(row) => row,
            None => match self.db.run(id)? {
                Some(row) => row,
                None => return Ok(()),
            },
        };
        if row.run.status.is_terminal() {
            // An attempt that answered after its run ended (cancelled, or
            // failed by another step): nothing to drive, and the lease
            // just taken goes back.
            self.forget(id);
            self.db.store().release_lease(&lease)?;
            return Ok(());
        }
        let mut events: Vec<(Option<i64>, Event)> = Vec::new();
        if fresh && row.run.status != RunStatus::Queued {
            events.push((None, Event::Resumed));
        }
        events.extend(self.db.inbox(id)?.into_iter().map(|(i, e)| (Some(i), e)));
        if !may_start {
            events.retain(|(_, e)| *e != Event::Start);
        }
        self.turn(row, events, &lease, None).await?;
        Ok(())
    }

    /// A turn driven by a finished attempt's `result` itself, by the task
    /// that holds the run exclusively (see [`Engine::begin_driving`]): one
    /// journal write for the result and the new state, no inbox round trip.
    /// `false` (nothing done) when that is not possible here: the run's
    /// lease or state is not at hand, or its inbox holds earlier events;
    /// the result then goes through the inbox.
    pub(super) async fn drive_result(
        self: &Arc<Self>,
        result: &AttemptResult,
    ) -> Result<bool, EngineError> {
        let id = &result.run;
        let spare = (self.config.lease_ttl / 3).as_millis() as i64;
        let lease = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|h| h.expires_at_ms - unix_millis() > spare)
            .cloned();
        let (Some(lease), Some(row)) = (lease, self.state(id)) else {
            return Ok(false);
        };
        if row.run.status.is_terminal() {
            return Ok(false);
        }
        let events = vec![(None, result.event.clone())];
        self.turn(row, events, &lease, Some(result)).await
    }

    /// The journaled state of run `id`, if this replica keeps it.
    fn state(&self, id: &str) -> Option<RunRow> {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Applies `events` (with their inbox ids) and a due timer to the run,
    /// journals the result under `lease` (with `attempt`'s result and
    /// lines, when the turn is that attempt's), then carries out the
    /// actions. `false` when nothing was journaled (nothing to apply, the
    /// lease lost, or the inbox not empty for an attempt's turn).
    async fn turn(
        self: &Arc<Self>,
        row: RunRow,
        mut events: Vec<(Option<i64>, Event)>,
        lease: &Lease,
        attempt: Option<&AttemptResult>,
    ) -> Result<bool, EngineError> {
        let id = row.run.id.clone();
        let pipeline = self.pipeline_at(&row.run.pipeline, row.revision)?;
        let now = unix_millis() as u64;
        if row.run.next_wakeup().is_some_and(|w| w <= now) {
            events.push((None, Event::Timer));
        }
        if events.is_empty() {
            // Nothing happened (the run was driven already): nothing to journal.
            return Ok(false);
        }
        let machine = Machine {
            pipeline: &pipeline,
            limits: self.limits,
        };
        let (mut run, mut actions, mut consumed) = (row.run.clone(), Vec::new(), Vec::new());
        let mut notes = Vec::new();
        for (inbox_id, event) in events {
            match machine.apply(&run, event.clone(), now) {
                Ok(t) => {
                    run = t.run;
                    actions.extend(t.actions);
                }
                Err(e) => notes.push((None, format!("ignored {}: {e}", event_name(&event)))),
            }
            consumed.extend(inbox_id);
        }
        notes.extend(actions.iter().filter_map(note_of));
        let timer = actions.iter().filter_map(|a| match a {
            Action::ScheduleTimer { at_ms } => Some(*at_ms),
            _ => None,
        });
        let wakeup = timer.chain(run.next_wakeup()).min();
        let committed = match attempt {
            None => self.db.commit(&run, wakeup, consumed, notes, lease).await,
            Some(r) => {
                let written = self
                    .db
                    .commit_attempt(r.clone(), &run, wakeup, notes, lease)
                    .await;
                match written {
                    // The inbox holds earlier events: nothing was written.
                    Ok(None) => return Ok(false),
                    Ok(Some(committed)) => Ok(committed),
                    Err(e) => Err(e),
                }
            }
        };
        let committed = committed.inspect_err(|_| {
            // Whether it was stored is unknown: read it back next turn.
            self.states
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        })?;
        if !committed {
            // Another replica holds the run now.
            self.forget(&id);
            return Ok(false);
        }
        if run.status.is_terminal() {
            self.metrics.run_finished(&run.pipeline, run.status.name());
            // Its place under the concurrency limits is free: a queued run
            // may start.
            self.wake.notify_one();
        } else {
            let journaled = RunRow {
                run: run.clone(),
                pins: row.pins.clone(),
                updated_ms: now as i64,
                ..row
            };
            self.states
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), journaled);
        }
        for action in actions {
            self.carry(&run, &pipeline, &row.pins, action).await;
        }
        if run.status.is_terminal() {
            // Its lease was given up with the final state.
            self.forget(&id);
        }
        Ok(true)
    }

    async fn carry(
        self: &Arc<Self>,
        run: &Run,
        p: &Pipeline,
        pins: &BTreeMap<String, Pin>,
        action: Action,
    ) {
        let result = match action {
            Action::StartStep(inv) => {
                self.spawn_attempt(run, pins, inv, false);
                Ok(())
            }
            Action::StartRollback(inv) => {
                self.spawn_attempt(run, pins, inv, true);
                Ok(())
            }
            Action::CancelStep { step, attempt } => {
                if let Some(h) = self
                    .inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(run.id.clone(), step, attempt))
                {
                    h.abort();
                }
                Ok(())
            }
            Action::RequestApproval { step, role, project, required, message, .. } => {
                self.request_approval(run, p, &step, &role, &project, required, message)
            }
            Action::AcquireLock { environment, policy } => self
                .db
                .request_lock(&lock_key(&run.pipeline, &environment), &run.id, policy)
                .and_then(|c| {
                    self.observe_waits(&run.pipeline, &c);
                    if !c.granted.contains(&run.id) {
                        let why = format!("waiting for the lock of environment `{environment}`: another run deploys there");
                        self.db.log(&run.id, None, "engine", &why)?;
                    }
                    self.locks_changed(c);
                    Ok(())
                }),
            Action::ReleaseLock { environment } => self
                .db
                .release_lock(&lock_key(&run.pipeline, &environment), &run.id)
                .map(|c| {
                    self.observe_waits(&run.pipeline, &c);
                    self.locks_changed(c)
                }),
            Action::ScheduleTimer { .. } | Action::Note { .. } | Action::FinishRun { .. } => Ok(()),
        };
        if let Err(e) = result {
            // The state is journaled; a resumed run issues the action again.
            tracing::error!(run = %run.id, "carrying out an action: {e}");
            let _ = self.db.log(
                &run.id,
                None,
                "engine",
                &format!("action failed, will retry on resume: {e}"),
            );
        }
    }

    fn observe_waits(&self, pipeline: &str, change: &LockChange) {
        for ms in &change.waited_ms {
            self.metrics.lock_waited(pipeline, *ms as f64 / 1000.0);
        }
    }

    fn locks_changed(&self, change: LockChange) {
        if !change.granted.is_empty() || !change.superseded.is_empty() {
            self.wake.notify_one();
        }
    }

    /// Files the gate's approval once (a resumed run finds it and replays
    /// its decisions).
    #[allow(clippy::too_many_arguments)]
    fn request_approval(
        &self,
        run: &Run,
        p: &Pipeline,
        step: &str,
        role: &str,
        project: &str,
        required: u32,
        message: Option<String>,
    ) -> Result<(), capstan_store::StoreError> {
        let gate = self.registry.gate().approvals();
        let subject = format!("{}/{step}", run.id);
        let existing = gate.of_subject(APPROVAL_KIND, &subject).map_err(gate_err)?;
        if let Some(a) = existing.first() {
            for v in &a.votes {
                let decision = Decision {
                    step: step.to_string(),
                    user: v.voter.clone(),
                    roles: vec![RoleGrant {
                        project: project.to_string(),
                        role: role.to_string(),
                    }],
                    approve: v.decision == "approve",
                    comment: v.comment.clone(),
                };
                self.db.push(&run.id, &Event::Approval(decision))?;
            }
            self.wake.notify_one();
            return Ok(());
        }
        let allow_self = p
            .step(step)
            .and_then(|s| s.approval.as_ref())
            .is_some_and(|a| a.allow_self);
        let requested_by = match (&run.started_by, allow_self) {
            (Some(who), false) => who.clone(),
            _ => format!("pipeline:{}", run.pipeline),
        };
        let new = NewApproval {
            kind: APPROVAL_KIND.to_string(),
            subject,
            project: project.to_string(),
            requested_by,
            approver_role: role.parse().unwrap_or(Role::Admin),
            approver_scope: ApproverScope::Project,
            required,
            reasons: vec![message.unwrap_or_else(|| {
                format!("run {} of `{}` waits at `{step}`", run.id, run.pipeline)
            })],
            detail: serde_json::json!({ "run": run.id, "pipeline": run.pipeline, "step": step }),
        };
        let a = gate.request(new).map_err(gate_err)?;
        self.db.log(
            &run.id,
            Some(step),
            "engine",
            &format!("approval {} requested from `{role}` of `{project}`", a.id),
        )?;
        Ok(())
    }
}

fn gate_err(e: capstan_registry::trust::approvals::GateError) -> capstan_store::StoreError {
    capstan_store::StoreError::Conflict(format!("approval gate: {e}"))
}

/// Environments are locked per pipeline: `<pipeline>/<environment>`.
fn lock_key(pipeline: &str, environment: &str) -> String {
    format!("{pipeline}/{environment}")
}

fn event_name(e: &Event) -> String {
    serde_json::to_value(e)
        .ok()
        .and_then(|v| v.get("event").and_then(|s| s.as_str()).map(str::to_string))
        .unwrap_or_else(|| "event".into())
}

/// The log line an action leaves with the state that issues it. An attempt
/// is logged as started there: it is spawned as soon as that state is
/// durable.
fn note_of(a: &Action) -> Option<(Option<String>, String)> {
    match a {
        Action::Note { step, message } => Some((step.clone(), message.clone())),
        Action::FinishRun { status, reason } => {
            Some((None, format!("finished: {} ({reason})", status.name())))
        }
        Action::StartStep(inv) => Some((
            Some(inv.step.clone()),
            format!("attempt {} started", inv.attempt),
        )),
        Action::StartRollback(inv) => Some((
            Some(inv.step.clone()),
            format!("rollback {} started", inv.attempt),
        )),
        _ => None,
    }
}
