//! Deploy step that checks a Deployment's rollout once per call and answers
//! `retry-after` until it is complete, so the pipeline (not the plugin) waits.
//!
//! Params: `{"name", "namespace", "cluster"?}` (default cluster: the
//! `cluster` setting). Outputs: `updated`, `available`, `desired`.

use capstan_sdk::deploy_step::{Context, DeployStep, Outcome, StepResult};
use capstan_sdk::{Error, config, kube};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    name: String,
    namespace: String,
    #[serde(default)]
    cluster: Option<String>,
}

struct WaitRollout;

impl DeployStep for WaitRollout {
    fn run(_ctx: Context, params: String) -> Result<StepResult, Error> {
        let p: Params = capstan_sdk::parse_json(&params)?;
        let cluster = p
            .cluster
            .clone()
            .unwrap_or_else(|| config::get_or("cluster", "default"));
        let r = kube::rollout_status(&cluster, &p.namespace, &p.name)?;
        let poll: u64 = config::get_or("poll_ms", "2000").parse().unwrap_or(2000);
        Ok(StepResult {
            outcome: if r.complete {
                Outcome::Succeeded
            } else {
                Outcome::RetryAfter(poll)
            },
            message: format!("{}/{}: {}", p.namespace, p.name, r.message),
            outputs: vec![
                ("desired".into(), r.desired.to_string()),
                ("updated".into(), r.updated.to_string()),
                ("available".into(), r.available.to_string()),
            ],
        })
    }

    fn rollback(_ctx: Context, _params: String) -> Result<StepResult, Error> {
        Ok(StepResult {
            outcome: Outcome::Succeeded,
            message: "waiting has nothing to undo".into(),
            outputs: vec![],
        })
    }
}

capstan_sdk::export_deploy_step!(WaitRollout);
