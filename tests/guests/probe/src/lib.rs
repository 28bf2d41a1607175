//! Test guest: a deploy step that uses one capability per call, as told by
//! `params.op`, and reports what the host answered. Hostile tests use it to
//! try every escape route; the result carries the host's error verbatim.
//!
//! Output `result` is `ok:<value>` or `err:<Kind>: <message>`; op
//! `kube-apply-checked` answers a field-manager conflict as
//! `conflict:[{"manager":..,"field":..}]`.

use capstan_sdk::deploy_step::{Context, DeployStep, Outcome, StepResult};
use capstan_sdk::{Error, fs, http, kube, kv, secrets};
use serde_json::Value;

struct Probe;

fn s(p: &Value, k: &str) -> String {
    p[k].as_str().unwrap_or_default().to_string()
}

fn object_ref(p: &Value) -> kube::ObjectRef {
    kube::ObjectRef {
        cluster: s(p, "cluster"),
        api_version: s(p, "api_version"),
        kind: s(p, "kind"),
        namespace: p["namespace"].as_str().map(str::to_string),
        name: s(p, "name"),
    }
}

fn op(p: &Value) -> Result<String, Error> {
    let bytes = |k: &str| s(p, k).into_bytes();
    match s(p, "op").as_str() {
        "kv-get" => Ok(kv::get(&s(p, "key"))?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_else(|| "<none>".into())),
        "kv-set" => kv::set(&s(p, "key"), &bytes("value")).map(|()| "set".into()),
        "kv-set-if-absent" => {
            kv::set_if_absent(&s(p, "key"), &bytes("value")).map(|b| b.to_string())
        }
        "kv-delete" => kv::delete(&s(p, "key")).map(|b| b.to_string()),
        "kv-list" => kv::list_keys(&s(p, "prefix")).map(|k| k.join(",")),
        "secret" => secrets::get(&s(p, "name")),
        "secret-echo" => secrets::get(&s(p, "name")).map(|v| format!("the secret is {v}")),
        "fs-read" => fs::read_file(&s(p, "path")).map(|b| String::from_utf8_lossy(&b).into_owned()),
        "fs-write" => fs::write_file(&s(p, "path"), &bytes("data")).map(|()| "written".into()),
        "fs-list" => fs::list_dir(&s(p, "path")).map(|n| n.join(",")),
        "fs-remove" => fs::remove_file(&s(p, "path")).map(|()| "removed".into()),
        "std-read" => {
            std::fs::read_to_string(s(p, "path")).map_err(|e| Error::Denied(e.to_string()))
        }
        "http-get" => http::get(&s(p, "url")).map(|r| format!("{} {}", r.status, r.text())),
        "http-cert-expiry" => http::get(&s(p, "url"))
            .map(|r| format!("{} {:?}", r.status, r.tls_earliest_cert_expiry())),
        "http-get-secret-path" => {
            let path = secrets::get(&s(p, "name"))?;
            http::get(&format!("{}{path}", s(p, "url")))
                .map(|r| format!("{} {}", r.status, r.text()))
        }
        "kube-get" => kube::get(&object_ref(p)),
        "kube-list" => kube::list(
            &s(p, "cluster"),
            &s(p, "api_version"),
            &s(p, "kind"),
            p["namespace"].as_str(),
            &s(p, "selector"),
        ),
        "kube-apply" => kube::apply(
            &s(p, "cluster"),
            &p["manifest"].to_string(),
            p["dry_run"].as_bool().unwrap_or(false),
        ),
        "kube-patch" => kube::patch(
            &object_ref(p),
            &p["patch"].to_string(),
            p["dry_run"].as_bool().unwrap_or(false),
        ),
        "kube-delete" => kube::delete(&object_ref(p), p["dry_run"].as_bool().unwrap_or(false))
            .map(|()| "deleted".into()),
        "kube-rollout" => kube::rollout_status(&s(p, "cluster"), &s(p, "namespace"), &s(p, "name"))
            .map(|r| {
                format!(
                    "complete={} updated={}/{} message={}",
                    r.complete, r.updated, r.desired, r.message
                )
            }),
        other => Err(Error::InvalidInput(format!("unknown op `{other}`"))),
    }
}

fn err_text(e: Error) -> String {
    let (kind, msg) = match e {
        Error::InvalidInput(m) => ("InvalidInput", m),
        Error::Denied(m) => ("Denied", m),
        Error::NotFound(m) => ("NotFound", m),
        Error::Failed(m) => ("Failed", m),
        Error::Retryable(m) => ("Retryable", m),
    };
    format!("err:{kind}: {msg}")
}

fn apply_checked(p: &Value) -> String {
    let answer = kube::apply_checked(
        &s(p, "cluster"),
        &p["manifest"].to_string(),
        p["dry_run"].as_bool().unwrap_or(false),
    );
    match answer {
        Ok(v) => format!("ok:{v}"),
        Err(kube::ApplyError::Conflict(owned)) => {
            let owned: Vec<Value> = owned
                .iter()
                .map(|c| serde_json::json!({ "manager": c.manager, "field": c.field }))
                .collect();
            format!("conflict:{}", Value::from(owned))
        }
        Err(kube::ApplyError::Error(e)) => err_text(e),
    }
}

impl DeployStep for Probe {
    fn run(_ctx: Context, params: String) -> Result<StepResult, Error> {
        let p: Value = capstan_sdk::parse_json(&params)?;
        let result = if s(&p, "op") == "kube-apply-checked" {
            apply_checked(&p)
        } else {
            op(&p).map_or_else(err_text, |v| format!("ok:{v}"))
        };
        Ok(StepResult {
            outcome: Outcome::Succeeded,
            message: result.clone(),
            outputs: vec![("result".into(), result)],
        })
    }

    fn rollback(_ctx: Context, _params: String) -> Result<StepResult, Error> {
        Ok(StepResult {
            outcome: Outcome::Succeeded,
            message: String::new(),
            outputs: vec![],
        })
    }
}

capstan_sdk::export_deploy_step!(Probe);
