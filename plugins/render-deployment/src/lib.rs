//! Deploy step that renders a Kubernetes Deployment (and a Service when a
//! port is given) from a few parameters, validating them the way a reviewer
//! would: DNS-1123 names, pinned image tags, allowed registries, sane replicas.
//!
//! Params: `{"name", "image", "replicas"?, "namespace"?, "port"?, "env"?: {K: V}, "labels"?: {K: V},
//! "apply"?: bool, "dry_run"?: bool, "cluster"?}`.
//! Outputs: `manifest` (a JSON list of objects), `image`, `replicas`; with `apply`,
//! also `applied` (the objects as the cluster returned them).
//!
//! With `"apply": true` the objects are server-side applied to the cluster named
//! by the `cluster` param (default: the `cluster` setting), which needs a `[[grants.kube]]` for the namespace,
//! `apps/Deployment` (and `Service`) and the `apply` verb. `rollback` deletes
//! what `run` applied.

use std::collections::BTreeMap;

use capstan_sdk::deploy_step::{Context, DeployStep, Outcome, StepResult};
use capstan_sdk::{Error, config, kube, log};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    name: String,
    image: String,
    #[serde(default = "one")]
    replicas: u32,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    apply: bool,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    cluster: Option<String>,
}

impl Params {
    /// The cluster to apply to: the param, else the `cluster` setting.
    fn cluster(&self) -> String {
        self.cluster
            .clone()
            .unwrap_or_else(|| config::get_or("cluster", "default"))
    }
}

fn one() -> u32 {
    1
}

struct RenderDeployment;

impl DeployStep for RenderDeployment {
    fn run(ctx: Context, params: String) -> Result<StepResult, Error> {
        let p: Params = capstan_sdk::parse_json(&params)?;
        validate(&p)?;
        let objects = render(&p, &ctx);
        log::log(
            log::Level::Info,
            "rendered deployment",
            &[
                ("name", &p.name),
                ("image", &p.image),
                ("environment", &ctx.environment),
            ],
        );
        let mut outputs = vec![
            ("manifest".into(), Value::Array(objects.clone()).to_string()),
            ("image".into(), p.image.clone()),
            ("replicas".into(), p.replicas.to_string()),
        ];
        let mut message = format!(
            "rendered {} object(s) for {} ({} x {})",
            objects.len(),
            p.name,
            p.replicas,
            p.image
        );
        if p.apply {
            let cluster = p.cluster();
            let mut applied = Vec::new();
            for object in &objects {
                let answer = kube::apply(&cluster, &object.to_string(), p.dry_run)?;
                applied.push(serde_json::from_str::<Value>(&answer).unwrap_or(Value::Null));
            }
            let mode = if p.dry_run {
                "dry-run applied"
            } else {
                "applied"
            };
            message = format!(
                "{mode} {} object(s) for {} to cluster {cluster}",
                applied.len(),
                p.name
            );
            outputs.push(("applied".into(), Value::Array(applied).to_string()));
        }
        Ok(StepResult {
            outcome: Outcome::Succeeded,
            message,
            outputs,
        })
    }

    fn rollback(ctx: Context, params: String) -> Result<StepResult, Error> {
        let p: Params = capstan_sdk::parse_json(&params)?;
        if !p.apply {
            return Ok(StepResult {
                outcome: Outcome::Succeeded,
                message: "rendering has no side effects; nothing to roll back".into(),
                outputs: vec![],
            });
        }
        let cluster = p.cluster();
        let mut removed = 0;
        for object in render(&p, &ctx) {
            let target = kube::ObjectRef {
                cluster: cluster.clone(),
                api_version: object["apiVersion"].as_str().unwrap_or_default().into(),
                kind: object["kind"].as_str().unwrap_or_default().into(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            };
            match kube::delete(&target, p.dry_run) {
                Ok(()) => removed += 1,
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(StepResult {
            outcome: Outcome::Succeeded,
            message: format!("removed {removed} object(s) of {}", p.name),
            outputs: vec![],
        })
    }
}

capstan_sdk::export_deploy_step!(RenderDeployment);

fn invalid(msg: String) -> Error {
    Error::InvalidInput(msg)
}

fn validate(p: &Params) -> Result<(), Error> {
    if !capstan_sdk::is_dns_label(&p.name) {
        return Err(invalid(format!(
            "name `{}` is not a valid DNS-1123 label",
            p.name
        )));
    }
    if let Some(ns) = &p.namespace
        && !capstan_sdk::is_dns_label(ns)
    {
        return Err(invalid(format!(
            "namespace `{ns}` is not a valid DNS-1123 label"
        )));
    }
    let max: u32 = config::get_or("max_replicas", "50").parse().unwrap_or(50);
    if p.replicas > max {
        return Err(invalid(format!(
            "replicas {} exceeds the maximum of {max}",
            p.replicas
        )));
    }
    if p.image.is_empty() || p.image.contains(char::is_whitespace) {
        return Err(invalid(format!(
            "image `{}` is not a valid reference",
            p.image
        )));
    }
    let last = p.image.rsplit('/').next().unwrap_or_default();
    let pinned = p.image.contains("@sha256:") || last.contains(':') && !last.ends_with(":latest");
    if config::get_or("forbid_latest", "true") == "true" && !pinned {
        return Err(invalid(format!(
            "image `{}` must be pinned to a tag other than `latest` or a digest",
            p.image
        )));
    }
    let allowed = config::get_or("allowed_registries", "");
    let registries: Vec<&str> = allowed
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if !registries.is_empty()
        && !registries
            .iter()
            .any(|r| p.image.starts_with(&format!("{r}/")))
    {
        return Err(invalid(format!(
            "image `{}` is not from an allowed registry ({allowed})",
            p.image
        )));
    }
    for key in p.env.keys() {
        let ok = key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !key.starts_with(|c: char| c.is_ascii_digit());
        if key.is_empty() || !ok {
            return Err(invalid(format!("env var name `{key}` is not valid")));
        }
    }
    Ok(())
}

fn render(p: &Params, ctx: &Context) -> Vec<Value> {
    let mut labels = p.labels.clone();
    labels.insert("app.kubernetes.io/name".into(), p.name.clone());
    labels.insert("app.kubernetes.io/managed-by".into(), "capstan".into());
    let selector = json!({ "app.kubernetes.io/name": p.name });
    let env: Vec<Value> = p
        .env
        .iter()
        .map(|(k, v)| json!({ "name": k, "value": v }))
        .collect();
    let mut container = json!({ "name": p.name, "image": p.image, "env": env });
    if let Some(port) = p.port {
        container["ports"] = json!([{ "containerPort": port, "name": "http", "protocol": "TCP" }]);
    }
    let mut metadata = json!({
        "name": p.name,
        "labels": labels,
        "annotations": { "capstan.dev/pipeline": ctx.pipeline, "capstan.dev/run-id": ctx.run_id },
    });
    if let Some(ns) = &p.namespace {
        metadata["namespace"] = json!(ns);
    }
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": p.replicas,
            "selector": { "matchLabels": selector },
            "template": { "metadata": { "labels": labels }, "spec": { "containers": [container] } },
        },
    });
    let mut objects = vec![deployment];
    if let Some(port) = p.port {
        let mut meta = json!({ "name": p.name, "labels": labels });
        if let Some(ns) = &p.namespace {
            meta["namespace"] = json!(ns);
        }
        objects.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": { "selector": selector, "ports": [{ "port": port, "targetPort": "http", "name": "http", "protocol": "TCP" }] },
        }));
    }
    objects
}
