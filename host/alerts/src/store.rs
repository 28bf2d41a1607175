//! The alerts engine's tables (migration `V13__alerts`). A delivery is one
//! transaction: the raw group and one row per alert episode and status,
//! `(group key, fingerprint, status, startsAt)`, whose primary key is the
//! dedupe: a resend (or the HA peer's copy) inserts nothing new, so its
//! group is stored as `duplicate` and never handled. Routes from the API,
//! actions with their outcome, silences per fingerprint and remediation
//! claims per episode live here too. Records are listed in [`history`].

pub mod history;

use std::sync::Arc;

use capstan_store::sql::{Conn, DbError, Row, Value};
use capstan_store::{Store, StoreError, args, unix_millis};
use serde::Serialize;

use crate::model::{Alert, Webhook};
use crate::routes::Route;

/// Alert rows inserted per statement.
const CHUNK: usize = 50;

/// What storing a delivery did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Ingested {
    /// The group's id (`GET /v1/alerts/groups/{id}`).
    pub id: String,
    /// Alerts in the delivery.
    pub alerts: usize,
    /// Alerts not seen before (by group key, fingerprint, status and start).
    pub new_alerts: usize,
    /// `pending` (to be handled) or `duplicate` (nothing new: not handled).
    pub state: String,
}

/// A stored group.
#[derive(Debug, Clone)]
pub struct GroupRow {
    /// Id.
    pub id: String,
    /// Receiver path segment.
    pub receiver: String,
    /// The webhook as received.
    pub hook: Webhook,
    /// `pending`, `duplicate`, `processed`, `muted`, `unrouted`, `failed`.
    pub state: String,
    /// Unix ms.
    pub received_ms: i64,
}

/// The store of the alerts engine.
#[derive(Clone)]
pub struct AlertStore {
    store: Arc<Store>,
}

/// How a remediation claim went.
#[derive(Debug, PartialEq, Eq)]
pub enum Remediation {
    /// This caller holds it: start the run, then [`AlertStore::remediation_started`].
    Claimed,
    /// A run was started for this episode before.
    Started(String),
    /// Another worker holds the claim right now.
    Busy,
}

impl AlertStore {
    /// Over `store`.
    pub fn new(store: Arc<Store>) -> AlertStore {
        AlertStore { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stores a delivery in one transaction: the raw group, and each alert
    /// episode and status not seen before. `raw` is the body as received.
    pub fn ingest(
        &self,
        id: &str,
        receiver: &str,
        hook: &Webhook,
        raw: &str,
        shard: u32,
    ) -> Result<Ingested, StoreError> {
        let now = unix_millis();
        self.store.with(|c| {
            c.tx(|c| {
                c.exec(
                    "INSERT INTO alert_groups (id, receiver, group_key, status, shard, payload, alerts, new_alerts, state, received_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 'pending', ?8)",
                    args![id, receiver, hook.group_key, hook.status, shard, raw, hook.alerts.len(), now],
                )?;
                let mut new = 0;
                for chunk in hook.alerts.chunks(CHUNK) {
                    new += insert_events(c, id, &hook.group_key, chunk, now)?;
                }
                let state = if new == 0 { "duplicate" } else { "pending" };
                c.exec(
                    "UPDATE alert_groups SET new_alerts = ?2, state = ?3 WHERE id = ?1",
                    args![id, new, state],
                )?;
                Ok(Ingested {
                    id: id.to_string(),
                    alerts: hook.alerts.len(),
                    new_alerts: new as usize,
                    state: state.to_string(),
                })
            })
        })
    }

    /// Groups waiting to be handled in `shard`, oldest first.
    pub fn pending(&self, shard: u32, limit: i64) -> Result<Vec<String>, StoreError> {
        self.store.with(|c| {
            c.rows(
                "SELECT id FROM alert_groups WHERE state = 'pending' AND shard = ?1 ORDER BY received_ms, id LIMIT ?2",
                args![shard, limit],
            )?
            .iter()
            .map(|r| Ok(r.get(0)?))
            .collect()
        })
    }

    /// How many groups wait to be handled.
    pub fn backlog(&self) -> Result<i64, StoreError> {
        Ok(self.store.with(|c| {
            c.value(
                "SELECT COUNT(*) FROM alert_groups WHERE state = 'pending'",
                args![],
            )
        })?)
    }

    /// One stored group.
    pub fn group(&self, id: &str) -> Result<Option<GroupRow>, StoreError> {
        self.store.with(|c| {
            let Some(r) = c.row(
                "SELECT id, receiver, payload, state, received_ms FROM alert_groups WHERE id = ?1",
                args![id],
            )?
            else {
                return Ok(None);
            };
            let payload: String = r.get(2)?;
            let hook = serde_json::from_str(&payload)
                .map_err(|e| StoreError::Conflict(format!("stored group {id}: {e}")))?;
            Ok(Some(GroupRow {
                id: r.get(0)?,
                receiver: r.get(1)?,
                hook,
                state: r.get(3)?,
                received_ms: r.get(4)?,
            }))
        })
    }

    /// One stored group, with its webhook already at hand (the payload is
    /// not read).
    pub fn group_with(&self, id: &str, hook: Webhook) -> Result<Option<GroupRow>, StoreError> {
        let row = self.store.with(|c| {
            c.row(
                "SELECT receiver, state, received_ms FROM alert_groups WHERE id = ?1",
                args![id],
            )
        })?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(GroupRow {
            id: id.to_string(),
            receiver: r.get(0)?,
            hook,
            state: r.get(1)?,
            received_ms: r.get(2)?,
        }))
    }

    /// The alerts this delivery brought first: `(fingerprint, status, startsAt)`.
    pub fn new_alerts(&self, group_id: &str) -> Result<Vec<(String, String, String)>, StoreError> {
        self.store.with(|c| {
            c.rows(
                "SELECT fingerprint, status, starts_at FROM alert_events WHERE group_id = ?1",
                args![group_id],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .collect()
        })
    }

    /// Marks a group handled.
    pub fn finish(
        &self,
        id: &str,
        state: &str,
        projects: &[String],
        note: &str,
    ) -> Result<(), StoreError> {
        let projects = if projects.is_empty() {
            String::new()
        } else {
            format!(",{},", projects.join(","))
        };
        self.store.with(|c| {
            c.exec(
                "UPDATE alert_groups SET state = ?2, projects = ?3, note = ?4, processed_ms = ?5 WHERE id = ?1",
                args![id, state, projects, note, unix_millis()],
            )
        })?;
        Ok(())
    }

    /// Routes stored through the API.
    pub fn routes(&self) -> Result<Vec<Route>, StoreError> {
        self.store.with(|c| {
            c.rows("SELECT name, spec FROM alert_routes ORDER BY name", args![])?
                .iter()
                .map(|r| {
                    let (name, spec): (String, String) = (r.get(0)?, r.get(1)?);
                    let mut route: Route = serde_json::from_str(&spec)
                        .map_err(|e| StoreError::Conflict(format!("stored route {name}: {e}")))?;
                    route.name = name;
                    Ok(route)
                })
                .collect()
        })
    }

    /// Stores a route; returns whether it is new.
    pub fn put_route(&self, route: &Route, by: &str) -> Result<bool, StoreError> {
        let spec = serde_json::to_string(route).map_err(|e| StoreError::Conflict(e.to_string()))?;
        self.store.with(|c| {
            c.tx(|c| {
                let existed = c
                    .row("SELECT project FROM alert_routes WHERE name = ?1", args![route.name])?
                    .map(|r| r.get::<String>(0))
                    .transpose()?;
                if let Some(p) = existed.as_ref().filter(|p| **p != route.project) {
                    return Err(StoreError::Conflict(format!(
                        "route `{}` belongs to project `{p}`; it cannot move to `{}`",
                        route.name, route.project
                    )));
                }
                c.exec(
                    "INSERT INTO alert_routes (name, project, spec, updated_ms, updated_by) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (name) DO UPDATE SET spec = ?3, updated_ms = ?4, updated_by = ?5",
                    args![route.name, route.project, spec, unix_millis(), by],
                )?;
                Ok(existed.is_none())
            })
        })
    }

    /// Deletes a stored route.
    pub fn delete_route(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .with(|c| c.exec("DELETE FROM alert_routes WHERE name = ?1", args![name]))?
            == 1)
    }

    /// Records that an action is about to run; `Some(outcome)` if it was
    /// recorded before with a final outcome (then it is not run again).
    #[allow(clippy::too_many_arguments)]
    pub fn begin_action(
        &self,
        id: &str,
        group: &str,
        route: &str,
        plugin: &str,
        kind: &str,
        target: &str,
    ) -> Result<Option<String>, StoreError> {
        let now = unix_millis();
        self.store.with(|c| {
            c.tx(|c| {
                let prior: Option<String> = c
                    .row("SELECT outcome FROM alert_actions WHERE id = ?1", args![id])?
                    .map(|r| r.get(0))
                    .transpose()?;
                match prior.as_deref() {
                    None => {
                        c.exec(
                            "INSERT INTO alert_actions (id, group_id, route, plugin, kind, target, outcome, detail, attempts, created_ms, updated_ms)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', '{}', 1, ?7, ?7)",
                            args![id, group, route, plugin, kind, target, now],
                        )?;
                        Ok(None)
                    }
                    Some("running" | "failed") => {
                        c.exec(
                            "UPDATE alert_actions SET outcome = 'running', attempts = attempts + 1, updated_ms = ?2 WHERE id = ?1",
                            args![id, now],
                        )?;
                        Ok(None)
                    }
                    Some(done) => Ok(Some(done.to_string())),
                }
            })
        })
    }

    /// Records an action's outcome (`succeeded`, `failed`, `skipped`, `muted`, `denied`).
    pub fn finish_action(
        &self,
        id: &str,
        outcome: &str,
        detail: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.store.with(|c| {
            c.exec(
                "UPDATE alert_actions SET outcome = ?2, detail = ?3, updated_ms = ?4 WHERE id = ?1",
                args![id, outcome, detail.to_string(), unix_millis()],
            )
        })?;
        Ok(())
    }

    /// The silence already made for `fingerprint` with these matchers, if still in force.
    pub fn silence_of(
        &self,
        fingerprint: &str,
        matchers: &str,
    ) -> Result<Option<String>, StoreError> {
        self.store.with(|c| {
            c.row(
                "SELECT silence_id FROM alert_silences WHERE fingerprint = ?1 AND matchers = ?2 AND expired_ms IS NULL",
                args![fingerprint, matchers],
            )?
            .map(|r| Ok(r.get(0)?))
            .transpose()
        })
    }

    /// Records a silence made for `fingerprints`.
    pub fn record_silence(
        &self,
        fingerprints: &[String],
        matchers: &str,
        id: &str,
        alertmanager: &str,
    ) -> Result<(), StoreError> {
        let now = unix_millis();
        self.store.with(|c| {
            c.tx(|c| {
                for fp in fingerprints {
                    c.exec(
                        "INSERT INTO alert_silences (fingerprint, matchers, silence_id, alertmanager, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (fingerprint, matchers) DO UPDATE SET silence_id = ?3, alertmanager = ?4, created_ms = ?5, expired_ms = NULL",
                        args![fp, matchers, id, alertmanager, now],
                    )?;
                }
                Ok(())
            })
        })
    }

    /// Silences in force for `fingerprint`: `(silence id, alertmanager)`.
    pub fn silences_for(&self, fingerprint: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.store.with(|c| {
            c.rows(
                "SELECT DISTINCT silence_id, alertmanager FROM alert_silences WHERE fingerprint = ?1 AND expired_ms IS NULL",
                args![fingerprint],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect()
        })
    }

    /// Silences in force made before `before_ms`, with every fingerprint
    /// each covers: `(silence id, alertmanager, fingerprints)`.
    pub fn silences_in_force(
        &self,
        before_ms: i64,
    ) -> Result<Vec<(String, String, Vec<String>)>, StoreError> {
        let rows: Vec<(String, String, String)> = self.store.with(|c| {
            c.rows(
                "SELECT silence_id, alertmanager, fingerprint FROM alert_silences
                 WHERE expired_ms IS NULL AND created_ms < ?1 ORDER BY silence_id",
                args![before_ms],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .collect::<Result<Vec<_>, DbError>>()
        })?;
        let mut out: Vec<(String, String, Vec<String>)> = Vec::new();
        for (id, am, fp) in rows {
            match out.last_mut() {
                Some(last) if last.0 == id => last.2.push(fp),
                _ => out.push((id, am, vec![fp])),
            }
        }
        Ok(out)
    }

    /// Marks a silence expired (for every fingerprint it covered).
    pub fn expire_silence(&self, id: &str) -> Result<(), StoreError> {
        self.store.with(|c| {
            c.exec(
                "UPDATE alert_silences SET expired_ms = ?2 WHERE silence_id = ?1",
                args![id, unix_millis()],
            )
        })?;
        Ok(())
    }

    /// Claims the remediation of `episode` by `pipeline` for `ttl_ms`: at most
    /// one run per episode, and a claim whose holder died expires.
    pub fn claim_remediation(
        &self,
        episode: &str,
        pipeline: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<Remediation, StoreError> {
        let now = unix_millis();
        self.store.with(|c| {
            c.tx(|c| {
                let claimed = c.exec(
                    "INSERT INTO alert_remediations (episode, pipeline, holder, claimed_until_ms, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (episode, pipeline) DO UPDATE SET holder = ?3, claimed_until_ms = ?4
                     WHERE alert_remediations.run_id IS NULL AND alert_remediations.claimed_until_ms <= ?5",
                    args![episode, pipeline, holder, now + ttl_ms, now],
                )?;
                if claimed == 1 {
                    return Ok(Remediation::Claimed);
                }
                let run: Option<String> = c
                    .row(
                        "SELECT run_id FROM alert_remediations WHERE episode = ?1 AND pipeline = ?2",
                        args![episode, pipeline],
                    )?
                    .and_then(|r| r.get::<Option<String>>(0).transpose())
                    .transpose()?;
                Ok(run.map_or(Remediation::Busy, Remediation::Started))
            })
        })
    }

    /// Records the run a claimed remediation started.
    pub fn remediation_started(
        &self,
        episode: &str,
        pipeline: &str,
        run: &str,
    ) -> Result<(), StoreError> {
        self.store.with(|c| {
            c.exec(
                "UPDATE alert_remediations SET run_id = ?3 WHERE episode = ?1 AND pipeline = ?2",
                args![episode, pipeline, run],
            )
        })?;
        Ok(())
    }

    /// Gives a claim up (the start failed): a later resend may try again.
    pub fn release_remediation(&self, episode: &str, pipeline: &str) -> Result<(), StoreError> {
        self.store.with(|c| {
            c.exec(
                "DELETE FROM alert_remediations WHERE episode = ?1 AND pipeline = ?2 AND run_id IS NULL",
                args![episode, pipeline],
            )
        })?;
        Ok(())
    }

    /// Deletes groups, alert rows and actions received before `cutoff_ms`;
    /// returns the groups deleted.
    pub fn delete_before(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        self.store.with(|c| {
            c.tx(|c| {
                c.exec(
                    "DELETE FROM alert_actions WHERE group_id IN (SELECT id FROM alert_groups WHERE received_ms < ?1 AND state <> 'pending')",
                    args![cutoff_ms],
                )?;
                c.exec("DELETE FROM alert_events WHERE received_ms < ?1", args![cutoff_ms])?;
                c.exec(
                    "DELETE FROM alert_remediations WHERE created_ms < ?1 AND run_id IS NOT NULL",
                    args![cutoff_ms],
                )?;
                Ok(c.exec(
                    "DELETE FROM alert_groups WHERE received_ms < ?1 AND state <> 'pending'",
                    args![cutoff_ms],
                )?)
            })
        })
    }
}

fn insert_events(
    c: &mut Conn,
    group: &str,
    key: &str,
    alerts: &[Alert],
    now: i64,
) -> Result<u64, StoreError> {
    let mut sql = String::from(
        "INSERT INTO alert_events (group_key, fingerprint, status, starts_at, group_id, alertname, labels, received_ms) VALUES ",
    );
    let mut params: Vec<Value> = Vec::with_capacity(alerts.len() * 8);
    for (i, a) in alerts.iter().enumerate() {
        let b = i * 8;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{})",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5,
            b + 6,
            b + 7,
            b + 8
        ));
        let labels = serde_json::to_string(&a.labels).unwrap_or_default();
        params.extend([
            key.into(),
            a.fingerprint.clone().into(),
            a.status.clone().into(),
            a.starts_at.clone().into(),
            group.into(),
            a.alertname().into(),
            labels.into(),
            now.into(),
        ]);
    }
    sql.push_str(" ON CONFLICT (group_key, fingerprint, status, starts_at) DO NOTHING");
    Ok(c.exec(&sql, &params)?)
}

/// Reads a text column that may be NULL.
pub(crate) fn opt_text(r: &Row, i: usize) -> Result<Option<String>, StoreError> {
    Ok(r.get::<Option<String>>(i)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(key: &str, alerts: &[(&str, &str)]) -> Webhook {
        let alerts: Vec<serde_json::Value> = alerts
            .iter()
            .map(|(fp, status)| {
                serde_json::json!({"status": status, "labels": {"alertname": "A"},
                "startsAt": "2026-12-01T00:00:00Z", "fingerprint": fp})
            })
            .collect();
        serde_json::from_value(
            serde_json::json!({"groupKey": key, "status": "firing", "alerts": alerts}),
        )
        .unwrap()
    }

    /// Two replicas store the same delivery at the same time: the unique key
    /// lets exactly one of them bring the alerts in; a resolve is new once.
    #[test]
    fn ha_copies_on_two_replicas_bring_each_alert_in_once() {
        for t in capstan_store::testing::backends() {
            let (a, b) = (
                AlertStore::new(t.store.clone()),
                AlertStore::new(Arc::new(t.reopen())),
            );
            let h = hook("k", &[("f1", "firing"), ("f2", "firing")]);
            let raw = serde_json::to_string(&h).unwrap();
            let (x, y) = std::thread::scope(|s| {
                let x = s.spawn(|| a.ingest("g1", "am", &h, &raw, 0).unwrap());
                let y = s.spawn(|| b.ingest("g2", "am", &h, &raw, 0).unwrap());
                (x.join().unwrap(), y.join().unwrap())
            });
            let mut news = [x.new_alerts, y.new_alerts];
            news.sort();
            assert_eq!(news, [0, 2], "{:?}", t.backend());
            let mut states = [x.state, y.state];
            states.sort();
            assert_eq!(states, ["duplicate", "pending"]);
            let r = hook("k", &[("f1", "resolved"), ("f2", "firing")]);
            let raw = serde_json::to_string(&r).unwrap();
            assert_eq!(a.ingest("g3", "am", &r, &raw, 0).unwrap().new_alerts, 1);
            assert_eq!(
                b.ingest("g4", "am", &r, &raw, 0).unwrap().state,
                "duplicate"
            );
            assert_eq!(
                a.new_alerts("g3").unwrap(),
                vec![(
                    "f1".to_string(),
                    "resolved".to_string(),
                    "2026-12-01T00:00:00Z".to_string()
                )]
            );
            assert_eq!(a.pending(0, 10).unwrap().len(), 2);
            // Remediation: one claim per episode, whoever asks.
            assert_eq!(
                a.claim_remediation("f1@t", "p", "ra", 60_000).unwrap(),
                Remediation::Claimed
            );
            assert_eq!(
                b.claim_remediation("f1@t", "p", "rb", 60_000).unwrap(),
                Remediation::Busy
            );
            a.remediation_started("f1@t", "p", "run-1").unwrap();
            assert_eq!(
                b.claim_remediation("f1@t", "p", "rb", 60_000).unwrap(),
                Remediation::Started("run-1".into())
            );
        }
    }
}
