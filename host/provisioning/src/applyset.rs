//! ApplySet (KEP-3659) as kubectl writes it, so that `kubectl` and other
//! tools see the set: the parent carries `applyset.kubernetes.io/id`
//! (`applyset-<base64url(sha256(<name>.<namespace>.<kind>.<group>))>-v1`)
//! and the annotations `tooling`, `contains-group-kinds` and
//! `additional-namespaces` (sorted, comma-separated); every member carries
//! `applyset.kubernetes.io/part-of: <id>`. The parent here is a ConfigMap.

use std::collections::BTreeSet;

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Label on the parent.
pub const ID: &str = "applyset.kubernetes.io/id";
/// Label on members.
pub const PART_OF: &str = "applyset.kubernetes.io/part-of";
/// Parent annotation: the tool that manages the set.
pub const TOOLING: &str = "applyset.kubernetes.io/tooling";
/// Parent annotation: the group-kinds of members (a superset while applying).
pub const GROUP_KINDS: &str = "applyset.kubernetes.io/contains-group-kinds";
/// Parent annotation: namespaces of members other than the parent's.
pub const NAMESPACES: &str = "applyset.kubernetes.io/additional-namespaces";
/// Our tooling value.
pub const TOOLING_VALUE: &str = concat!("capstan/v", env!("CARGO_PKG_VERSION"));
/// Annotations that keep an object from being pruned.
pub const PRUNE_DISABLED: &[(&str, &str)] = &[
    ("capstan.dev/prune", "disabled"),
    ("kustomize.toolkit.fluxcd.io/prune", "disabled"),
    ("argocd.argoproj.io/sync-options", "Prune=false"),
];

/// `Kind` (core) or `Kind.group`.
pub fn group_kind(group: &str, kind: &str) -> String {
    if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    }
}

/// The set id of a parent, as kubectl computes it.
pub fn id(name: &str, namespace: &str, kind: &str, group: &str) -> String {
    let digest = Sha256::digest(format!("{name}.{namespace}.{kind}.{group}").as_bytes());
    format!(
        "applyset-{}-v1",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

/// The parent ConfigMap recording `group_kinds` and `namespaces`.
pub fn parent(
    name: &str,
    namespace: &str,
    group_kinds: &BTreeSet<String>,
    namespaces: &BTreeSet<String>,
) -> Value {
    let extra: Vec<&str> = namespaces
        .iter()
        .map(String::as_str)
        .filter(|n| *n != namespace)
        .collect();
    let gks: Vec<&str> = group_kinds.iter().map(String::as_str).collect();
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": { ID: id(name, namespace, "ConfigMap", "") },
            "annotations": {
                TOOLING: TOOLING_VALUE,
                GROUP_KINDS: gks.join(","),
                NAMESPACES: extra.join(","),
            },
        },
    })
}

/// The group-kinds and namespaces a live parent records.
pub fn recorded(parent: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let list = |key: &str| -> BTreeSet<String> {
        parent
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut namespaces = list(NAMESPACES);
    if let Some(ns) = parent
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
    {
        namespaces.insert(ns.to_string());
    }
    (list(GROUP_KINDS), namespaces)
}

/// Why an object must not be pruned, if it says so.
pub fn prune_disabled(obj: &Value) -> Option<String> {
    let annotations = obj.pointer("/metadata/annotations")?;
    PRUNE_DISABLED.iter().find_map(|(k, v)| {
        let have = annotations.get(*k)?.as_str()?;
        have.split(',')
            .any(|p| p.trim() == *v)
            .then(|| format!("annotated {k}: {have}"))
    })
}

/// Adds the part-of label and `extra` labels to a member.
pub fn label_member(obj: &mut Value, set: &str, extra: &[(String, String)]) {
    let meta = obj
        .as_object_mut()
        .map(|m| m.entry("metadata").or_insert_with(|| json!({})));
    let Some(meta) = meta.and_then(Value::as_object_mut) else {
        return;
    };
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if let Some(l) = labels.as_object_mut() {
        for (k, v) in extra {
            l.insert(k.clone(), Value::String(v.clone()));
        }
        l.insert(PART_OF.into(), Value::String(set.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_matches_kubectl() {
        // kubectl's applyset_test.go: a Secret parent `my-set` in `test`.
        let raw = Sha256::digest(b"my-set.test.Secret.");
        let expected = format!(
            "applyset-{}-v1",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        assert_eq!(id("my-set", "test", "Secret", ""), expected);
        assert!(!expected.contains('=') && !expected.contains('+') && !expected.contains('/'));
        assert_ne!(id("a", "b", "ConfigMap", ""), id("a", "c", "ConfigMap", ""));
    }

    #[test]
    fn parent_round_trips() {
        let gks: BTreeSet<String> = ["Namespace", "RoleBinding.rbac.authorization.k8s.io"]
            .map(String::from)
            .into();
        let nss: BTreeSet<String> = ["team-a", "team-b"].map(String::from).into();
        let p = parent("set", "team-a", &gks, &nss);
        assert_eq!(p["metadata"]["annotations"][NAMESPACES], "team-b");
        assert_eq!(
            p["metadata"]["annotations"][GROUP_KINDS],
            "Namespace,RoleBinding.rbac.authorization.k8s.io"
        );
        assert_eq!(recorded(&p), (gks, nss));
    }

    #[test]
    fn prune_opt_outs() {
        let obj = |k: &str, v: &str| json!({"metadata": {"annotations": {k: v}}});
        assert!(prune_disabled(&obj("capstan.dev/prune", "disabled")).is_some());
        assert!(
            prune_disabled(&obj(
                "argocd.argoproj.io/sync-options",
                "Prune=false,Delete=false"
            ))
            .is_some()
        );
        assert!(prune_disabled(&obj("argocd.argoproj.io/sync-options", "Prune=confirm")).is_none());
        assert!(prune_disabled(&json!({"metadata": {}})).is_none());
    }
}
