//! Readiness after kstatus (kubernetes-sigs/cli-utils `pkg/kstatus`): a
//! deletionTimestamp is Terminating; `metadata.generation` ahead of
//! `status.observedGeneration` is InProgress; `Reconciling=True` is
//! InProgress and `Stalled=True` Failed; then rules per kind (Deployment,
//! StatefulSet, PVC, CRD, Namespace, Pod, Job). Anything else is Current
//! (ConfigMap, Secret, LimitRange, RoleBinding, NetworkPolicy…). One
//! addition: a ResourceQuota is Current once the quota controller has
//! written `status.hard` (before that, admission refuses every object the
//! quota constrains, so the next wave would fail). A PVC that is Pending on a StorageClass with
//! `volumeBindingMode: WaitForFirstConsumer` is Current: it binds only when
//! a pod uses it.

use serde_json::Value;

/// An object's readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Ready.
    Current,
    /// Not yet; why.
    InProgress(String),
    /// Will not become ready by waiting; why.
    Failed(String),
    /// Being deleted; what holds it.
    Terminating(String),
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

fn is_true(obj: &Value, kind: &str) -> bool {
    condition(obj, kind)
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some("True")
}

fn int(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

/// The readiness of `obj`. `wffc` says whether a StorageClass binds on
/// first consumer (asked for PVCs only).
pub fn status(obj: &Value, wffc: impl Fn(&str) -> bool) -> Status {
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        let finalizers = obj
            .pointer("/metadata/finalizers")
            .or_else(|| obj.pointer("/spec/finalizers"))
            .map(Value::to_string)
            .unwrap_or_else(|| "[]".into());
        return Status::Terminating(format!("finalizers {finalizers}"));
    }
    if let Some(observed) = obj
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64)
    {
        let generation = int(obj, "/metadata/generation");
        if observed < generation {
            return Status::InProgress(format!(
                "generation {generation} not yet observed (observedGeneration {observed})"
            ));
        }
    }
    if is_true(obj, "Stalled") {
        return Status::Failed("condition Stalled=True".into());
    }
    if is_true(obj, "Reconciling") {
        return Status::InProgress("condition Reconciling=True".into());
    }
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    match kind {
        "Deployment" => deployment(obj),
        "StatefulSet" => {
            let want = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let ready = int(obj, "/status/readyReplicas");
            if ready < want {
                Status::InProgress(format!("{ready} of {want} replicas ready"))
            } else {
                Status::Current
            }
        }
        "PersistentVolumeClaim" => pvc(obj, wffc),
        "CustomResourceDefinition" => {
            if is_true(obj, "Established") {
                Status::Current
            } else {
                Status::InProgress("not yet Established".into())
            }
        }
        "ResourceQuota" => {
            let hard = obj
                .pointer("/spec/hard")
                .and_then(Value::as_object)
                .is_some_and(|h| !h.is_empty());
            if hard && obj.pointer("/status/hard").is_none() {
                // Until the quota controller has computed usage, the quota
                // admission plugin refuses every object the quota constrains.
                Status::InProgress("usage not yet computed by the quota controller".into())
            } else {
                Status::Current
            }
        }
        "Namespace" => match obj.pointer("/status/phase").and_then(Value::as_str) {
            Some("Terminating") => Status::Terminating("phase Terminating".into()),
            _ => Status::Current,
        },
        "Pod" => match obj.pointer("/status/phase").and_then(Value::as_str) {
            Some("Running") if is_true(obj, "Ready") => Status::Current,
            Some("Succeeded") => Status::Current,
            Some("Failed") => Status::Failed("pod phase Failed".into()),
            other => Status::InProgress(format!("pod phase {}", other.unwrap_or("unknown"))),
        },
        "Job" => {
            if is_true(obj, "Complete") {
                Status::Current
            } else if is_true(obj, "Failed") {
                Status::Failed("job Failed".into())
            } else {
                Status::InProgress("job running".into())
            }
        }
        _ => Status::Current,
    }
}

fn deployment(obj: &Value) -> Status {
    if condition(obj, "Progressing")
        .and_then(|c| c.get("reason"))
        .and_then(Value::as_str)
        == Some("ProgressDeadlineExceeded")
    {
        return Status::Failed("progress deadline exceeded".into());
    }
    let want = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let updated = int(obj, "/status/updatedReplicas");
    let available = int(obj, "/status/availableReplicas");
    if obj.pointer("/status/observedGeneration").is_none() {
        return Status::InProgress("no status yet".into());
    }
    if updated < want {
        return Status::InProgress(format!("{updated} of {want} replicas updated"));
    }
    if available < want {
        return Status::InProgress(format!("{available} of {want} replicas available"));
    }
    Status::Current
}

fn pvc(obj: &Value, wffc: impl Fn(&str) -> bool) -> Status {
    match obj.pointer("/status/phase").and_then(Value::as_str) {
        Some("Bound") => Status::Current,
        Some("Lost") => Status::Failed("claim Lost".into()),
        phase => {
            let class = obj
                .pointer("/spec/storageClassName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !class.is_empty() && wffc(class) {
                Status::Current
            } else {
                Status::InProgress(format!(
                    "claim {} on StorageClass `{class}`",
                    phase.unwrap_or("Pending")
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kstatus_rules() {
        let never = |_: &str| false;
        assert_eq!(
            status(&json!({"kind": "ConfigMap"}), never),
            Status::Current
        );
        let gen_ahead = json!({"kind": "X", "metadata": {"generation": 3}, "status": {"observedGeneration": 2}});
        assert!(matches!(status(&gen_ahead, never), Status::InProgress(_)));
        let stalled =
            json!({"kind": "X", "status": {"conditions": [{"type": "Stalled", "status": "True"}]}});
        assert!(matches!(status(&stalled, never), Status::Failed(_)));
        let deleting = json!({"kind": "Namespace", "metadata": {"deletionTimestamp": "t"}});
        assert!(matches!(status(&deleting, never), Status::Terminating(_)));
        let crd = json!({"kind": "CustomResourceDefinition", "status": {"conditions": [{"type": "Established", "status": "True"}]}});
        assert_eq!(status(&crd, never), Status::Current);
        let quota = json!({"kind": "ResourceQuota", "spec": {"hard": {"pods": "1"}}});
        assert!(matches!(status(&quota, never), Status::InProgress(_)));
        let counted = json!({"kind": "ResourceQuota", "spec": {"hard": {"pods": "1"}}, "status": {"hard": {"pods": "1"}}});
        assert_eq!(status(&counted, never), Status::Current);
    }

    #[test]
    fn pvc_waiting_for_first_consumer_is_ready() {
        let pvc = json!({"kind": "PersistentVolumeClaim", "spec": {"storageClassName": "ceph-rbd"}, "status": {"phase": "Pending"}});
        assert_eq!(status(&pvc, |c| c == "ceph-rbd"), Status::Current);
        assert!(matches!(status(&pvc, |_| false), Status::InProgress(_)));
        let bound = json!({"kind": "PersistentVolumeClaim", "status": {"phase": "Bound"}});
        assert_eq!(status(&bound, |_| false), Status::Current);
    }
}
