//! The engine's tables (migration `V15__provisioning`): instances with their
//! spec revisions and inventory, plans, and apply/destroy jobs with their
//! journal.

use std::sync::Arc;

use capstan_store::sql::Row;
use capstan_store::{Store, StoreError, args, unix_millis};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{Instance, ObjectRef, Plan, Progress};

/// A member the engine applied, with the UID it saw.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// The object.
    pub object: ObjectRef,
    /// Its UID when applied.
    pub uid: String,
}

/// Options of an apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApplyOptions {
    /// Take over fields other field managers own.
    #[serde(default)]
    pub force: bool,
    /// Delete and re-create objects whose change touches an immutable field.
    #[serde(default)]
    pub recreate: bool,
}

/// An apply or destroy of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    /// Id.
    pub id: String,
    /// Instance.
    pub name: String,
    /// `apply` or `destroy`.
    pub kind: String,
    /// The plan it applies (empty for destroy).
    pub plan_id: String,
    /// Options.
    pub options: ApplyOptions,
    /// `awaiting-approval`, `queued`, `running`, `done`, `failed`, `rejected`.
    pub state: String,
    /// Journal: steps finished.
    pub done: Vec<String>,
    /// Progress lines.
    pub progress: Vec<Progress>,
    /// On failure `{"error", "message", ...}`; `null` otherwise.
    #[schema(value_type = Option<Object>)]
    pub result: Value,
    /// Unix ms.
    pub created_ms: i64,
    /// Unix ms.
    pub updated_ms: i64,
}

impl Job {
    /// Whether it will not change any more.
    pub fn finished(&self) -> bool {
        matches!(self.state.as_str(), "done" | "failed" | "rejected")
    }
}

/// The engine's view of the store.
#[derive(Clone)]
pub struct ProvisionStore {
    store: Arc<Store>,
}

const INSTANCE_COLUMNS: &str = "p.name, p.project, p.plugin, p.cluster, s.spec, p.revision, p.state, \
    p.drift, p.detail, p.created_by, p.updated_ms, p.inventory";
const JOB_COLUMNS: &str =
    "id, name, kind, plan_id, options, state, done, progress, result, created_ms, updated_ms";

fn json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Conflict(format!("stored JSON: {e}")))
}

fn text<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn to_instance(r: &Row) -> Result<(Instance, Vec<Member>), StoreError> {
    let spec: String = r.get(4)?;
    let inventory: String = r.get(11)?;
    Ok((
        Instance {
            name: r.get(0)?,
            project: r.get(1)?,
            plugin: r.get(2)?,
            cluster: r.get(3)?,
            spec: json(&spec)?,
            revision: r.get(5)?,
            state: r.get(6)?,
            drift: r.get(7)?,
            detail: r.get(8)?,
            created_by: r.get(9)?,
            updated_ms: r.get(10)?,
        },
        json(&inventory)?,
    ))
}

fn to_job(r: &Row) -> Result<Job, StoreError> {
    let (options, done, progress, result): (String, String, String, String) =
        (r.get(4)?, r.get(6)?, r.get(7)?, r.get(8)?);
    Ok(Job {
        id: r.get(0)?,
        name: r.get(1)?,
        kind: r.get(2)?,
        plan_id: r.get(3)?,
        options: json(&options)?,
        state: r.get(5)?,
        done: json(&done)?,
        progress: json(&progress)?,
        result: json(&result)?,
        created_ms: r.get(9)?,
        updated_ms: r.get(10)?,
    })
}

impl ProvisionStore {
    /// Over `store`.
    pub fn new(store: Arc<Store>) -> ProvisionStore {
        ProvisionStore { store }
    }

    /// Creates an instance at revision 1, or stores `spec` as its next
    /// revision (same project, plugin and cluster). Returns the revision
    /// and whether it is new.
    pub fn put(&self, i: &Instance) -> Result<(i64, bool), StoreError> {
        let spec = i.spec.to_string();
        let now = unix_millis();
        self.store.with(|c| {
            c.tx(|c| {
                let cur = c.row(
                    "SELECT project, plugin, cluster, revision FROM provisions WHERE name = ?1",
                    args![i.name],
                )?;
                let Some(cur) = cur else {
                    c.exec(
                        "INSERT INTO provisions (name, project, plugin, cluster, revision, state, drift, detail,
                             inventory, created_by, created_ms, updated_ms, drift_checked_ms)
                         VALUES (?1, ?2, ?3, ?4, 1, 'new', 'unknown', '', '[]', ?5, ?6, ?6, 0)",
                        args![i.name, i.project, i.plugin, i.cluster, i.created_by, now],
                    )?;
                    c.exec(
                        "INSERT INTO provision_specs (name, revision, spec, created_by, created_ms) VALUES (?1, 1, ?2, ?3, ?4)",
                        args![i.name, spec, i.created_by, now],
                    )?;
                    return Ok((1, true));
                };
                let (project, plugin, cluster, rev): (String, String, String, i64) =
                    (cur.get(0)?, cur.get(1)?, cur.get(2)?, cur.get(3)?);
                if (&project, &plugin, &cluster) != (&i.project, &i.plugin, &i.cluster) {
                    return Err(StoreError::Conflict(format!(
                        "instance `{}` is {plugin} on cluster `{cluster}` in project `{project}`; \
                         only its spec can change",
                        i.name
                    )));
                }
                let old: String = c.value(
                    "SELECT spec FROM provision_specs WHERE name = ?1 AND revision = ?2",
                    args![i.name, rev],
                )?;
                if serde_json::from_str::<Value>(&old).ok().as_ref() == Some(&i.spec) {
                    return Ok((rev, false));
                }
                let next = rev + 1;
                c.exec(
                    "INSERT INTO provision_specs (name, revision, spec, created_by, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                    args![i.name, next, spec, i.created_by, now],
                )?;
                c.exec(
                    "UPDATE provisions SET revision = ?2, updated_ms = ?3 WHERE name = ?1",
                    args![i.name, next, now],
                )?;
                Ok((next, true))
            })
        })
    }

    /// An instance and its inventory.
    pub fn get(&self, name: &str) -> Result<Option<(Instance, Vec<Member>)>, StoreError> {
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM provisions p JOIN provision_specs s
             ON s.name = p.name AND s.revision = p.revision WHERE p.name = ?1"
        );
        self.store.with(|c| {
            c.row(&sql, args![name])?
                .as_ref()
                .map(to_instance)
                .transpose()
        })
    }

    /// Every instance, by name.
    pub fn list(&self) -> Result<Vec<Instance>, StoreError> {
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM provisions p JOIN provision_specs s
             ON s.name = p.name AND s.revision = p.revision ORDER BY p.name"
        );
        self.store.with(|c| {
            c.rows(&sql, args![])?
                .iter()
                .map(|r| to_instance(r).map(|(i, _)| i))
                .collect()
        })
    }

    /// The spec of one revision.
    pub fn spec(&self, name: &str, revision: i64) -> Result<Option<Value>, StoreError> {
        self.store.with(|c| {
            c.row(
                "SELECT spec FROM provision_specs WHERE name = ?1 AND revision = ?2",
                args![name, revision],
            )?
            .map(|r| json(&r.get::<String>(0)?))
            .transpose()
        })
    }

    /// Sets the state and why.
    pub fn set_state(&self, name: &str, state: &str, detail: &str) -> Result<(), StoreError> {
        self.store.with(|c| {
            c.exec(
                "UPDATE provisions SET state = ?2, detail = ?3, updated_ms = ?4 WHERE name = ?1",
                args![name, state, detail, unix_millis()],
            )
        })?;
        Ok(())
    }

    /// Records a drift check.
    pub fn set_drift(&self, name: &str, drift: &str, detail: &str) -> Result<(), StoreError> {
        self.store.with(|c| {
            c.exec(
                "UPDATE provisions SET drift = ?2, detail = ?3, drift_checked_ms = ?4 WHERE name = ?1",
                args![name, drift, detail, unix_millis()],
            )
        })?;
        Ok(())
    }

    /// Replaces the inventory.
    pub fn set_inventory(&self, name: &str, members: &[Member]) -> Result<(), StoreError> {
        let mut members = members.to_vec();
        members.sort();
        members.dedup();
        self.store.with(|c| {
            c.exec(
                "UPDATE provisions SET inventory = ?2 WHERE name = ?1",
                args![name, text(&members)],
            )
        })?;
        Ok(())
    }

    /// Instances whose drift was last checked before `before_ms`, applied ones only.
    pub fn due_for_drift(&self, before_ms: i64, limit: i64) -> Result<Vec<String>, StoreError> {
        self.store.with(|c| {
            c.rows(
                "SELECT name FROM provisions WHERE state = 'applied' AND drift_checked_ms < ?1
                 ORDER BY drift_checked_ms LIMIT ?2",
                args![before_ms, limit],
            )?
            .iter()
            .map(|r| Ok(r.get(0)?))
            .collect()
        })
    }

    /// Stores a plan (new or updated).
    pub fn save_plan(&self, p: &Plan) -> Result<(), StoreError> {
        self.store.with(|c| {
            c.exec(
                "INSERT INTO provision_plans (id, name, created_ms, plan) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET plan = ?4",
                args![p.id, p.instance, p.created_ms, text(p)],
            )
        })?;
        Ok(())
    }

    /// One plan.
    pub fn plan(&self, id: &str) -> Result<Option<Plan>, StoreError> {
        self.store.with(|c| {
            c.row("SELECT plan FROM provision_plans WHERE id = ?1", args![id])?
                .map(|r| json(&r.get::<String>(0)?))
                .transpose()
        })
    }

    /// Plans of an instance, newest first.
    pub fn plans(&self, name: &str, limit: i64) -> Result<Vec<Plan>, StoreError> {
        self.store.with(|c| {
            c.rows(
                "SELECT plan FROM provision_plans WHERE name = ?1 ORDER BY created_ms DESC, id DESC LIMIT ?2",
                args![name, limit],
            )?
            .iter()
            .map(|r| json(&r.get::<String>(0)?))
            .collect()
        })
    }

    /// Files a job, unless one of the instance is unfinished.
    pub fn create_job(&self, job: &Job) -> Result<(), StoreError> {
        self.store.with(|c| {
            c.tx(|c| {
                let busy: i64 = c.value(
                    "SELECT COUNT(*) FROM provision_jobs WHERE name = ?1
                     AND state IN ('awaiting-approval', 'queued', 'running')",
                    args![job.name],
                )?;
                if busy > 0 {
                    return Err(StoreError::Conflict(format!(
                        "instance `{}` has an apply or destroy in progress",
                        job.name
                    )));
                }
                c.exec(
                    &format!("INSERT INTO provision_jobs ({JOB_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)"),
                    args![job.id, job.name, job.kind, job.plan_id, text(&job.options), job.state,
                        text(&job.done), text(&job.progress), text(&job.result), unix_millis()],
                )?;
                Ok(())
            })
        })
    }

    /// Writes a job's state, journal, progress and result.
    pub fn save_job(&self, job: &Job) -> Result<(), StoreError> {
        self.store.with(|c| {
            c.exec(
                "UPDATE provision_jobs SET state = ?2, done = ?3, progress = ?4, result = ?5, updated_ms = ?6
                 WHERE id = ?1",
                args![job.id, job.state, text(&job.done), text(&job.progress), text(&job.result), unix_millis()],
            )
        })?;
        Ok(())
    }

    /// One job.
    pub fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.store.with(|c| {
            c.row(
                &format!("SELECT {JOB_COLUMNS} FROM provision_jobs WHERE id = ?1"),
                args![id],
            )?
            .as_ref()
            .map(to_job)
            .transpose()
        })
    }

    /// Jobs to run: queued or running (a running one whose lease lapsed is resumed).
    pub fn runnable(&self) -> Result<Vec<Job>, StoreError> {
        self.store.with(|c| {
            c.rows(
                &format!("SELECT {JOB_COLUMNS} FROM provision_jobs WHERE state IN ('queued', 'running') ORDER BY created_ms"),
                args![],
            )?
            .iter()
            .map(to_job)
            .collect()
        })
    }

    /// The newest job of an instance.
    pub fn last_job(&self, name: &str) -> Result<Option<Job>, StoreError> {
        self.store.with(|c| {
            c.row(
                &format!("SELECT {JOB_COLUMNS} FROM provision_jobs WHERE name = ?1 ORDER BY created_ms DESC, id DESC LIMIT 1"),
                args![name],
            )?
            .as_ref()
            .map(to_job)
            .transpose()
        })
    }

    /// The job of a plan's approval, waiting.
    pub fn job_of_plan(&self, plan_id: &str) -> Result<Option<Job>, StoreError> {
        self.store.with(|c| {
            c.row(
                &format!("SELECT {JOB_COLUMNS} FROM provision_jobs WHERE plan_id = ?1 ORDER BY created_ms DESC LIMIT 1"),
                args![plan_id],
            )?
            .as_ref()
            .map(to_job)
            .transpose()
        })
    }
}
