//! Queries over what was received and done: groups with filters, one
//! group's alerts and actions.

use capstan_store::sql::Row;
use capstan_store::{StoreError, args};
use serde::Serialize;

use super::{AlertStore, opt_text};

/// A group in listings.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GroupSummary {
    /// Id.
    pub id: String,
    /// Receiver path segment it was posted to.
    pub receiver: String,
    /// Alertmanager's group key.
    pub group_key: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// Alerts in the delivery.
    pub alerts: i64,
    /// Alerts it brought first (the others were seen before).
    pub new_alerts: i64,
    /// `pending`, `duplicate`, `processed`, `muted`, `unrouted`, `failed`.
    pub state: String,
    /// Projects of the routes it went to.
    pub projects: Vec<String>,
    /// Why it ended as it did, if there is something to say.
    pub note: String,
    /// Unix ms.
    pub received_ms: i64,
    /// Unix ms, once handled.
    pub processed_ms: Option<i64>,
}

/// One action a handler asked for, with its outcome.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ActionRecord {
    /// `<group>:<route>:<plugin>:<n>`.
    pub id: String,
    /// Route.
    pub route: String,
    /// Handler plugin.
    pub plugin: String,
    /// `handle`, `notify`, `run_pipeline`, `kube`, `silence`, `unsilence`, `mute`.
    pub kind: String,
    /// What it acted on (channel, pipeline, object, matchers).
    pub target: String,
    /// `running`, `succeeded`, `failed`, `skipped`, `denied`, `muted`.
    pub outcome: String,
    /// What happened (run id, silence id, delivery id, error).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// Times it was tried.
    pub attempts: i64,
    /// Unix ms.
    pub created_ms: i64,
    /// Unix ms.
    pub updated_ms: i64,
}

/// Filters of the group listing.
#[derive(Debug, Clone, Default)]
pub struct GroupFilter {
    /// Only this state.
    pub state: Option<String>,
    /// Only this receiver.
    pub receiver: Option<String>,
    /// Only groups with an alert of this name.
    pub alertname: Option<String>,
    /// Only groups with this fingerprint.
    pub fingerprint: Option<String>,
    /// Only groups routed to one of these projects (`None`: all).
    pub projects: Option<Vec<String>>,
    /// Received at or after (Unix ms).
    pub since_ms: Option<i64>,
    /// At most this many, newest first.
    pub limit: i64,
}

const GROUP_COLUMNS: &str = "id, receiver, group_key, status, alerts, new_alerts, state, projects, note, received_ms, processed_ms";

impl AlertStore {
    /// Groups, newest first.
    pub fn list_groups(&self, f: &GroupFilter) -> Result<Vec<GroupSummary>, StoreError> {
        let mut sql = format!("SELECT {GROUP_COLUMNS} FROM alert_groups g WHERE 1 = 1");
        let mut params = Vec::new();
        let mut add = |cond: &str, v: capstan_store::sql::Value| {
            params.push(v);
            sql.push_str(&cond.replace("?", &format!("?{}", params.len())));
        };
        if let Some(s) = &f.state {
            add(" AND state = ?", s.into());
        }
        if let Some(r) = &f.receiver {
            add(" AND receiver = ?", r.into());
        }
        if let Some(t) = f.since_ms {
            add(" AND received_ms >= ?", t.into());
        }
        if let Some(a) = &f.alertname {
            add(
                " AND EXISTS (SELECT 1 FROM alert_events e WHERE e.group_id = g.id AND e.alertname = ?)",
                a.into(),
            );
        }
        if let Some(fp) = &f.fingerprint {
            add(
                " AND EXISTS (SELECT 1 FROM alert_events e WHERE e.group_id = g.id AND e.fingerprint = ?)",
                fp.into(),
            );
        }
        if let Some(projects) = &f.projects {
            if projects.is_empty() {
                return Ok(vec![]);
            }
            sql.push_str(" AND (1 = 0");
            for p in projects {
                params.push(format!("%,{p},%").into());
                sql.push_str(&format!(" OR projects LIKE ?{}", params.len()));
            }
            sql.push(')');
        }
        params.push(f.limit.clamp(1, 1000).into());
        sql.push_str(&format!(
            " ORDER BY received_ms DESC, id DESC LIMIT ?{}",
            params.len()
        ));
        self.store
            .with(|c| c.rows(&sql, &params)?.iter().map(summary).collect())
    }

    /// One group's summary.
    pub fn group_summary(&self, id: &str) -> Result<Option<GroupSummary>, StoreError> {
        self.store.with(|c| {
            c.row(
                &format!("SELECT {GROUP_COLUMNS} FROM alert_groups WHERE id = ?1"),
                args![id],
            )?
            .map(|r| summary(&r))
            .transpose()
        })
    }

    /// The actions recorded for a group, in the order they were made.
    pub fn actions_of(&self, group: &str) -> Result<Vec<ActionRecord>, StoreError> {
        self.store.with(|c| {
            c.rows(
                "SELECT id, route, plugin, kind, target, outcome, detail, attempts, created_ms, updated_ms
                 FROM alert_actions WHERE group_id = ?1 ORDER BY created_ms, id",
                args![group],
            )?
            .iter()
            .map(|r| {
                let detail: String = r.get(6)?;
                Ok(ActionRecord {
                    id: r.get(0)?,
                    route: r.get(1)?,
                    plugin: r.get(2)?,
                    kind: r.get(3)?,
                    target: r.get(4)?,
                    outcome: r.get(5)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
                    attempts: r.get(7)?,
                    created_ms: r.get(8)?,
                    updated_ms: r.get(9)?,
                })
            })
            .collect()
        })
    }
}

fn summary(r: &Row) -> Result<GroupSummary, StoreError> {
    let projects: String = r.get(7)?;
    Ok(GroupSummary {
        id: r.get(0)?,
        receiver: r.get(1)?,
        group_key: r.get(2)?,
        status: r.get(3)?,
        alerts: r.get(4)?,
        new_alerts: r.get(5)?,
        state: r.get(6)?,
        projects: projects
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        note: opt_text(r, 8)?.unwrap_or_default(),
        received_ms: r.get(9)?,
        processed_ms: r.get(10)?,
    })
}
