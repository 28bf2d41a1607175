//! Planning: the plugin's desired objects, the grant check (every object,
//! before anything is sent), then per object discovery, a server-side apply
//! dry-run and a normalized diff against the live object; members of the
//! set that are no longer desired become prune entries when the inventory
//! holds their UID, and are reported as kept otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use capstan_registry::trust::{Authority, Role};
use capstan_runtime::capabilities::kube::Verb;
use capstan_runtime::runtime::{Call, InvokeError, Output};
use capstan_store::{ids, unix_millis};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Engine, ProvisionError, require};
use crate::applyset;
use crate::kube::{Granted, KubeError, is_immutable};
use crate::model::{Instance, ObjectRef, Plan, PlanObject, Verdict};
use crate::normalize::diff;
use crate::order;
use crate::store::Member;

/// One desired object, labelled as a member of the set.
#[derive(Debug, Clone)]
pub(super) struct Desired {
    pub object: ObjectRef,
    pub wave: u32,
    pub step: u32,
    pub body: Value,
    pub sha: String,
}

fn sha(v: &Value) -> String {
    let digest = Sha256::digest(v.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn parent_ref(name: &str, namespace: &str) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some(namespace.into()),
        name: format!("capstan-applyset-{name}"),
    }
}

/// The set id of a parent ConfigMap.
pub(super) fn set_id(parent: &ObjectRef) -> String {
    applyset::id(
        &parent.name,
        parent.namespace.as_deref().unwrap_or(""),
        "ConfigMap",
        "",
    )
}

fn same_object(a: &ObjectRef, b: &ObjectRef) -> bool {
    a.group_kind() == b.group_kind() && a.namespace == b.namespace && a.name == b.name
}

impl Engine {
    /// The plugin's desired objects for `spec`, with the parent of the set
    /// (kept from the last applied plan; else a ConfigMap in the first
    /// Namespace the plan creates, or the first namespace it uses).
    pub(super) async fn desired(
        &self,
        i: &Instance,
        spec: &Value,
    ) -> Result<(Vec<Desired>, ObjectRef, Vec<String>), ProvisionError> {
        let call = Call::Plan {
            spec: spec.to_string(),
        };
        let out = match self.registry.invoke(&i.plugin, call).await {
            Ok((Output::Plan(p), _, _)) => p,
            Ok((other, _, _)) => {
                return Err(ProvisionError::Failed(format!(
                    "plugin `{}` answered {other:?}, not a plan",
                    i.plugin
                )));
            }
            Err(capstan_registry::registry::RegistryError::Invoke(InvokeError::Plugin(e)))
                if e.kind == "invalid-input" =>
            {
                return Err(ProvisionError::Invalid(format!(
                    "{}: {}",
                    i.plugin, e.message
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let mut raw = Vec::new();
        for o in out.objects {
            let body: Value = serde_json::from_str(&o.manifest).map_err(|e| {
                ProvisionError::Invalid(format!("{} {}: manifest is not JSON: {e}", o.kind, o.name))
            })?;
            let object = ObjectRef {
                api_version: o.api_version,
                kind: o.kind,
                namespace: o.namespace.filter(|n| !n.is_empty()),
                name: o.name,
            };
            let field = |p: &str| body.pointer(p).and_then(Value::as_str).map(str::to_string);
            let agrees = field("/apiVersion").as_deref() == Some(&object.api_version)
                && field("/kind").as_deref() == Some(&object.kind)
                && field("/metadata/name").as_deref() == Some(&object.name)
                && field("/metadata/namespace") == object.namespace;
            if !agrees {
                return Err(ProvisionError::Invalid(format!(
                    "{}: the manifest's apiVersion, kind, metadata.name and metadata.namespace \
                     must be those of the object record",
                    object.label()
                )));
            }
            if body
                .pointer(&format!(
                    "/metadata/labels/{}",
                    applyset::PART_OF.replace('/', "~1")
                ))
                .is_some()
            {
                return Err(ProvisionError::Invalid(format!(
                    "{}: carries {} already; the engine sets it",
                    object.label(),
                    applyset::PART_OF
                )));
            }
            let step = order::step(o.wave, &object.kind);
            raw.push((object, o.wave, step, body));
        }
        raw.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
        let parent = match self.last_applied(&i.name)? {
            Some(p) => p.parent,
            None => {
                let ns = raw
                    .iter()
                    .find(|(o, ..)| o.kind == "Namespace" && o.api_version == "v1")
                    .map(|(o, ..)| o.name.clone())
                    .or_else(|| raw.iter().find_map(|(o, ..)| o.namespace.clone()))
                    .ok_or_else(|| {
                        ProvisionError::Invalid(
                            "the plan has no namespace to keep the ApplySet parent in".into(),
                        )
                    })?;
                parent_ref(&i.name, &ns)
            }
        };
        let id = set_id(&parent);
        let objects = raw
            .into_iter()
            .map(|(object, wave, step, mut body)| {
                applyset::label_member(&mut body, &id, &out.owner_labels);
                let sha = sha(&body);
                Desired {
                    object,
                    wave,
                    step,
                    body,
                    sha,
                }
            })
            .collect();
        Ok((objects, parent, out.notes))
    }

    pub(super) fn last_applied(&self, name: &str) -> Result<Option<Plan>, ProvisionError> {
        Ok(self
            .db
            .plans(name, 200)?
            .into_iter()
            .find(|p| p.state == "applied" || p.state == "applying"))
    }

    /// Plans the instance's current spec and stores the plan.
    pub async fn plan(
        self: &Arc<Self>,
        name: &str,
        who: &Authority,
    ) -> Result<Plan, ProvisionError> {
        let (i, members) = self.get_instance(name)?;
        require(who, &i.project, Role::Operator, "plan provisions")?;
        let plan = self.compute(&i, &members, &who.actor).await?;
        self.db.save_plan(&plan)?;
        Ok(plan)
    }

    /// Computes a plan (not stored).
    pub(super) async fn compute(
        &self,
        i: &Instance,
        members: &[Member],
        by: &str,
    ) -> Result<Plan, ProvisionError> {
        let (desired, parent, notes) = self.desired(i, &i.spec).await?;
        let (g, version, digest) = self.granted(i).await?;
        check_grants(&g, &desired, &parent)?;
        let live_parent = g.get(&parent).await?;
        let (recorded_gks, recorded_nss) = live_parent
            .as_ref()
            .map(applyset::recorded)
            .unwrap_or_default();
        let mut objects = Vec::new();
        let mut pending_namespaces = BTreeSet::new();
        for d in &desired {
            let po = plan_object(&g, d, &pending_namespaces, &desired).await?;
            if d.object.kind == "Namespace" && po.live_uid.is_none() {
                pending_namespaces.insert(d.object.name.clone());
            }
            objects.push(po);
        }
        let id = set_id(&parent);
        let mut gks: BTreeSet<String> = recorded_gks;
        let mut nss: BTreeSet<String> = recorded_nss;
        for m in members {
            gks.insert(m.object.group_kind());
            nss.extend(m.object.namespace.clone());
        }
        for d in &desired {
            gks.insert(d.object.group_kind());
            nss.extend(d.object.namespace.clone());
        }
        let (prune, kept) = prune_candidates(
            &g,
            &id,
            &gks,
            &nss,
            &desired,
            &parent,
            members,
            &pending_namespaces,
        )
        .await?;
        objects.extend(prune);
        let mut summary = BTreeMap::new();
        for o in &objects {
            *summary.entry(o.verdict.as_str().to_string()).or_insert(0) += 1;
        }
        Ok(Plan {
            id: ids::new_id(),
            instance: i.name.clone(),
            revision: i.revision,
            cluster: i.cluster.clone(),
            plugin: i.plugin.clone(),
            plugin_version: version,
            plugin_digest: digest,
            applyset: id,
            parent,
            objects,
            kept,
            notes,
            summary,
            state: "planned".into(),
            approval: None,
            created_by: by.into(),
            created_ms: unix_millis(),
        })
    }
}

/// Every object, the parent, and listing the set, under the grants; all
/// denials at once, before any call is sent.
fn check_grants(
    g: &Granted,
    desired: &[Desired],
    parent: &ObjectRef,
) -> Result<(), ProvisionError> {
    let mut denied = Vec::new();
    let mut checks: Vec<(&ObjectRef, Verb)> = Vec::new();
    for d in desired {
        checks.push((&d.object, Verb::Get));
        checks.push((&d.object, Verb::Apply));
        checks.push((&d.object, Verb::List));
    }
    checks.push((parent, Verb::Get));
    checks.push((parent, Verb::Apply));
    for (o, verb) in checks {
        if let Err(KubeError::Denied(why)) = g.check(o, verb)
            && !denied.contains(&why)
        {
            denied.push(why);
        }
    }
    if denied.is_empty() {
        return Ok(());
    }
    Err(ProvisionError::OutsideGrant {
        message: format!(
            "the plan names {} request(s) outside the provisioner's grants; nothing was sent: {}",
            denied.len(),
            denied.join("; ")
        ),
        details: json!({ "denied": denied }),
    })
}

async fn plan_object(
    g: &Granted,
    d: &Desired,
    pending_namespaces: &BTreeSet<String>,
    all: &[Desired],
) -> Result<PlanObject, ProvisionError> {
    let mut po = PlanObject {
        object: d.object.clone(),
        wave: d.wave,
        step: d.step,
        verdict: Verdict::Create,
        diff: String::new(),
        live_resource_version: None,
        live_uid: None,
        desired_sha256: d.sha.clone(),
        conflicts: Vec::new(),
        immutable: None,
        note: None,
    };
    let name = d.object.label();
    let crd_in_plan = all.iter().any(|o| {
        o.object.kind == "CustomResourceDefinition"
            && o.body.pointer("/spec/group").and_then(Value::as_str) == Some(d.object.group())
    });
    let namespaced = match g.namespaced(&d.object).await {
        Ok(n) => n,
        Err(KubeError::NotFound(_)) if crd_in_plan => {
            po.verdict = Verdict::CannotValidateYet;
            po.diff = diff(&name, None, Some(&d.body)).1;
            po.note = Some("its CustomResourceDefinition is created by this plan".into());
            return Ok(po);
        }
        Err(e) => return Err(ProvisionError::Invalid(format!("{name}: {e}"))),
    };
    if namespaced != d.object.namespace.is_some() {
        return Err(ProvisionError::Invalid(format!(
            "{name}: the kind is {}",
            if namespaced {
                "namespaced: give a namespace"
            } else {
                "cluster-scoped: give no namespace"
            }
        )));
    }
    if let Some(ns) = &d.object.namespace
        && pending_namespaces.contains(ns)
    {
        po.verdict = Verdict::CannotValidateYet;
        po.diff = diff(&name, None, Some(&d.body)).1;
        po.note = Some(format!("its Namespace `{ns}` is created by this plan"));
        return Ok(po);
    }
    let live = g.get(&d.object).await?;
    po.live_resource_version = live
        .as_ref()
        .and_then(|l| l.pointer("/metadata/resourceVersion"))
        .and_then(Value::as_str)
        .map(str::to_string);
    po.live_uid = live
        .as_ref()
        .and_then(|l| l.pointer("/metadata/uid"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let merged = match g.apply(&d.object, &d.body, true, false).await {
        Ok(m) => m,
        Err(KubeError::Conflict(c)) => {
            po.conflicts = c;
            g.apply(&d.object, &d.body, true, true).await?
        }
        Err(e) if is_immutable(&e) && live.is_some() => {
            po.immutable = Some(e.to_string());
            po.verdict = Verdict::Update;
            let mut want = live.clone().unwrap_or_default();
            merge(&mut want, &d.body);
            po.diff = diff(&name, live.as_ref(), Some(&want)).1;
            return Ok(po);
        }
        Err(KubeError::NotFound(m)) => {
            po.verdict = Verdict::CannotValidateYet;
            po.diff = diff(&name, None, Some(&d.body)).1;
            po.note = Some(format!("dry-run: {m}"));
            return Ok(po);
        }
        Err(e) => {
            return Err(ProvisionError::Invalid(format!(
                "{name}: dry-run refused: {e}"
            )));
        }
    };
    let (same, text) = diff(&name, live.as_ref(), Some(&merged));
    po.diff = text;
    po.verdict = match (&live, same) {
        (None, _) => Verdict::Create,
        (Some(_), true) => Verdict::Unchanged,
        (Some(_), false) => Verdict::Update,
    };
    Ok(po)
}

/// A JSON merge of `patch` into `base` (for showing an immutable change).
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// Members of the set no longer desired: pruned when the inventory holds
/// their UID and they do not opt out; kept (with why) otherwise.
#[allow(clippy::too_many_arguments)]
async fn prune_candidates(
    g: &Granted,
    id: &str,
    gks: &BTreeSet<String>,
    nss: &BTreeSet<String>,
    desired: &[Desired],
    parent: &ObjectRef,
    members: &[Member],
    pending_namespaces: &BTreeSet<String>,
) -> Result<(Vec<PlanObject>, Vec<PlanObject>), ProvisionError> {
    let selector = format!("{}={id}", applyset::PART_OF);
    let (mut prune, mut kept) = (Vec::new(), Vec::new());
    for gk in gks {
        let Some(template) = g.resolve_group_kind(gk).await? else {
            continue;
        };
        let scopes: Vec<Option<String>> = if g.namespaced(&template).await? {
            nss.iter()
                .filter(|n| !pending_namespaces.contains(*n))
                .map(|n| Some(n.clone()))
                .collect()
        } else {
            vec![None]
        };
        for ns in scopes {
            let mut scope = template.clone();
            scope.namespace = ns;
            for live in g.list(&scope, &selector).await? {
                let field = |p: &str| live.pointer(p).and_then(Value::as_str).map(str::to_string);
                let object = ObjectRef {
                    api_version: template.api_version.clone(),
                    kind: template.kind.clone(),
                    namespace: field("/metadata/namespace"),
                    name: field("/metadata/name").unwrap_or_default(),
                };
                if same_object(&object, parent)
                    || desired.iter().any(|d| same_object(&d.object, &object))
                {
                    continue;
                }
                let uid = field("/metadata/uid");
                let name = object.label();
                let mut po = PlanObject {
                    step: order::step(0, &object.kind),
                    object,
                    wave: 0,
                    verdict: Verdict::Prune,
                    diff: diff(&name, Some(&live), None).1,
                    live_resource_version: field("/metadata/resourceVersion"),
                    live_uid: uid.clone(),
                    desired_sha256: String::new(),
                    conflicts: Vec::new(),
                    immutable: None,
                    note: None,
                };
                let applied = members.iter().find(|m| same_object(&m.object, &po.object));
                let why = match applied {
                    None => Some(format!(
                        "labelled {} of this set but never applied by it (foreign object): left alone",
                        applyset::PART_OF
                    )),
                    Some(m) if Some(&m.uid) != uid.as_ref() => Some(format!(
                        "recreated by someone else (UID {} is not the applied {}): left alone",
                        uid.as_deref().unwrap_or("?"),
                        m.uid
                    )),
                    Some(_) => applyset::prune_disabled(&live)
                        .map(|a| format!("{a}: not pruned"))
                        .or_else(|| {
                            g.check(&po.object, Verb::Delete)
                                .err()
                                .map(|e| format!("{e}: not pruned"))
                        }),
                };
                if let Some(why) = why {
                    po.note = Some(why);
                    po.diff = String::new();
                    kept.push(po);
                } else {
                    prune.push(po);
                }
            }
        }
    }
    prune.sort_by(|a, b| (b.step, &b.object).cmp(&(a.step, &a.object)));
    Ok((prune, kept))
}
