//! Test guest: a provisioner whose plan is its spec. The spec is
//! `{"objects": [{"wave": n, "manifest": {...}}, ...], "labels"?: {..}}`;
//! each manifest is returned as a desired object (apiVersion, kind, name
//! and namespace read from it) in its wave, and `labels` become the owner
//! labels. Tests use it to put exactly the objects they need in a plan.

use capstan_sdk::Error;
use capstan_sdk::provisioner::{DesiredObject, ObjectRef, Plan, Provisioner, Report};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct Spec {
    objects: Vec<Entry>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    wave: u32,
    manifest: Value,
}

fn field(v: &Value, ptr: &str) -> Option<String> {
    v.pointer(ptr).and_then(Value::as_str).map(str::to_string)
}

fn plan(spec: &str) -> Result<Plan, Error> {
    let spec: Spec = capstan_sdk::parse_json(spec)?;
    let mut objects = Vec::new();
    for e in spec.objects {
        let need = |p: &str| {
            field(&e.manifest, p)
                .ok_or_else(|| Error::InvalidInput(format!("manifest without {p}")))
        };
        objects.push(DesiredObject {
            api_version: need("/apiVersion")?,
            kind: need("/kind")?,
            namespace: field(&e.manifest, "/metadata/namespace"),
            name: need("/metadata/name")?,
            wave: e.wave,
            manifest: e.manifest.to_string(),
        });
    }
    Ok(Plan {
        objects,
        owner_labels: spec.labels.into_iter().collect(),
        notes: vec![],
    })
}

struct Echo;

impl Provisioner for Echo {
    fn plan(spec: String) -> Result<Plan, Error> {
        plan(&spec)
    }

    fn apply(spec: String, dry_run: bool) -> Result<Report, Error> {
        let p = plan(&spec)?;
        Ok(Report {
            objects: p
                .objects
                .iter()
                .map(|o| ObjectRef {
                    api_version: o.api_version.clone(),
                    kind: o.kind.clone(),
                    namespace: o.namespace.clone(),
                    name: o.name.clone(),
                })
                .collect(),
            dry_run,
            notes: vec![],
        })
    }

    fn destroy(spec: String, dry_run: bool) -> Result<Report, Error> {
        Self::apply(spec, dry_run)
    }
}

capstan_sdk::export_provisioner!(Echo);
