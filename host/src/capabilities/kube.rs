//! Kubernetes through the `kube` crate, scoped by `[[grants.kube]]`.

use serde::{Deserialize, Serialize};

/// One `[[grants.kube]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KubeGrant {
    /// Cluster name.
    pub cluster: String,
}

impl KubeGrant {
    /// Checks the grant.
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Configured clusters.
#[derive(Debug, Default)]
pub struct Clusters {}

/// Kube scopes of a plugin version.
#[derive(Debug, Default)]
pub struct KubePolicy {}

impl KubePolicy {
    /// Compiles grants.
    pub fn new(_grants: &[KubeGrant], _clusters: &Clusters) -> Result<KubePolicy, String> {
        Ok(KubePolicy {})
    }
}

use crate::runtime::bindings::WitError;
use crate::runtime::bindings::capstan::plugin::kube::{Host, ObjectRef, Rollout};
use crate::runtime::state::HostState;

type KubeResult<T> = wasmtime::Result<Result<T, WitError>>;

impl Host for HostState {
    async fn get(&mut self, target: ObjectRef) -> KubeResult<String> {
        Ok(Err(self.deny("kube", "get", &target.name, "not granted")))
    }
    async fn list(
        &mut self,
        cluster: String,
        _a: String,
        _k: String,
        _n: Option<String>,
        _l: String,
    ) -> KubeResult<String> {
        Ok(Err(self.deny("kube", "list", &cluster, "not granted")))
    }
    async fn apply(&mut self, cluster: String, _m: String, _d: bool) -> KubeResult<String> {
        Ok(Err(self.deny("kube", "apply", &cluster, "not granted")))
    }
    async fn patch(&mut self, target: ObjectRef, _p: String, _d: bool) -> KubeResult<String> {
        Ok(Err(self.deny("kube", "patch", &target.name, "not granted")))
    }
    async fn delete(&mut self, target: ObjectRef, _d: bool) -> KubeResult<()> {
        Ok(Err(self.deny(
            "kube",
            "delete",
            &target.name,
            "not granted",
        )))
    }
    async fn rollout_status(
        &mut self,
        cluster: String,
        _n: String,
        _name: String,
    ) -> KubeResult<Rollout> {
        Ok(Err(self.deny(
            "kube",
            "rollout-status",
            &cluster,
            "not granted",
        )))
    }
}
