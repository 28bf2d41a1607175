//! Destroy: the instance's inventory deleted in reverse step order (UID
//! preconditions; objects that opted out of pruning or were recreated by
//! someone else are kept and listed), then the ApplySet parent, then a
//! bounded wait that reports what each remaining object waits on (a
//! Namespace's phase, finalizers and true deletion conditions). Finalizers
//! are never removed.

use std::collections::BTreeMap;
use std::time::Duration;

use capstan_runtime::capabilities::kube::Verb;
use serde_json::{Value, json};

use super::jobs::Stop;
use super::{Engine, ProvisionError};
use crate::applyset;
use crate::kube::KubeError;
use crate::model::ObjectRef;
use crate::order;
use crate::store::Job;

impl Engine {
    /// Destroy: the inventory in reverse step order (prune-disabled objects
    /// kept), then the parent, then a bounded wait that reports what each
    /// remaining object (a terminating Namespace) waits on.
    pub(super) async fn run_destroy(&self, job: &mut Job) -> Result<(), Stop> {
        let (i, mut members) = self.get_instance(&job.name)?;
        let (g, _, _) = self.granted(&i).await?;
        self.db
            .set_state(&i.name, "destroying", "deleting the set")?;
        let last = self.last_applied(&i.name)?;
        let steps: BTreeMap<ObjectRef, u32> = last
            .iter()
            .flat_map(|p| p.objects.iter().map(|o| (o.object.clone(), o.step)))
            .collect();
        let step_of = |o: &ObjectRef| {
            steps
                .get(o)
                .copied()
                .unwrap_or_else(|| order::step(0, &o.kind))
        };
        members.sort_by_key(|m| std::cmp::Reverse(step_of(&m.object)));
        let mut kept = Vec::new();
        let mut deleting = Vec::new();
        for m in members.clone() {
            let Some(live) = g.get(&m.object).await? else {
                members.retain(|x| x != &m);
                continue;
            };
            if live.pointer("/metadata/uid").and_then(Value::as_str) != Some(m.uid.as_str()) {
                kept.push(format!(
                    "{}: recreated by someone else, left alone",
                    m.object.label()
                ));
                members.retain(|x| x != &m);
                continue;
            }
            if let Some(why) = applyset::prune_disabled(&live) {
                kept.push(format!("{}: {why}, left alone", m.object.label()));
                continue;
            }
            g.check(&m.object, Verb::Delete)?;
            match g.delete(&m.object, Some(&m.uid)).await {
                Ok(_) | Err(KubeError::NotFound(_)) => deleting.push(m.object.clone()),
                Err(KubeError::Precondition(e)) => kept.push(format!("{}: {e}", m.object.label())),
                Err(e) => return Err(e.into()),
            }
            self.progress(
                job,
                &order::describe(step_of(&m.object)),
                format!("deleted {}", m.object.label()),
            );
        }
        if let Some(p) = &last {
            match g.delete(&p.parent, None).await {
                Ok(_) | Err(KubeError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let until = tokio::time::Instant::now() + self.config.wait_timeout;
        let mut waiting;
        loop {
            waiting = Vec::new();
            for o in &deleting {
                if let Some(live) = g.get(o).await? {
                    waiting.push(format!("{}: {}", o.label(), termination_report(&live)));
                } else {
                    members.retain(|m| &m.object != o);
                }
            }
            self.db.set_inventory(&i.name, &members)?;
            if waiting.is_empty() || tokio::time::Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        job.result = json!({ "terminating": waiting, "kept": kept });
        if waiting.is_empty() {
            self.db.set_state(&i.name, "destroyed", &kept.join("; "))?;
            self.progress(job, "destroy", "every object is gone".into());
            Ok(())
        } else {
            let why = format!("terminating, waiting on: {}", waiting.join("; "));
            self.progress(job, "destroy", why.clone());
            Err(ProvisionError::conflict(
                "terminating",
                why,
                json!({ "terminating": waiting, "kept": kept }),
            )
            .into())
        }
    }
}

/// What a terminating object waits on: finalizers and the Namespace
/// deletion conditions that are true (content remaining, finalizers
/// remaining, a discovery failure such as a dead APIService).
pub fn termination_report(live: &Value) -> String {
    let mut parts = Vec::new();
    if live.pointer("/metadata/deletionTimestamp").is_none() {
        parts.push("not yet marked for deletion".to_string());
    }
    for (what, ptr) in [
        ("finalizers", "/metadata/finalizers"),
        ("spec.finalizers", "/spec/finalizers"),
    ] {
        if let Some(f) = live
            .pointer(ptr)
            .and_then(Value::as_array)
            .filter(|f| !f.is_empty())
        {
            let names: Vec<&str> = f.iter().filter_map(Value::as_str).collect();
            parts.push(format!("{what} [{}]", names.join(", ")));
        }
    }
    for c in live
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if c.get("status").and_then(Value::as_str) == Some("True") {
            parts.push(format!(
                "{}: {}",
                c.get("type").and_then(Value::as_str).unwrap_or("?"),
                c.get("message").and_then(Value::as_str).unwrap_or("")
            ));
        }
    }
    if let Some(phase) = live.pointer("/status/phase").and_then(Value::as_str) {
        parts.insert(0, format!("phase {phase}"));
    }
    parts.join(", ")
}
