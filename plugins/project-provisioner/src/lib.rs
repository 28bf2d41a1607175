//! Provisioner of a KubeSphere-style team project, per environment:
//!
//! | wave | object | why |
//! |------|--------|-----|
//! | 0 | Namespace `<name>-<env>` labelled `kubesphere.io/workspace`, `kubesphere.io/namespace` and the project's labels | the project |
//! | 1 | LimitRange `project-defaults` | container defaults; the host applies it before the quota, so pods without requests are still admitted |
//! | 1 | ResourceQuota `project-quota`, with `<sc>.storageclass.storage.k8s.io/requests.storage` and `/persistentvolumeclaims` per StorageClass | |
//! | 1 | RoleBindings `project-admin`, `project-operator`, `project-viewer` of the groups to ClusterRoles `admin`, `edit`, `view` | |
//! | 1 | NetworkPolicy `default-deny` (all ingress) and `allow-ingress` (from the ingress controller's namespace and inside the project) | |
//! | 2 | PVC `data` on the named StorageClass, if asked for | |
//!
//! Each object carries its wave in the annotation `capstan.dev/wave`.
//!
//! Spec: `{"name", "team", "workspace"?, "environments"?: ["dev", ...],
//! "quota"?: {"cpu", "memory", "pods"}, "groups"?: {"admins": [..],
//! "operators": [..], "viewers": [..]}, "storage"?: {"class", "quota"?,
//! "claim"?}}` where `claim` is the size of the optional PVC.

use capstan_sdk::provisioner::{DesiredObject, ObjectRef, Plan, Provisioner, Report};
use capstan_sdk::{Error, config};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    name: String,
    team: String,
    #[serde(default)]
    workspace: Option<String>,
    #[serde(default = "default_envs")]
    environments: Vec<String>,
    #[serde(default)]
    quota: Option<Quota>,
    #[serde(default)]
    groups: Groups,
    #[serde(default)]
    storage: Option<Storage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Quota {
    cpu: String,
    memory: String,
    pods: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Groups {
    #[serde(default)]
    admins: Vec<String>,
    #[serde(default)]
    operators: Vec<String>,
    #[serde(default)]
    viewers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Storage {
    class: String,
    #[serde(default)]
    quota: Option<String>,
    #[serde(default)]
    claim: Option<String>,
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
    if let Some(s) = &spec.storage
        && !capstan_sdk::is_dns_label(&s.class)
    {
        return Err(Error::InvalidInput(format!(
            "storage class `{}` is not a valid name",
            s.class
        )));
    }
    Ok(spec)
}

fn object(namespace: Option<&str>, wave: u32, mut body: Value) -> DesiredObject {
    body["metadata"]["annotations"]["capstan.dev/wave"] = json!(wave.to_string());
    let text = |p: &str| {
        body.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    DesiredObject {
        api_version: text("/apiVersion"),
        kind: text("/kind"),
        namespace: namespace.map(str::to_string),
        name: text("/metadata/name"),
        wave,
        manifest: body.to_string(),
    }
}

fn group_subjects(groups: &[String]) -> Value {
    Value::Array(
        groups
            .iter()
            .map(|g| json!({ "kind": "Group", "name": g, "apiGroup": "rbac.authorization.k8s.io" }))
            .collect(),
    )
}

fn quota_of(spec: &Spec) -> (String, String, String) {
    spec.quota
        .as_ref()
        .map(|q| (q.cpu.clone(), q.memory.clone(), q.pods.to_string()))
        .unwrap_or_else(|| {
            (
                config::get_or("default_cpu", "4"),
                config::get_or("default_memory", "8Gi"),
                config::get_or("default_pods", "50"),
            )
        })
}

fn environment(spec: &Spec, env: &str, objects: &mut Vec<DesiredObject>) {
    let ns = format!("{}-{env}", spec.name);
    let workspace = spec.workspace.clone().unwrap_or_else(|| spec.team.clone());
    let labels = json!({ "capstan.dev/project": spec.name, "capstan.dev/team": spec.team,
        "capstan.dev/environment": env });
    let meta = |name: &str| json!({ "name": name, "namespace": ns, "labels": labels });
    let mut ns_labels = labels.clone();
    ns_labels["kubesphere.io/workspace"] = json!(workspace);
    ns_labels["kubesphere.io/namespace"] = json!(ns);
    objects.push(object(
        None,
        0,
        json!({ "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": ns, "labels": ns_labels,
            "annotations": { "kubesphere.io/creator": format!("capstan:{}", spec.team) } } }),
    ));
    objects.push(object(
        Some(&ns),
        1,
        json!({ "apiVersion": "v1", "kind": "LimitRange",
        "metadata": meta("project-defaults"),
        "spec": { "limits": [{ "type": "Container",
            "default": { "cpu": "500m", "memory": "512Mi" },
            "defaultRequest": { "cpu": "100m", "memory": "128Mi" } }] } }),
    ));
    let (cpu, memory, pods) = quota_of(spec);
    let mut hard = json!({ "requests.cpu": cpu, "requests.memory": memory, "pods": pods });
    if let Some(s) = &spec.storage {
        let q = s
            .quota
            .clone()
            .unwrap_or_else(|| config::get_or("default_storage", "100Gi"));
        hard[format!("{}.storageclass.storage.k8s.io/requests.storage", s.class)] = json!(q);
        hard[format!(
            "{}.storageclass.storage.k8s.io/persistentvolumeclaims",
            s.class
        )] = json!("10");
    }
    objects.push(object(
        Some(&ns),
        1,
        json!({ "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": meta("project-quota"), "spec": { "hard": hard } }),
    ));
    let operators: Vec<String> = if spec.groups.operators.is_empty() {
        vec![spec.team.clone()]
    } else {
        spec.groups.operators.clone()
    };
    for (role, cluster_role, groups) in [
        ("admin", "admin", &spec.groups.admins),
        ("operator", "edit", &operators),
        ("viewer", "view", &spec.groups.viewers),
    ] {
        if groups.is_empty() {
            continue;
        }
        objects.push(object(Some(&ns), 1, json!({ "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding", "metadata": meta(&format!("project-{role}")),
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role },
            "subjects": group_subjects(groups) })));
    }
    objects.push(object(
        Some(&ns),
        1,
        json!({ "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": meta("default-deny"),
        "spec": { "podSelector": {}, "policyTypes": ["Ingress"] } }),
    ));
    let ingress_ns = config::get_or("ingress_namespace", "kubesphere-controls-system");
    objects.push(object(
        Some(&ns),
        1,
        json!({ "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": meta("allow-ingress"),
        "spec": { "podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{ "from": [
            { "namespaceSelector": { "matchLabels": { "kubesphere.io/namespace": ingress_ns } } },
            { "podSelector": {} },
        ] }] } }),
    ));
    if let Some(s) = &spec.storage
        && let Some(size) = &s.claim
    {
        objects.push(object(
            Some(&ns),
            2,
            json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": meta("data"),
            "spec": { "accessModes": ["ReadWriteOnce"], "storageClassName": s.class,
                "resources": { "requests": { "storage": size } } } }),
        ));
    }
}

fn plan_for(spec: &Spec) -> Plan {
    let mut objects = Vec::new();
    for env in &spec.environments {
        environment(spec, env, &mut objects);
    }
    let mut notes = Vec::new();
    if spec.quota.is_none() {
        let (cpu, memory, pods) = quota_of(spec);
        notes.push(format!(
            "no quota given; using defaults cpu={cpu} memory={memory} pods={pods}"
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
            notes: vec![
                "objects are applied by the host's provisioning engine (`capstan provision`)"
                    .into(),
            ],
        })
    }

    fn destroy(spec: String, dry_run: bool) -> Result<Report, Error> {
        let mut plan = plan_for(&parse(&spec)?);
        plan.objects.reverse();
        Ok(Report {
            objects: refs(&plan),
            dry_run,
            notes: vec![
                "objects are removed in reverse wave order by the host's provisioning engine"
                    .into(),
            ],
        })
    }
}

capstan_sdk::export_provisioner!(ProjectProvisioner);
