//! Kubernetes operations the host carries out for a plugin after its
//! invocation (an alert handler's `kube` actions), under that plugin
//! version's own `[[grants.kube]]` and never more: the same grant check,
//! client, field manager and audit records as the guest-facing capability.
//!
//! The operation names no cluster: the first cluster of the plugin's grants
//! that allows it is used.

use std::sync::Arc;

use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use super::{Target, Verb, kube_api, to_json, with_timeout};
use crate::capabilities::CapabilityEnv;
use crate::capabilities::audit::AuditRecord;
use crate::runtime::Prepared;
use crate::runtime::bindings::WitError;

/// Carries out `verb` (`apply`, `patch`, `delete` or `restart`) on one
/// object for `plugin`, checked against its kube grants and audited as the
/// plugin. `body` is the manifest (apply) or merge patch (patch).
#[allow(clippy::too_many_arguments)]
pub async fn host_operation(
    env: Arc<CapabilityEnv>,
    plugin: &Prepared,
    verb: &str,
    api_version: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    body: &str,
) -> Result<String, WitError> {
    let (checked, op) = match verb {
        "apply" => (Verb::Apply, verb),
        "patch" => (Verb::Patch, verb),
        "delete" => (Verb::Delete, verb),
        "restart" => (Verb::Patch, verb),
        other => {
            return Err(WitError::InvalidInput(format!(
                "kube verb `{other}`: expected apply, patch, delete or restart"
            )));
        }
    };
    let manager = format!("capstan-plugin-{}", plugin.manifest.name);
    let audit = |target: &str, allowed: bool, outcome: String| {
        env.audit.record(AuditRecord {
            id: 0,
            at_ms: 0,
            actor: format!("plugin:{}", plugin.manifest.name),
            plugin: Some(plugin.manifest.name.clone()),
            version: Some(plugin.manifest.version.clone()),
            invocation: None,
            capability: "kube".into(),
            target: target.into(),
            verb: format!("{op} (alert action)"),
            allowed,
            outcome,
            detail: Value::Null,
        });
    };
    let policy = &plugin.policies().kube;
    let mut clusters: Vec<&str> = policy.grants.iter().map(|g| g.cluster.as_str()).collect();
    clusters.dedup();
    let ns = (!namespace.is_empty()).then_some(namespace);
    let mut chosen = None;
    let mut why = "the plugin has no kube grant".to_string();
    for c in clusters {
        let t = Target::new(c, api_version, kind, ns, name);
        match policy.check(c, &t.gvk.group, &t.gvk.kind, ns, checked) {
            Ok(access) => {
                chosen = Some((t, access));
                break;
            }
            Err(e) => why = e,
        }
    }
    let Some((t, access)) = chosen else {
        let label = format!("{api_version}/{kind} {namespace}/{name}");
        audit(&label, false, why.clone());
        return Err(WitError::Denied(format!("kube {op} {label}: {why}")));
    };
    let result = async {
        let (api, limit) = kube_api(env.clone(), &t).await?;
        match op {
            "apply" => {
                let object: Value = serde_json::from_str(body)
                    .map_err(|e| WitError::InvalidInput(format!("manifest is not JSON: {e}")))?;
                let mut params = PatchParams::apply(&manager);
                params.force = access.force;
                to_json(
                    &with_timeout(limit, api.patch(&t.name, &params, &Patch::Apply(&object)))
                        .await?,
                )
            }
            "patch" => {
                let patch: Value = serde_json::from_str(body)
                    .map_err(|e| WitError::InvalidInput(format!("patch is not JSON: {e}")))?;
                let params = PatchParams {
                    field_manager: Some(manager.clone()),
                    ..Default::default()
                };
                to_json(
                    &with_timeout(limit, api.patch(&t.name, &params, &Patch::Merge(&patch)))
                        .await?,
                )
            }
            "restart" => {
                let at = chrono_like_now();
                let patch = json!({ "spec": { "template": { "metadata": { "annotations": {
                    "kubectl.kubernetes.io/restartedAt": at } } } } });
                let params = PatchParams {
                    field_manager: Some(manager.clone()),
                    ..Default::default()
                };
                to_json(
                    &with_timeout(limit, api.patch(&t.name, &params, &Patch::Merge(&patch)))
                        .await?,
                )
            }
            _ => with_timeout(limit, api.delete(&t.name, &DeleteParams::default()))
                .await
                .map(|_| "{}".to_string()),
        }
    }
    .await;
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error: {e:?}"),
    };
    audit(&t.label, true, outcome);
    result
}

/// Now as Unix seconds text (what `kubectl rollout restart` puts there is
/// RFC 3339; any changing value restarts the pods).
fn chrono_like_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!("{secs}")
}
