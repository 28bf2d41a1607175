//! Alert handler that formats an Alertmanager group as one chat message in
//! Slack, DingTalk (markdown) or WeCom (markdown) format, and asks the host to
//! run the pipeline named by each firing alert's `runbook` annotation.

use capstan_sdk::alert_handler::{Action, AlertGroup, AlertHandler, Notification, PipelineRequest};
use capstan_sdk::{Error, config, lookup};
use serde_json::json;

struct AlertNotify;

impl AlertHandler for AlertNotify {
    fn handle(group: AlertGroup) -> Result<Vec<Action>, Error> {
        if group.alerts.is_empty() {
            return Err(Error::InvalidInput("alert group has no alerts".into()));
        }
        let format = config::get_or("format", "slack");
        let channel = config::get_or("channel", "ops");
        let title = title(&group);
        let lines: Vec<String> = group
            .alerts
            .iter()
            .map(|a| {
                let summary = lookup(&a.annotations, "summary")
                    .or(lookup(&a.annotations, "description"))
                    .unwrap_or("(no summary)");
                let severity = lookup(&a.labels, "severity").unwrap_or("none");
                format!("[{}] {} ({severity})", a.status.to_uppercase(), summary)
            })
            .collect();
        let body = match format.as_str() {
            "slack" => json!({
                "text": title,
                "blocks": [
                    { "type": "header", "text": { "type": "plain_text", "text": title } },
                    { "type": "section", "text": { "type": "mrkdwn", "text": lines.iter().map(|l| format!("• {l}")).collect::<Vec<_>>().join("\n") } },
                ],
            }),
            "dingtalk" => json!({
                "msgtype": "markdown",
                "markdown": { "title": title, "text": format!("### {title}\n\n{}", lines.iter().map(|l| format!("- {l}")).collect::<Vec<_>>().join("\n")) },
            }),
            "wecom" => json!({
                "msgtype": "markdown",
                "markdown": { "content": format!("**{title}**\n{}", lines.iter().map(|l| format!("> {l}")).collect::<Vec<_>>().join("\n")) },
            }),
            other => {
                return Err(Error::InvalidInput(format!(
                    "setting `format` is `{other}`; expected slack, dingtalk or wecom"
                )));
            }
        };
        let mut actions = vec![Action::Notify(Notification {
            channel,
            format,
            body: body.to_string(),
        })];
        if config::get_or("run_runbooks", "true") == "true" {
            for alert in group.alerts.iter().filter(|a| a.status == "firing") {
                if let Some(runbook) = lookup(&alert.annotations, "runbook") {
                    let labels: serde_json::Map<String, serde_json::Value> = alert
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), json!(v)))
                        .collect();
                    actions.push(Action::RunPipeline(PipelineRequest {
                        pipeline: runbook.to_string(),
                        params: json!({ "alert": labels, "fingerprint": alert.fingerprint })
                            .to_string(),
                    }));
                }
            }
        }
        Ok(actions)
    }
}

fn title(group: &AlertGroup) -> String {
    let name = lookup(&group.common_labels, "alertname")
        .or(lookup(&group.group_labels, "alertname"))
        .unwrap_or("alerts");
    let firing = group.alerts.iter().filter(|a| a.status == "firing").count();
    match group.status.as_str() {
        "resolved" => format!("RESOLVED: {name}"),
        _ => format!("FIRING ({firing}): {name}"),
    }
}

capstan_sdk::export_alert_handler!(AlertNotify);
