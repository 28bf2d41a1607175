//! A run's turns in the journal: its new state, fenced by its lease, with
//! the inbox events it consumed; a finished attempt's result, queued in the
//! inbox or journaled with the turn it drives.

use capstan_store::StoreError;
use capstan_store::args;
use capstan_store::leases::Lease;
use capstan_store::sql::{Conn, DbError};
use capstan_store::unix_millis;

use super::{AttemptResult, PipelineStore, log, push, to_json};
use crate::machine::Run;

impl PipelineStore {
    /// Journals a transition under the run's lease: the new state, when to
    /// wake it next, the inbox events it consumed and its log lines. The
    /// lease is checked in the same transaction (fencing): `false`, and
    /// nothing written, when another replica holds the run now. A run that
    /// ends gives its lease up in that transaction too.
    pub async fn commit(
        &self,
        run: &Run,
        wakeup_ms: Option<u64>,
        consumed: Vec<i64>,
        notes: Vec<(Option<String>, String)>,
        lease: &Lease,
    ) -> Result<bool, StoreError> {
        let turn = TurnWrite::new(run, wakeup_ms, consumed, notes, lease)?;
        self.journal
            .write(move |c| {
                if !lease_current(c, &turn.lease)? {
                    return Ok(false);
                }
                turn.write(c)?;
                Ok(true)
            })
            .await
    }

    /// A turn driven by a finished attempt's own result, journaled in one
    /// transaction with the attempt's log lines, its event never going
    /// through the inbox. `None` (nothing written) when the run's inbox
    /// holds events: they came first, so the result must queue behind
    /// them. Else as [`PipelineStore::commit`].
    pub async fn commit_attempt(
        &self,
        result: AttemptResult,
        run: &Run,
        wakeup_ms: Option<u64>,
        notes: Vec<(Option<String>, String)>,
        lease: &Lease,
    ) -> Result<Option<bool>, StoreError> {
        let turn = TurnWrite::new(run, wakeup_ms, Vec::new(), notes, lease)?;
        self.journal
            .write(move |c| {
                if !lease_current(c, &turn.lease)? {
                    return Ok(Some(false));
                }
                let queued = c.row(
                    "SELECT 1 FROM run_inbox WHERE run_id = ?1 LIMIT 1",
                    args![&turn.id],
                )?;
                if queued.is_some() {
                    return Ok(None);
                }
                attempt_lines(c, &result)?;
                turn.write(c)?;
                Ok(Some(true))
            })
            .await
    }

    /// Journals a finished attempt: the plugin's lines, the summary line,
    /// and its event in the run's inbox, in one transaction.
    pub async fn attempt_finished(&self, result: AttemptResult) -> Result<(), StoreError> {
        self.journal
            .write(move |c| {
                attempt_lines(c, &result)?;
                push(c, &result.run, &result.event)
            })
            .await
    }
}

/// What a turn writes (see [`PipelineStore::commit`]).
struct TurnWrite {
    id: String,
    status: &'static str,
    terminal: bool,
    record: String,
    wakeup: Option<i64>,
    consumed: Vec<i64>,
    notes: Vec<(Option<String>, String)>,
    lease: Lease,
}

impl TurnWrite {
    fn new(
        run: &Run,
        wakeup_ms: Option<u64>,
        consumed: Vec<i64>,
        notes: Vec<(Option<String>, String)>,
        lease: &Lease,
    ) -> Result<TurnWrite, StoreError> {
        Ok(TurnWrite {
            id: run.id.clone(),
            status: run.status.name(),
            terminal: run.status.is_terminal(),
            record: to_json(run)?,
            wakeup: wakeup_ms.map(|w| w.min(i64::MAX as u64) as i64),
            consumed,
            notes,
            lease: lease.clone(),
        })
    }

    fn write(&self, c: &mut Conn) -> Result<(), DbError> {
        let now = unix_millis();
        let finished = self.terminal.then_some(now);
        c.exec(
            "UPDATE runs SET status = ?2, record = ?3, wakeup_ms = ?4, updated_ms = ?5,
                 finished_ms = COALESCE(finished_ms, ?6)
             WHERE id = ?1",
            args![
                &self.id,
                self.status,
                &self.record,
                self.wakeup,
                now,
                finished
            ],
        )?;
        for n in &self.consumed {
            c.exec(
                "DELETE FROM run_inbox WHERE run_id = ?1 AND id = ?2",
                args![&self.id, *n],
            )?;
        }
        for (step, message) in &self.notes {
            log(c, &self.id, step.as_deref(), "engine", message)?;
        }
        if self.terminal {
            let l = &self.lease;
            c.exec(
                "UPDATE leases SET expires_at_ms = 0 WHERE name = ?1 AND holder = ?2 AND token = ?3",
                args![&l.name, &l.holder, l.token],
            )?;
        }
        Ok(())
    }
}

/// Whether `lease` is still held, unexpired, by its holder.
fn lease_current(c: &mut Conn, lease: &Lease) -> Result<bool, DbError> {
    let current = c.row(
        "SELECT 1 FROM leases WHERE name = ?1 AND holder = ?2 AND token = ?3 AND expires_at_ms > ?4",
        args![&lease.name, &lease.holder, lease.token, unix_millis()],
    )?;
    Ok(current.is_some())
}

/// A finished attempt's log lines: the plugin's own, then the summary.
fn attempt_lines(c: &mut Conn, r: &AttemptResult) -> Result<(), DbError> {
    for (level, message, at_ms) in &r.plugin_lines {
        c.exec(
            "INSERT INTO run_log (run_id, step, source, message, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            args![&r.run, &r.step, format!("plugin:{level}"), message, *at_ms],
        )?;
    }
    log(c, &r.run, Some(&r.step), "plugin", &r.summary)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::machine::Event;
    use crate::model::Pipeline;

    fn run(id: &str) -> Run {
        let p = Pipeline::from_yaml("name: chain\nsteps: [{id: a, plugin: p}]\n").unwrap();
        let trigger = serde_json::json!({ "kind": "manual" });
        Run::new(&p, id, trigger, Default::default(), Some("bob"))
    }

    fn result(id: &str) -> AttemptResult {
        AttemptResult {
            run: id.into(),
            step: "a".into(),
            plugin_lines: vec![("info".into(), "deployed".into(), 1)],
            summary: "succeeded".into(),
            event: Event::Timer,
        }
    }

    fn lines(db: &PipelineStore, id: &str) -> Vec<String> {
        let logs = db.logs(id, 0, 100).unwrap();
        logs.into_iter().map(|l| l.message).collect()
    }

    /// An attempt's result is journaled with the turn it drives only when
    /// nothing queued in the run's inbox came before it, and only under the
    /// run's lease; otherwise nothing at all is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_attempt_turn_writes_all_or_nothing() {
        for t in capstan_store::testing::backends() {
            let db = PipelineStore::new(t.store.clone());
            let r = run("r1");
            let holder = Some(("a".to_string(), Duration::from_secs(30)));
            let created = db
                .create_run_leased(&r, 1, &BTreeMap::new(), None, holder, None)
                .await
                .unwrap()
                .unwrap();
            let lease = created.lease.expect("the run's lease");
            // The run's `Start` is still in its inbox: nothing is written.
            let before = lines(&db, "r1");
            let turn = db.commit_attempt(result("r1"), &r, None, vec![], &lease);
            assert_eq!(turn.await.unwrap(), None, "{:?}", t.backend());
            assert_eq!(lines(&db, "r1"), before);
            let start: Vec<i64> = db.inbox("r1").unwrap().iter().map(|e| e.0).collect();
            assert!(db.commit(&r, None, start, vec![], &lease).await.unwrap());

            // Another holder's token: fenced off, nothing written.
            let stale = Lease {
                token: lease.token + 1,
                ..lease.clone()
            };
            let turn = db.commit_attempt(result("r1"), &r, None, vec![], &stale);
            assert_eq!(turn.await.unwrap(), Some(false));
            assert_eq!(lines(&db, "r1"), before);

            // Inbox empty, lease held: lines, note and state in one go.
            let notes = vec![(Some("a".to_string()), "a: done".to_string())];
            let turn = db.commit_attempt(result("r1"), &r, Some(42), notes, &lease);
            assert_eq!(turn.await.unwrap(), Some(true));
            let after = lines(&db, "r1");
            assert_eq!(after[before.len()..], ["deployed", "succeeded", "a: done"]);
            assert!(db.inbox("r1").unwrap().is_empty());
        }
    }
}
