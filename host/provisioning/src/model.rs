//! What the engine stores and answers: instances, plans with a verdict and
//! a unified diff per object, and the progress of an apply or destroy.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One object, named as in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
pub struct ObjectRef {
    /// `v1`, `apps/v1`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace of a namespaced object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl ObjectRef {
    /// The API group (`` for core).
    pub fn group(&self) -> &str {
        self.api_version
            .split_once('/')
            .map(|(g, _)| g)
            .unwrap_or("")
    }

    /// The version.
    pub fn version(&self) -> &str {
        self.api_version
            .split_once('/')
            .map(|(_, v)| v)
            .unwrap_or(&self.api_version)
    }

    /// `Kind` or `Kind.group`, as ApplySet's `contains-group-kinds` writes it.
    pub fn group_kind(&self) -> String {
        crate::applyset::group_kind(self.group(), &self.kind)
    }

    /// `Kind ns/name` or `Kind name`, for messages.
    pub fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.group_kind(), self.name),
            None => format!("{} {}", self.group_kind(), self.name),
        }
    }
}

/// What applying the plan does to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Absent: created.
    Create,
    /// Present and different: updated.
    Update,
    /// Present and the same after normalisation: not sent at apply.
    Unchanged,
    /// In the set, no longer desired: deleted (UID precondition).
    Prune,
    /// Its Namespace or CRD is created by this same plan, so the server's
    /// dry-run cannot judge it yet; applied after that wave is ready.
    CannotValidateYet,
}

impl Verdict {
    /// The verdict as written in plans.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Create => "create",
            Verdict::Update => "update",
            Verdict::Unchanged => "unchanged",
            Verdict::Prune => "prune",
            Verdict::CannotValidateYet => "cannot-validate-yet",
        }
    }
}

/// A field another field manager owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldConflict {
    /// The other manager.
    pub manager: String,
    /// The field, e.g. `.data.color`.
    pub field: String,
}

/// One object of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanObject {
    /// The object.
    #[serde(flatten)]
    pub object: ObjectRef,
    /// The plugin's wave.
    pub wave: u32,
    /// Position in the apply order: `(wave, stage)` steps, see [`crate::order`].
    pub step: u32,
    /// What apply does.
    pub verdict: Verdict,
    /// Unified diff of the normalized live object (`live`) and the
    /// server's dry-run result (`merged`); Secret values masked.
    pub diff: String,
    /// The live resourceVersion the plan was computed against (none if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_resource_version: Option<String>,
    /// The live UID (prune and recreate use it as a delete precondition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_uid: Option<String>,
    /// sha256 of the desired manifest: apply re-plans and refuses if it differs.
    #[serde(default)]
    pub desired_sha256: String,
    /// Fields other managers own that the apply would take over; apply
    /// refuses unless `force`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<FieldConflict>,
    /// The server refused the change as one to an immutable field; apply
    /// refuses unless `recreate` (delete with UID precondition, then create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<String>,
    /// Why an object in the set is not pruned (foreign, recreated, opted out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A stored plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    /// Id.
    pub id: String,
    /// The instance.
    pub instance: String,
    /// Spec revision it was computed from.
    pub revision: i64,
    /// Cluster.
    pub cluster: String,
    /// Provisioner plugin, version and digest that produced it.
    pub plugin: String,
    /// Version.
    pub plugin_version: String,
    /// Digest of that version.
    pub plugin_digest: String,
    /// The ApplySet id (`applyset-…-v1`).
    pub applyset: String,
    /// The ApplySet parent (a ConfigMap).
    pub parent: ObjectRef,
    /// Desired and pruned objects, in apply order.
    pub objects: Vec<PlanObject>,
    /// Objects in the set that are left alone, with why.
    #[serde(default)]
    pub kept: Vec<PlanObject>,
    /// The plugin's notes.
    pub notes: Vec<String>,
    /// Counts per verdict, e.g. `{"create": 3}`.
    pub summary: std::collections::BTreeMap<String, usize>,
    /// `planned`, `awaiting-approval`, `applying`, `applied`, `failed`, `rejected`, `superseded`.
    pub state: String,
    /// Approval in the shared gate, if the cluster needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// Who planned it.
    pub created_by: String,
    /// Unix ms.
    pub created_ms: i64,
}

/// A provisioned instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    /// Name (unique).
    pub name: String,
    /// Owning project (from the caller's token).
    pub project: String,
    /// Provisioner plugin.
    pub plugin: String,
    /// Cluster.
    pub cluster: String,
    /// Current spec.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// Current spec revision (1, 2, …); older ones are kept.
    pub revision: i64,
    /// `new`, `applied`, `applying`, `destroying`, `destroyed`, `failed`.
    pub state: String,
    /// Drift: `unknown`, `in-sync`, `drifted`, `failed`.
    pub drift: String,
    /// Why, for the last apply, destroy or drift check.
    pub detail: String,
    /// Who created it.
    pub created_by: String,
    /// Unix ms.
    pub updated_ms: i64,
}

/// One line of an apply's or destroy's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// Step (wave, stage) or `prune` / `parent`.
    pub step: String,
    /// What happened.
    pub message: String,
    /// Unix ms.
    pub at_ms: i64,
}
