//! Kubernetes calls of the engine, each under the provisioner plugin's own
//! `[[grants.kube]]` (the runtime's [`KubePolicy`] check, deny first) and
//! recorded in the audit log as a `kube` capability use of that plugin,
//! with the actor `provision:<instance>`. Kinds are resolved through API
//! discovery (scope and plural from the server), cached per cluster.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_runtime::capabilities::kube::Verb;
use capstan_runtime::capabilities::{Audit, AuditRecord, Policies};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, Preconditions,
};
use kube::core::Status;
use kube::discovery::Scope;
use serde_json::Value;

use crate::model::{FieldConflict, ObjectRef};

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KubeError {
    /// No grant covers it (audited as denied); nothing was sent.
    #[error("denied by the provisioner's grants: {0}")]
    Denied(String),
    /// 404.
    #[error("not found: {0}")]
    NotFound(String),
    /// Server-side apply conflict: fields other managers own.
    #[error("field manager conflict: {}", describe(.0))]
    Conflict(Vec<FieldConflict>),
    /// 409 otherwise (e.g. a UID precondition failed).
    #[error("conflict: {0}")]
    Precondition(String),
    /// 422 / 400: the server refused the object.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Anything else (unreachable, timeout, 5xx, 403 from the cluster).
    #[error("{0}")]
    Failed(String),
}

fn describe(c: &[FieldConflict]) -> String {
    c.iter()
        .map(|c| format!("{} owns {}", c.manager, c.field))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolved kinds, per cluster: `group/version/kind` to resource and scope.
pub type KindCache = Arc<Mutex<HashMap<String, (ApiResource, Scope)>>>;

/// One instance's access to its cluster.
pub struct Granted {
    /// Cluster name.
    pub cluster: String,
    client: kube::Client,
    timeout: Duration,
    policies: Arc<Policies>,
    audit: Audit,
    actor: String,
    plugin: String,
    version: String,
    /// Server-side apply field manager: `capstan-provision-<instance>`.
    pub field_manager: String,
    kinds: KindCache,
}

impl Granted {
    /// Access for `instance` through `plugin@version`'s policies.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cluster: &str,
        client: kube::Client,
        timeout: Duration,
        policies: Arc<Policies>,
        audit: Audit,
        instance: &str,
        plugin: &str,
        version: &str,
        kinds: KindCache,
    ) -> Granted {
        Granted {
            cluster: cluster.into(),
            client,
            timeout,
            policies,
            audit,
            actor: format!("provision:{instance}"),
            plugin: plugin.into(),
            version: version.into(),
            field_manager: format!("capstan-provision-{instance}"),
            kinds,
        }
    }

    fn record(&self, verb: &str, target: &str, allowed: bool, outcome: &str) {
        self.audit.record(AuditRecord {
            id: 0,
            at_ms: 0,
            actor: self.actor.clone(),
            plugin: Some(self.plugin.clone()),
            version: Some(self.version.clone()),
            invocation: None,
            capability: "kube".into(),
            target: target.into(),
            verb: verb.into(),
            allowed,
            outcome: outcome.into(),
            detail: Value::Null,
        });
    }

    fn target(&self, o: &ObjectRef) -> String {
        match &o.namespace {
            Some(ns) => format!(
                "{}:{}/{} {ns}/{}",
                self.cluster, o.api_version, o.kind, o.name
            ),
            None => format!("{}:{}/{} {}", self.cluster, o.api_version, o.kind, o.name),
        }
    }

    /// The grant check alone (audits a denial); `Ok(force allowed)`.
    pub fn check(&self, o: &ObjectRef, verb: Verb) -> Result<bool, KubeError> {
        self.policies
            .kube
            .check(
                &self.cluster,
                o.group(),
                &o.kind,
                o.namespace.as_deref(),
                verb,
            )
            .map(|a| a.force)
            .map_err(|why| {
                self.record(verb.as_str(), &self.target(o), false, &why);
                KubeError::Denied(format!("{} {}: {why}", verb.as_str(), o.label()))
            })
    }

    fn audited<T>(
        &self,
        verb: &str,
        o: &ObjectRef,
        r: Result<T, KubeError>,
    ) -> Result<T, KubeError> {
        let outcome = match &r {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        self.record(verb, &self.target(o), true, &outcome);
        r
    }

    async fn within<T>(
        &self,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, KubeError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(KubeError::Failed(format!(
                "the Kubernetes API did not answer within {} ms",
                self.timeout.as_millis()
            ))),
            Ok(r) => r.map_err(error_of),
        }
    }

    /// The kind's resource and scope, from discovery.
    pub async fn resolve(&self, o: &ObjectRef) -> Result<(ApiResource, Scope), KubeError> {
        let gvk = GroupVersionKind::gvk(o.group(), o.version(), &o.kind);
        let key = format!(
            "{}/{}/{}/{}",
            self.cluster, gvk.group, gvk.version, gvk.kind
        );
        if let Some(hit) = self
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(hit.clone());
        }
        let (ar, caps) = self
            .within(kube::discovery::pinned_kind(&self.client, &gvk))
            .await
            .map_err(|e| match e {
                KubeError::NotFound(_) | KubeError::Failed(_) => KubeError::NotFound(format!(
                    "kind {} is not served by cluster `{}` ({e})",
                    o.group_kind(),
                    self.cluster
                )),
                other => other,
            })?;
        let entry = (ar, caps.scope);
        self.kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, entry.clone());
        Ok(entry)
    }

    /// The preferred version of a group-kind (`Kind` or `Kind.group`).
    pub async fn resolve_group_kind(&self, gk: &str) -> Result<Option<ObjectRef>, KubeError> {
        let (kind, group) = gk.split_once('.').unwrap_or((gk, ""));
        let g = match self
            .within(kube::discovery::group(&self.client, group))
            .await
        {
            Ok(g) => g,
            Err(KubeError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(g.recommended_kind(kind).map(|(ar, _)| ObjectRef {
            api_version: ar.api_version.clone(),
            kind: ar.kind.clone(),
            namespace: None,
            name: String::new(),
        }))
    }

    async fn api(&self, o: &ObjectRef) -> Result<Api<DynamicObject>, KubeError> {
        let (ar, scope) = self.resolve(o).await?;
        Ok(match (scope, &o.namespace) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            (Scope::Namespaced, None) => Api::all_with(self.client.clone(), &ar),
            (Scope::Cluster, None) => Api::all_with(self.client.clone(), &ar),
            (Scope::Cluster, Some(_)) => {
                return Err(KubeError::Invalid(format!(
                    "{} is cluster-scoped: it takes no namespace",
                    o.kind
                )));
            }
        })
    }

    /// Whether the kind is namespaced.
    pub async fn namespaced(&self, o: &ObjectRef) -> Result<bool, KubeError> {
        Ok(matches!(self.resolve(o).await?.1, Scope::Namespaced))
    }

    /// The live object, if any.
    pub async fn get(&self, o: &ObjectRef) -> Result<Option<Value>, KubeError> {
        self.check(o, Verb::Get)?;
        let r = async {
            let api = self.api(o).await?;
            let got = self.within(api.get_opt(&o.name)).await?;
            got.map(to_value).transpose()
        }
        .await;
        self.audited("get", o, r)
    }

    /// Server-side apply of `body` (with the engine's field manager).
    pub async fn apply(
        &self,
        o: &ObjectRef,
        body: &Value,
        dry_run: bool,
        force: bool,
    ) -> Result<Value, KubeError> {
        self.check(o, Verb::Apply)?;
        let mut params = PatchParams::apply(&self.field_manager);
        params.force = force;
        params.dry_run = dry_run;
        let r = async {
            let api = self.api(o).await?;
            to_value(
                self.within(api.patch(&o.name, &params, &Patch::Apply(body)))
                    .await?,
            )
        }
        .await;
        let verb = match (dry_run, force) {
            (true, _) => "apply (dry-run)",
            (false, true) => "apply (force)",
            (false, false) => "apply",
        };
        self.audited(verb, o, r)
    }

    /// Deletes with a UID precondition; `Ok(true)` if gone at once, `Ok(false)`
    /// if it is terminating (finalizers).
    pub async fn delete(&self, o: &ObjectRef, uid: Option<&str>) -> Result<bool, KubeError> {
        self.check(o, Verb::Delete)?;
        let params = DeleteParams::background().preconditions(Preconditions {
            uid: uid.map(str::to_string),
            resource_version: None,
        });
        let r = async {
            let api = self.api(o).await?;
            let answer = self.within(api.delete(&o.name, &params)).await?;
            Ok(answer.is_right())
        }
        .await;
        self.audited("delete", o, r)
    }

    /// Objects of a kind (`o.namespace` or every namespace) with a label selector.
    pub async fn list(&self, o: &ObjectRef, selector: &str) -> Result<Vec<Value>, KubeError> {
        self.check(o, Verb::List)?;
        let r = async {
            let api = self.api(o).await?;
            let list = self
                .within(api.list(&ListParams::default().labels(selector)))
                .await?;
            let ar = self.resolve(o).await?.0;
            list.items
                .into_iter()
                .map(|mut i| {
                    i.types = Some(kube::api::TypeMeta {
                        api_version: ar.api_version.clone(),
                        kind: ar.kind.clone(),
                    });
                    to_value(i)
                })
                .collect()
        }
        .await;
        self.audited("list", o, r)
    }
}

fn to_value(o: DynamicObject) -> Result<Value, KubeError> {
    serde_json::to_value(o).map_err(|e| KubeError::Failed(e.to_string()))
}

fn error_of(e: kube::Error) -> KubeError {
    match e {
        kube::Error::Api(status) => {
            if let Some(c) = conflicts(&status) {
                return KubeError::Conflict(c);
            }
            let msg = format!("{} ({})", status.message, status.reason);
            match status.code {
                404 => KubeError::NotFound(msg),
                409 => KubeError::Precondition(msg),
                400 | 422 => KubeError::Invalid(msg),
                _ => KubeError::Failed(msg),
            }
        }
        // Discovery answered, without the group or kind (e.g. a CRD not
        // yet created or not yet established).
        kube::Error::Discovery(d) => KubeError::NotFound(format!("not served: {d}")),
        other => KubeError::Failed(format!("Kubernetes API unreachable: {other}")),
    }
}

/// The managers and fields a server-side apply 409 names.
fn conflicts(status: &Status) -> Option<Vec<FieldConflict>> {
    if status.code != 409 {
        return None;
    }
    let found: Vec<FieldConflict> = status
        .details
        .as_ref()?
        .causes
        .iter()
        .filter(|c| c.reason == "FieldManagerConflict")
        .map(|c| {
            let rest = c
                .message
                .strip_prefix("conflict with ")
                .unwrap_or(&c.message);
            let manager = match rest.strip_prefix('"').and_then(|r| r.split_once('"')) {
                Some((m, _)) => m.to_string(),
                None => rest.split(" using ").next().unwrap_or(rest).to_string(),
            };
            FieldConflict {
                manager,
                field: c.field.clone(),
            }
        })
        .collect();
    (!found.is_empty()).then_some(found)
}

/// Whether a refusal is about an immutable field.
pub fn is_immutable(e: &KubeError) -> bool {
    matches!(e, KubeError::Invalid(m) if m.contains("immutable") || m.contains("cannot change"))
}
