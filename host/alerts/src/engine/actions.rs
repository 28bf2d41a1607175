//! Invoking a handler plugin with its share of a group, and carrying out
//! the actions it returns, each recorded before and after with its
//! outcome. An action's id is `<group>:<route>:<plugin>:<n>`; one recorded
//! with a final outcome is not run again when a group is handled again
//! (a replica died mid-way), and the id is the idempotency key a notifier
//! gets.

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_runtime::runtime::bindings::alert_handler as ah;
use capstan_runtime::runtime::{Call, Output};
use capstan_store::leases::Lease;
use serde_json::{Value, json};

use super::Engine;
use super::worker::Tally;
use crate::model::{Alert, Webhook, short_hash};
use crate::routes::Route;
use crate::store::{GroupRow, Remediation};

/// What an action came to: outcome and detail.
pub(super) type Done = (&'static str, Value);

fn failed(why: impl Into<String>) -> Done {
    ("failed", json!({ "error": why.into() }))
}

impl Engine {
    pub(super) async fn run_handler(
        self: &Arc<Self>,
        group: &GroupRow,
        route: &Route,
        plugin: &str,
        sub: Webhook,
        tally: &mut Tally,
        lease: &Lease,
    ) {
        let base = format!("{}:{}:{plugin}", group.id, route.name);
        let handle_id = format!("{base}:handle");
        if let Err(e) =
            self.db
                .begin_action(&handle_id, &group.id, &route.name, plugin, "handle", plugin)
        {
            tracing::error!(group = %group.id, "recording a handler call: {e}");
            tally.failed = true;
            return;
        }
        let owner = self.registry.gate().owner(plugin);
        if owner != route.project {
            let why = format!(
                "handler `{plugin}` belongs to project `{owner}`, not to the route's project `{}`",
                route.project
            );
            self.close(&handle_id, "handle", ("denied", json!({ "error": why })));
            tally.failed = true;
            return;
        }
        let alerts = sub.alerts.clone();
        let call = Call::Handle { group: to_wit(sub) };
        let (actions, prepared) = match self.registry.invoke(plugin, call).await {
            Ok((Output::Actions(a), account, prepared)) => {
                let detail = json!({ "invocation": account.invocation, "version": &*account.version, "actions": a.len(), "alerts": alerts.len() });
                self.close(&handle_id, "handle", ("succeeded", detail));
                (a, prepared)
            }
            Ok(_) => {
                self.close(
                    &handle_id,
                    "handle",
                    failed(format!("`{plugin}` is not an alert-handler")),
                );
                tally.failed = true;
                return;
            }
            Err(e) => {
                self.close(&handle_id, "handle", failed(e.to_string()));
                tally.failed = true;
                return;
            }
        };
        for (i, action) in actions.into_iter().enumerate() {
            match self.db.store().lease_is_current(lease) {
                Ok(true) => {}
                _ => {
                    tally.lost_lease = true;
                    return;
                }
            }
            let id = format!("{base}:{i}");
            let (kind, target) = describe(&action);
            match self
                .db
                .begin_action(&id, &group.id, &route.name, plugin, kind, &target)
            {
                Ok(None) => {}
                Ok(Some(_done)) => continue,
                Err(e) => {
                    tracing::error!(group = %group.id, "recording an action: {e}");
                    tally.failed = true;
                    continue;
                }
            }
            let ctx = Ctx {
                id: &id,
                group,
                route,
                plugin,
                alerts: &alerts,
            };
            let done = match action {
                ah::Action::Notify(n) => self.notify(&ctx, n).await,
                ah::Action::RunPipeline(r) => self.run_pipeline(&ctx, r).await,
                ah::Action::Silence(s) => self.silence(&ctx, s).await,
                ah::Action::Kube(k) => self.kube(&ctx, &prepared, k).await,
            };
            if done.0 == "failed" || done.0 == "denied" {
                tally.failed = true;
            }
            self.close(&id, kind, done);
        }
    }

    fn close(&self, id: &str, kind: &str, (outcome, detail): Done) {
        if let Err(e) = self.db.finish_action(id, outcome, &detail) {
            tracing::error!(action = %id, "recording an action's outcome: {e}");
        }
        self.metrics.action(kind, outcome);
    }

    async fn notify(&self, ctx: &Ctx<'_>, n: ah::Notification) -> Done {
        let Some(notifier) = self.notifier() else {
            return failed(
                "no notification delivery is wired into this server: notify actions cannot be sent (capstan-notify channels)",
            );
        };
        match notifier
            .notify(
                &ctx.route.project,
                ctx.plugin,
                &n.channel,
                &n.format,
                &n.body,
                ctx.id,
            )
            .await
        {
            Ok(delivery) => (
                "succeeded",
                json!({ "delivery": delivery, "channel": n.channel }),
            ),
            Err(e) => (
                "failed",
                json!({ "error": e.message, "retryable": e.retryable, "channel": n.channel }),
            ),
        }
    }

    /// Starts the pipeline once per alert episode: the pipeline must belong
    /// to the handler's project (the route's), and a claim in the database
    /// (expiring, in case this replica dies) keeps resends and HA copies
    /// from starting a second run.
    async fn run_pipeline(&self, ctx: &Ctx<'_>, r: ah::PipelineRequest) -> Done {
        let Some(trigger) = self.pipelines() else {
            return failed("no pipelines engine is wired into this server");
        };
        let params: BTreeMap<String, Value> = if r.params.trim().is_empty() {
            BTreeMap::new()
        } else {
            match serde_json::from_str(&r.params) {
                Ok(p) => p,
                Err(e) => return failed(format!("params are not a JSON object: {e}")),
            }
        };
        match trigger.project_of(&r.pipeline) {
            Ok(Some(p)) if p == ctx.route.project => {}
            Ok(Some(p)) => {
                return (
                    "denied",
                    json!({ "error": format!(
                    "pipeline `{}` belongs to project `{p}`; handler `{}` may start pipelines of project `{}` only",
                    r.pipeline, ctx.plugin, ctx.route.project) }),
                );
            }
            Ok(None) => return failed(format!("no pipeline named `{}`", r.pipeline)),
            Err(e) => return failed(e.0),
        }
        let (episode, labels) = episode(ctx, &params);
        let ttl = self.config.remediation_claim_secs as i64 * 1000;
        match self
            .db
            .claim_remediation(&episode, &r.pipeline, &self.replica, ttl)
        {
            Ok(Remediation::Claimed) => {}
            Ok(Remediation::Started(run)) => {
                return (
                    "skipped",
                    json!({ "run": run, "episode": episode, "reason": "a run was started for this alert episode already" }),
                );
            }
            Ok(Remediation::Busy) => {
                return (
                    "skipped",
                    json!({ "episode": episode, "reason": "another worker is starting the run for this alert episode" }),
                );
            }
            Err(e) => return failed(e.to_string()),
        }
        let mut candidates: BTreeMap<String, Value> = labels
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        for (k, v) in params {
            match v {
                Value::Object(inner) => {
                    for (ik, iv) in inner {
                        if !iv.is_object() && !iv.is_array() {
                            candidates.insert(ik, iv);
                        }
                    }
                }
                Value::Array(_) | Value::Null => {}
                scalar => {
                    candidates.insert(k, scalar);
                }
            }
        }
        let started_by = format!("alerts:{}", ctx.plugin);
        let trig = json!({ "kind": "alert", "delivery": ctx.group.id, "provider": "alertmanager" });
        match trigger
            .start(&r.pipeline, candidates, trig, &started_by)
            .await
        {
            Ok(run) => {
                if let Err(e) = self.db.remediation_started(&episode, &r.pipeline, &run) {
                    tracing::error!(%run, "recording a remediation run: {e}");
                }
                (
                    "succeeded",
                    json!({ "run": run, "episode": episode, "pipeline": r.pipeline }),
                )
            }
            Err(e) => {
                let _ = self.db.release_remediation(&episode, &r.pipeline);
                failed(e.0)
            }
        }
    }
}

/// What an action acts on.
pub(super) struct Ctx<'a> {
    pub(super) id: &'a str,
    pub(super) group: &'a GroupRow,
    pub(super) route: &'a Route,
    pub(super) plugin: &'a str,
    pub(super) alerts: &'a [Alert],
}

/// The episode a remediation is for, and the labels its parameters come
/// from: the alert the params name by `fingerprint`, else the only firing
/// alert, else the group's firing alerts together.
fn episode(ctx: &Ctx<'_>, params: &BTreeMap<String, Value>) -> (String, BTreeMap<String, String>) {
    let firing: Vec<&Alert> = ctx.alerts.iter().filter(|a| a.status == "firing").collect();
    let named = params
        .get("fingerprint")
        .and_then(Value::as_str)
        .and_then(|fp| ctx.alerts.iter().find(|a| a.fingerprint == fp));
    if let Some(a) = named.or(if firing.len() == 1 {
        Some(firing[0])
    } else {
        None
    }) {
        let mut labels = a.labels.clone();
        labels.insert("fingerprint".into(), a.fingerprint.clone());
        return (a.episode(), labels);
    }
    let pool: Vec<&Alert> = if firing.is_empty() {
        ctx.alerts.iter().collect()
    } else {
        firing
    };
    let mut eps: Vec<String> = pool.iter().map(|a| a.episode()).collect();
    eps.sort();
    let refs: Vec<&str> = std::iter::once(ctx.group.hook.group_key.as_str())
        .chain(eps.iter().map(String::as_str))
        .collect();
    (
        format!("group:{}", short_hash(&refs)),
        ctx.group.hook.common_labels.clone(),
    )
}

fn describe(a: &ah::Action) -> (&'static str, String) {
    match a {
        ah::Action::Notify(n) => ("notify", n.channel.clone()),
        ah::Action::RunPipeline(r) => ("run_pipeline", r.pipeline.clone()),
        ah::Action::Kube(k) => (
            "kube",
            format!(
                "{} {}/{} {}/{}",
                k.verb, k.api_version, k.kind, k.namespace, k.name
            ),
        ),
        ah::Action::Silence(s) => (
            "silence",
            s.matchers
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect::<Vec<_>>()
                .join(","),
        ),
    }
}

fn kv(m: &BTreeMap<String, String>) -> Vec<(String, String)> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The group as the `alert-handler` world takes it.
fn to_wit(h: Webhook) -> ah::AlertGroup {
    ah::AlertGroup {
        version: if h.version.is_empty() {
            "4".into()
        } else {
            h.version
        },
        group_key: h.group_key,
        truncated_alerts: h.truncated_alerts,
        status: h.status,
        receiver: h.receiver,
        group_labels: kv(&h.group_labels),
        common_labels: kv(&h.common_labels),
        common_annotations: kv(&h.common_annotations),
        external_url: h.external_url,
        alerts: h
            .alerts
            .into_iter()
            .map(|a| ah::Alert {
                status: a.status,
                labels: kv(&a.labels),
                annotations: kv(&a.annotations),
                starts_at: a.starts_at,
                ends_at: a.ends_at,
                generator_url: a.generator_url,
                fingerprint: a.fingerprint,
            })
            .collect(),
    }
}
