//! `silence` actions against Alertmanager's API v2, and their expiry when
//! the alerts resolve. Alertmanager's `POST /api/v2/silences` creates a
//! new silence every time, so the silence id is recorded per fingerprint
//! (and matchers): a resend or retry finds it and makes none. A silence
//! made but not recorded (the replica died in between) is found again by
//! its comment, which carries the action id.
//!
//! Alertmanager sends no resolve for an alert that is silenced, so a
//! resolve delivery cannot be the only trigger: a sweep (one replica at a
//! time, lease `alerts/silence-sweep`) reads each Alertmanager's alerts and
//! expires the silences none of whose alerts is still there.

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_runtime::runtime::Prepared;
use capstan_runtime::runtime::bindings::alert_handler as ah;
use serde_json::{Value, json};

use super::Engine;
use super::actions::{Ctx, Done};
use crate::model::Alert;
use crate::store::GroupRow;

/// Silences last at most this long (seconds), and this long if the handler gives 0.
const MAX_SECS: u64 = 7 * 86_400;
const DEFAULT_SECS: u64 = 3_600;

fn failed(why: impl Into<String>) -> Done {
    ("failed", json!({ "error": why.into() }))
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Engine {
    pub(super) async fn silence(&self, ctx: &Ctx<'_>, s: ah::Silence) -> Done {
        let Some(am) = self.config.alertmanager_url.clone() else {
            return failed(
                "no Alertmanager is configured for silences ([alerts] alertmanager_url)",
            );
        };
        let am = am.trim_end_matches('/').to_string();
        let mut matchers: BTreeMap<String, String> = s.matchers.into_iter().collect();
        if matchers.is_empty() {
            matchers = common_labels(ctx.alerts);
        }
        // A silence that matches everything would silence every alert (alertmanager#3492).
        if !matchers.values().any(|v| !v.is_empty()) {
            return failed("the silence has no matcher with a value; it would match every alert");
        }
        let key = matchers
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>()
            .join(",");
        let fingerprints: Vec<String> = ctx
            .alerts
            .iter()
            .filter(|a| a.status == "firing")
            .map(|a| a.fingerprint.clone())
            .collect();
        if fingerprints.is_empty() {
            return (
                "skipped",
                json!({ "reason": "no firing alert to silence", "matchers": key }),
            );
        }
        for fp in &fingerprints {
            match self.db.silence_of(fp, &key) {
                Ok(Some(id)) => {
                    let _ = self.db.record_silence(&fingerprints, &key, &id, &am);
                    return (
                        "skipped",
                        json!({ "silence": id, "fingerprint": fp, "reason": "a silence exists for this fingerprint already" }),
                    );
                }
                Ok(None) => {}
                Err(e) => return failed(e.to_string()),
            }
        }
        let marker = format!("capstan action {}", ctx.id);
        let id = match self.find_silence(&am, &matchers, &marker).await {
            Ok(Some(id)) => id,
            Ok(None) => {
                let secs = match s.duration_secs {
                    0 => DEFAULT_SECS,
                    n => n.min(MAX_SECS),
                };
                let now = capstan_store::unix_millis();
                let comment = if s.comment.is_empty() {
                    format!("silenced by alert handler {} ({marker})", ctx.plugin)
                } else {
                    format!("{} ({marker})", s.comment)
                };
                let body = json!({
                    "matchers": matchers.iter().map(|(k, v)| json!({ "name": k, "value": v, "isRegex": false, "isEqual": true })).collect::<Vec<_>>(),
                    "startsAt": rfc3339(now),
                    "endsAt": rfc3339(now + secs as i64 * 1000),
                    "createdBy": format!("capstan:{}", ctx.plugin),
                    "comment": comment,
                });
                match self.post_silence(&am, &body).await {
                    Ok(id) => id,
                    Err(e) => return failed(e),
                }
            }
            Err(e) => return failed(e),
        };
        if let Err(e) = self.db.record_silence(&fingerprints, &key, &id, &am) {
            return failed(format!("silence {id} made but not recorded: {e}"));
        }
        (
            "succeeded",
            json!({ "silence": id, "alertmanager": am, "fingerprints": fingerprints, "matchers": key }),
        )
    }

    async fn post_silence(&self, am: &str, body: &Value) -> Result<String, String> {
        let r = self
            .http
            .post(format!("{am}/api/v2/silences"))
            .json(body)
            .send()
            .await
            .map_err(|e| format!("Alertmanager {am}: {e}"))?;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("Alertmanager answered {status}: {}", text.trim()));
        }
        serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["silenceID"].as_str().map(str::to_string))
            .ok_or_else(|| format!("Alertmanager's answer has no silenceID: {text}"))
    }

    /// A live silence whose comment carries `marker` (made by an earlier
    /// attempt of the same action).
    async fn find_silence(
        &self,
        am: &str,
        matchers: &BTreeMap<String, String>,
        marker: &str,
    ) -> Result<Option<String>, String> {
        let (k, v) = matchers
            .iter()
            .find(|(_, v)| !v.is_empty())
            .ok_or("no matcher")?;
        let filter = format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
        let url =
            reqwest::Url::parse_with_params(&format!("{am}/api/v2/silences"), [("filter", filter)])
                .map_err(|e| format!("Alertmanager URL {am}: {e}"))?;
        let r = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("Alertmanager {am}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!(
                "Alertmanager answered {} listing silences",
                r.status()
            ));
        }
        let list: Vec<Value> = r
            .json()
            .await
            .map_err(|e| format!("Alertmanager's silence list: {e}"))?;
        Ok(list
            .iter()
            .filter(|s| s["status"]["state"] != "expired")
            .find(|s| s["comment"].as_str().is_some_and(|c| c.contains(marker)))
            .and_then(|s| s["id"].as_str().map(str::to_string)))
    }

    /// Expires the silences made for alerts that resolved in this delivery
    /// (`expire_silences_on_resolve`), each recorded as an `unsilence` action.
    pub(super) async fn unsilence_resolved(&self, group: &GroupRow, alerts: &[Alert]) {
        if !self.config.expire_silences_on_resolve {
            return;
        }
        for a in alerts.iter().filter(|a| a.status == "resolved") {
            let Ok(silences) = self.db.silences_for(&a.fingerprint) else {
                continue;
            };
            for (id, am) in silences {
                let action = format!("{}:-:-:unsilence:{id}", group.id);
                if !matches!(
                    self.db
                        .begin_action(&action, &group.id, "-", "-", "unsilence", &id),
                    Ok(None)
                ) {
                    continue;
                }
                let done = match self.expire_in(&am, &id).await {
                    Ok(()) => (
                        "succeeded",
                        json!({ "silence": id, "fingerprint": a.fingerprint }),
                    ),
                    Err(why) => failed(why),
                };
                if let Err(e) = self.db.finish_action(&action, done.0, &done.1) {
                    tracing::error!("recording an unsilence: {e}");
                }
                self.metrics.action("unsilence", done.0);
            }
        }
    }

    /// The sweep: expires silences (made at least one interval ago) whose
    /// alerts Alertmanager no longer has (resolved while silenced). An
    /// Alertmanager that does not answer keeps its silences.
    pub(super) async fn expire_silences_of_resolved(&self) {
        let every = self.config.silence_check_secs as i64 * 1000;
        let Ok(silences) = self
            .db
            .silences_in_force(capstan_store::unix_millis() - every)
        else {
            return;
        };
        let mut active: BTreeMap<String, Option<std::collections::BTreeSet<String>>> =
            BTreeMap::new();
        for (id, am, fingerprints) in silences {
            if !active.contains_key(&am) {
                let alerts = self.active_fingerprints(&am).await;
                if let Err(e) = &alerts {
                    tracing::warn!(alertmanager = %am, "reading alerts for the silence sweep: {e}");
                }
                active.insert(am.clone(), alerts.ok());
            }
            let Some(Some(firing)) = active.get(&am) else {
                continue;
            };
            if fingerprints.iter().any(|fp| firing.contains(fp)) {
                continue;
            }
            match self.expire_in(&am, &id).await {
                Ok(()) => {
                    tracing::info!(silence = %id, ?fingerprints, "silence expired: its alerts resolved while silenced");
                    self.metrics.action("unsilence", "succeeded");
                }
                Err(why) => tracing::warn!("silence sweep: {why}"),
            }
        }
    }

    /// Expires silence `id` in Alertmanager `am` (gone already counts) and
    /// records it expired.
    async fn expire_in(&self, am: &str, id: &str) -> Result<(), String> {
        match self
            .http
            .delete(format!("{am}/api/v2/silence/{id}"))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() || r.status() == 404 => {
                let _ = self.db.expire_silence(id);
                Ok(())
            }
            Ok(r) => Err(format!(
                "Alertmanager answered {} expiring silence {id}",
                r.status()
            )),
            Err(e) => Err(format!("Alertmanager {am}: {e}")),
        }
    }

    /// Fingerprints of the alerts Alertmanager holds (active, silenced,
    /// inhibited or unprocessed; resolved ones are not listed).
    async fn active_fingerprints(
        &self,
        am: &str,
    ) -> Result<std::collections::BTreeSet<String>, String> {
        let r = self
            .http
            .get(format!("{am}/api/v2/alerts"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("answered {}", r.status()));
        }
        let alerts: Vec<Value> = r.json().await.map_err(|e| e.to_string())?;
        Ok(alerts
            .iter()
            .filter_map(|a| a["fingerprint"].as_str().map(str::to_string))
            .collect())
    }

    pub(super) async fn kube(
        &self,
        ctx: &Ctx<'_>,
        prepared: &Arc<Prepared>,
        k: ah::KubeOperation,
    ) -> Done {
        let env = self.registry.runtime().env().clone();
        match capstan_runtime::capabilities::kube::host_operation(
            env,
            prepared,
            &k.verb,
            &k.api_version,
            &k.kind,
            &k.namespace,
            &k.name,
            &k.body,
        )
        .await
        {
            Ok(result) => ("succeeded", json!({ "result": result })),
            Err(e) => {
                let denied = matches!(e, capstan_runtime::runtime::bindings::WitError::Denied(_));
                let why = format!("{e:?}");
                let _ = ctx;
                (
                    if denied { "denied" } else { "failed" },
                    json!({ "error": why }),
                )
            }
        }
    }
}

/// Labels every alert has with the same value.
fn common_labels(alerts: &[Alert]) -> BTreeMap<String, String> {
    let Some(first) = alerts.first() else {
        return BTreeMap::new();
    };
    first
        .labels
        .iter()
        .filter(|(k, v)| alerts.iter().all(|a| a.labels.get(*k) == Some(*v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
