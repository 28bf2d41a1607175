//! Deploy step that makes one HTTP request: a smoke check or a notification.
//!
//! Params (JSON):
//! - `url`, or `url_secret`: the name of a secret holding the URL (webhook
//!   URLs carry their token in the path);
//! - `method`: `GET` (default) or `POST`; `json`: a body to POST as JSON;
//!   `headers`: extra request headers;
//! - `expect_status`: the status (or list of statuses) that counts as
//!   success, default any 2xx; `expect_body`: text the body must contain;
//! - `retry_ms`: when set, a wrong answer (or a refused connection) answers
//!   `retry-after(retry_ms)` instead of failing, so the pipeline waits for
//!   the service to come up, bounded by the step's timeout.
//!
//! Outputs: `status`, `body` (its first 512 bytes). A call outside the
//! plugin's `[grants.http]` fails as denied, whatever `retry_ms` says.

use capstan_sdk::deploy_step::{Context, DeployStep, Outcome, StepResult};
use capstan_sdk::{Error, http, log, secrets};
use serde::Deserialize;
use serde_json::Value;

/// Body bytes kept as the `body` output.
const BODY_OUTPUT: usize = 512;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    url_secret: Option<String>,
    #[serde(default = "get")]
    method: String,
    #[serde(default)]
    json: Option<Value>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    expect_status: Option<Value>,
    #[serde(default)]
    expect_body: Option<String>,
    #[serde(default)]
    retry_ms: Option<u64>,
}

fn get() -> String {
    "GET".into()
}

impl Params {
    fn url(&self) -> Result<String, Error> {
        match (&self.url, &self.url_secret) {
            (Some(url), None) => Ok(url.clone()),
            (None, Some(name)) => secrets::get(name),
            _ => Err(Error::InvalidInput(
                "give exactly one of `url` and `url_secret`".into(),
            )),
        }
    }

    fn status_ok(&self, status: u16) -> Result<bool, Error> {
        match &self.expect_status {
            None => Ok((200..300).contains(&status)),
            Some(Value::Number(n)) => Ok(n.as_u64() == Some(u64::from(status))),
            Some(Value::Array(list)) => {
                Ok(list.iter().any(|n| n.as_u64() == Some(u64::from(status))))
            }
            Some(other) => Err(Error::InvalidInput(format!(
                "`expect_status` is {other}; expected a status or a list of statuses"
            ))),
        }
    }
}

struct HttpStep;

impl DeployStep for HttpStep {
    fn run(ctx: Context, params: String) -> Result<StepResult, Error> {
        let p: Params = capstan_sdk::parse_json(&params)?;
        let method = p.method.to_ascii_uppercase();
        if method != "GET" && method != "POST" {
            return Err(Error::InvalidInput(format!(
                "`method` is {method}; expected GET or POST"
            )));
        }
        let url = p.url()?;
        let body = p.json.as_ref().map(Value::to_string).unwrap_or_default();
        let mut headers: Vec<(&str, &str)> = p
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if p.json.is_some() {
            headers.push(("content-type", "application/json"));
        }
        // The idempotency key lets a receiver drop a resent notification.
        let key = format!("{}/{}", ctx.run_id, ctx.step);
        headers.push(("idempotency-key", &key));
        let answer = match http::request(&method, &url, &headers, body.as_bytes()) {
            Ok(r) => r,
            Err(Error::Denied(m)) => return Err(Error::Denied(m)),
            Err(e) => return wrong(&p, format!("{method} failed: {e}")),
        };
        let text = answer.text();
        let excerpt: String = text.chars().take(BODY_OUTPUT).collect();
        if !p.status_ok(answer.status)? {
            return wrong(
                &p,
                format!("{method} answered {}: {excerpt}", answer.status),
            );
        }
        if let Some(want) = &p.expect_body
            && !text.contains(want.as_str())
        {
            return wrong(&p, format!("the body lacks {want:?}: {excerpt}"));
        }
        log::info(&format!("{method} answered {}", answer.status));
        Ok(StepResult {
            outcome: Outcome::Succeeded,
            message: format!("{method} answered {}", answer.status),
            outputs: vec![
                ("status".into(), answer.status.to_string()),
                ("body".into(), excerpt),
            ],
        })
    }

    fn rollback(_ctx: Context, _params: String) -> Result<StepResult, Error> {
        Ok(StepResult {
            outcome: Outcome::Succeeded,
            message: "a request has nothing to undo".into(),
            outputs: vec![],
        })
    }
}

/// A wrong answer: wait and ask again when `retry_ms` is set, else fail.
fn wrong(p: &Params, message: String) -> Result<StepResult, Error> {
    log::warn(&message);
    Ok(StepResult {
        outcome: match p.retry_ms {
            Some(ms) => Outcome::RetryAfter(ms),
            None => Outcome::Failed,
        },
        message,
        outputs: vec![],
    })
}

capstan_sdk::export_deploy_step!(HttpStep);
