//! Provisioner that turns a project spec into the objects a team needs on
//! Kubernetes: per environment a Namespace (wave 0), then a ResourceQuota, a
//! LimitRange and a RoleBinding of the team's group to `edit` (wave 1).
//!
//! Spec: `{"name", "team", "environments"?: ["dev", ...], "quota"?: {"cpu", "memory", "pods"},
//! "admins"?: ["group", ...]}`.

use capstan_sdk::provisioner::{DesiredObject, ObjectRef, Plan, Provisioner, Report};
use capstan_sdk::{Error, config};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    name: String,
    team: String,
    #[serde(default = "default_envs")]
    environments: Vec<String>,
    #[serde(default)]
    quota: Option<Quota>,
    #[serde(default)]
    admins: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Quota {
    cpu: String,
    memory: String,
    pods: u32,
}

fn default_envs() -> Vec<String> {
    vec!["dev".into()]
}

fn parse(spec: &str) -> Result<Spec, Error> {
    let spec: Spec = capstan_sdk::parse_json(spec)?;
    for (what, v) in [("name", &spec.name), ("team", &spec.team)] {
        if !capstan_sdk::is_dns_label(v) {
            return Err(Error::InvalidInput(format!(
                "{what} `{v}` is not a valid DNS-1123 label"
            )));
        }
    }
    if spec.environments.is_empty() {
        return Err(Error::InvalidInput("environments must not be empty".into()));
    }
    for env in &spec.environments {
        let ns = format!("{}-{env}", spec.name);
        if !capstan_sdk::is_dns_label(&ns) {
            return Err(Error::InvalidInput(format!(
                "namespace `{ns}` for environment `{env}` is not a valid DNS-1123 label"
            )));
        }
    }
    Ok(spec)
}

fn object(
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    wave: u32,
    body: Value,
) -> DesiredObject {
    DesiredObject {
        api_version: api_version.into(),
        kind: kind.into(),
        namespace: namespace.map(str::to_string),
        name: name.into(),
        wave,
        manifest: body.to_string(),
    }
}

fn plan_for(spec: &Spec) -> Plan {
    let quota = spec
        .quota
        .as_ref()
        .map(|q| (q.cpu.clone(), q.memory.clone(), q.pods.to_string()))
        .unwrap_or_else(|| {
            (
                config::get_or("default_cpu", "4"),
                config::get_or("default_memory", "8Gi"),
                config::get_or("default_pods", "50"),
            )
        });
    let labels = json!({ "capstan.dev/project": spec.name, "capstan.dev/team": spec.team });
    let mut objects = Vec::new();
    for env in &spec.environments {
        let ns = format!("{}-{env}", spec.name);
        let mut ns_labels = labels.clone();
        ns_labels["capstan.dev/environment"] = json!(env);
        let meta = |name: &str| json!({ "name": name, "namespace": ns, "labels": labels });
        objects.push(object("v1", "Namespace", None, &ns, 0, json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns, "labels": ns_labels },
        })));
        objects.push(object("v1", "ResourceQuota", Some(&ns), "project-quota", 1, json!({
            "apiVersion": "v1", "kind": "ResourceQuota", "metadata": meta("project-quota"),
            "spec": { "hard": { "requests.cpu": quota.0, "requests.memory": quota.1, "pods": quota.2 } },
        })));
        objects.push(object(
            "v1",
            "LimitRange",
            Some(&ns),
            "project-defaults",
            1,
            json!({
                "apiVersion": "v1", "kind": "LimitRange", "metadata": meta("project-defaults"),
                "spec": { "limits": [{ "type": "Container",
                    "default": { "cpu": "500m", "memory": "512Mi" },
                    "defaultRequest": { "cpu": "100m", "memory": "128Mi" } }] },
            }),
        ));
        let mut subjects = vec![
            json!({ "kind": "Group", "name": spec.team, "apiGroup": "rbac.authorization.k8s.io" }),
        ];
        subjects.extend(spec.admins.iter().map(
            |g| json!({ "kind": "Group", "name": g, "apiGroup": "rbac.authorization.k8s.io" }),
        ));
        objects.push(object("rbac.authorization.k8s.io/v1", "RoleBinding", Some(&ns), "team-edit", 1, json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta("team-edit"),
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit" },
            "subjects": subjects,
        })));
    }
    let mut notes = Vec::new();
    if spec.quota.is_none() {
        notes.push(format!(
            "no quota given; using defaults cpu={} memory={} pods={}",
            quota.0, quota.1, quota.2
        ));
    }
    Plan {
        objects,
        owner_labels: vec![("capstan.dev/project".into(), spec.name.clone())],
        notes,
    }
}

fn refs(plan: &Plan) -> Vec<ObjectRef> {
    plan.objects
        .iter()
        .map(|o| ObjectRef {
            api_version: o.api_version.clone(),
            kind: o.kind.clone(),
            namespace: o.namespace.clone(),
            name: o.name.clone(),
        })
        .collect()
}

struct ProjectProvisioner;

impl Provisioner for ProjectProvisioner {
    fn plan(spec: String) -> Result<Plan, Error> {
        Ok(plan_for(&parse(&spec)?))
    }

    fn apply(spec: String, dry_run: bool) -> Result<Report, Error> {
        let plan = plan_for(&parse(&spec)?);
        Ok(Report {
            objects: refs(&plan),
            dry_run,
            notes: vec!["objects are applied by the host's plan engine from `plan`".into()],
        })
    }

    fn destroy(spec: String, dry_run: bool) -> Result<Report, Error> {
        let mut plan = plan_for(&parse(&spec)?);
        plan.objects.reverse();
        Ok(Report {
            objects: refs(&plan),
            dry_run,
            notes: vec!["objects are removed in reverse wave order".into()],
        })
    }
}

capstan_sdk::export_provisioner!(ProjectProvisioner);
