//! `capstan plugin new`: a ready-to-build plugin crate for a role.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::manifest::{Role, validate_name};

/// Creates `<dir>/<name>/` with Cargo.toml, capstan.toml and src/lib.rs.
pub fn new_plugin(
    role: Role,
    name: &str,
    dir: &Path,
    sdk: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    validate_name(name)?;
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let sdk = match sdk {
        Some(p) => p.to_path_buf(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk"),
    };
    let sdk = sdk
        .canonicalize()
        .with_context(|| format!("capstan-sdk not found at {}; pass --sdk", sdk.display()))?;
    std::fs::create_dir_all(root.join("src"))?;
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
capstan-sdk = {{ path = {sdk:?} }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

# A plugin is its own workspace.
[workspace]

[profile.release]
opt-level = "s"
lto = true
strip = true
"#,
        sdk = sdk.display().to_string()
    );
    let manifest = format!(
        r#"name = "{name}"
version = "0.1.0"
role = "{role}"
description = "TODO: say what {name} does"
component = "{file}.wasm"

[settings]

[limits]
memory_mb = 32
deadline_ms = 2000
"#,
        file = name.replace('-', "_")
    );
    std::fs::write(root.join("Cargo.toml"), cargo)?;
    std::fs::write(root.join("capstan.toml"), manifest)?;
    std::fs::write(root.join("src").join("lib.rs"), template(role))?;
    Ok(root)
}

fn template(role: Role) -> &'static str {
    match role {
        Role::DeployStep => {
            r#"//! A Capstan deploy step.

use capstan_sdk::deploy_step::{Context, DeployStep, Outcome, StepResult};
use capstan_sdk::{Error, log};

struct Step;

impl DeployStep for Step {
    fn run(ctx: Context, params: String) -> Result<StepResult, Error> {
        let params: serde_json::Value = capstan_sdk::parse_json(&params)?;
        log::info(&format!("running {} in {}", ctx.step, ctx.environment));
        Ok(StepResult {
            outcome: Outcome::Succeeded,
            message: format!("done with {params}"),
            outputs: vec![("echo".into(), params.to_string())],
        })
    }

    fn rollback(_ctx: Context, _params: String) -> Result<StepResult, Error> {
        Ok(StepResult { outcome: Outcome::Succeeded, message: "nothing to undo".into(), outputs: vec![] })
    }
}

capstan_sdk::export_deploy_step!(Step);
"#
        }
        Role::Provisioner => {
            r#"//! A Capstan provisioner.

use capstan_sdk::provisioner::{DesiredObject, Plan, Provisioner, Report};
use capstan_sdk::Error;

struct Prov;

#[derive(serde::Deserialize)]
struct Spec {
    name: String,
}

impl Provisioner for Prov {
    fn plan(spec: String) -> Result<Plan, Error> {
        let spec: Spec = capstan_sdk::parse_json(&spec)?;
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": spec.name}});
        Ok(Plan {
            objects: vec![DesiredObject {
                api_version: "v1".into(),
                kind: "Namespace".into(),
                namespace: None,
                name: spec.name.clone(),
                wave: 0,
                manifest: ns.to_string(),
            }],
            owner_labels: vec![],
            notes: vec![],
        })
    }

    fn apply(_spec: String, dry_run: bool) -> Result<Report, Error> {
        Ok(Report { objects: vec![], dry_run, notes: vec![] })
    }

    fn destroy(_spec: String, dry_run: bool) -> Result<Report, Error> {
        Ok(Report { objects: vec![], dry_run, notes: vec![] })
    }
}

capstan_sdk::export_provisioner!(Prov);
"#
        }
        Role::MetricsSource => {
            r#"//! A Capstan metrics source.

use capstan_sdk::metrics_source::{MetricFamily, MetricType, MetricsSource, Sample};
use capstan_sdk::Error;

struct Source;

impl MetricsSource for Source {
    fn collect() -> Result<Vec<MetricFamily>, Error> {
        Ok(vec![MetricFamily {
            name: "up".into(),
            help: "Always 1".into(),
            kind: MetricType::Gauge,
            samples: vec![Sample { labels: vec![], value: 1.0 }],
        }])
    }
}

capstan_sdk::export_metrics_source!(Source);
"#
        }
        Role::AlertHandler => {
            r#"//! A Capstan alert handler.

use capstan_sdk::alert_handler::{Action, AlertGroup, AlertHandler, Notification};
use capstan_sdk::Error;

struct Handler;

impl AlertHandler for Handler {
    fn handle(group: AlertGroup) -> Result<Vec<Action>, Error> {
        let text = format!("{} alert(s): {}", group.alerts.len(), group.status);
        Ok(vec![Action::Notify(Notification {
            channel: "ops".into(),
            format: "text".into(),
            body: serde_json::json!({ "text": text }).to_string(),
        })])
    }
}

capstan_sdk::export_alert_handler!(Handler);
"#
        }
    }
}
