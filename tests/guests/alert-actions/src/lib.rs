//! Test guest: an alert handler whose actions are set by its settings, so
//! the host's execution of each kind can be checked. For each alert of the
//! group it is given:
//! * `notify = "true"`: one `notify` to channel `ops` (format `text`) per
//!   group, listing `alertname/status/fingerprint` of every alert;
//! * `pipeline = "<name>"`: a `run-pipeline` per firing alert, params
//!   `{"fingerprint": ...}`;
//! * `silence = "true"`: a `silence` per firing alert matching its
//!   `alertname` and `instance` labels, 600 s;
//! * `kube = "<namespace>"`: a `restart` of Deployment `web` there.

use capstan_sdk::alert_handler::{
    Action, AlertGroup, AlertHandler, KubeOperation, Notification, PipelineRequest, Silence,
};
use capstan_sdk::{Error, config, lookup};

struct Actions;

impl AlertHandler for Actions {
    fn handle(group: AlertGroup) -> Result<Vec<Action>, Error> {
        let mut out = Vec::new();
        if config::get_or("notify", "false") == "true" {
            let lines: Vec<String> = group
                .alerts
                .iter()
                .map(|a| {
                    let name = lookup(&a.labels, "alertname").unwrap_or("");
                    format!("{name}/{}/{}", a.status, a.fingerprint)
                })
                .collect();
            out.push(Action::Notify(Notification {
                channel: "ops".into(),
                format: "text".into(),
                body: lines.join("\n"),
            }));
        }
        let pipeline = config::get_or("pipeline", "");
        let silence = config::get_or("silence", "false") == "true";
        for a in group.alerts.iter().filter(|a| a.status == "firing") {
            if !pipeline.is_empty() {
                out.push(Action::RunPipeline(PipelineRequest {
                    pipeline: pipeline.clone(),
                    params: format!("{{\"fingerprint\": \"{}\"}}", a.fingerprint),
                }));
            }
            if silence {
                let matchers = ["alertname", "instance"]
                    .iter()
                    .filter_map(|k| lookup(&a.labels, k).map(|v| (k.to_string(), v.to_string())))
                    .collect();
                out.push(Action::Silence(Silence {
                    matchers,
                    duration_secs: 600,
                    comment: "test silence".into(),
                }));
            }
        }
        let ns = config::get_or("kube", "");
        if !ns.is_empty() {
            out.push(Action::Kube(KubeOperation {
                verb: "restart".into(),
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                namespace: ns,
                name: "web".into(),
                body: String::new(),
            }));
        }
        Ok(out)
    }
}

capstan_sdk::export_alert_handler!(Actions);
