//! Kubernetes through the `kube` crate's dynamic API, scoped by `[[grants.kube]]`.
//!
//! ```toml
//! [[grants.kube]]
//! cluster = "test"                                  # a cluster from the server config
//! namespaces = ["team-a", "team-a-staging"]         # "*" for any namespace
//! resources = ["apps/Deployment", "ConfigMap"]      # group/Kind; core kinds have no group; "apps/*", "*"
//! verbs = ["get", "list", "apply", "patch", "delete"]
//! cluster_scoped = ["Namespace"]                    # cluster-scoped kinds, named one by one
//! force = false                                     # apply may take over other managers' fields
//! ```
//!
//! Everything outside every grant entry is denied and audited. Applies use
//! server-side apply with the field manager `capstan-plugin-<name>`, forced
//! only where the grant says `force = true`. Each API call has its own
//! timeout (the cluster's `timeout_ms`), so a hung API server cannot hold a
//! plugin past it; the invocation deadline still applies.

mod apply;
mod grant;
mod host_op;

pub use grant::{Access, KubeGrant, KubePolicy, Verb, resource_matches};
pub use host_op::host_operation;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{Scope, pinned_kind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

use crate::capabilities::CapabilityEnv;

use crate::runtime::bindings::WitError;
use crate::runtime::bindings::capstan::plugin::kube::{ApplyError, Host, ObjectRef, Rollout};
use crate::runtime::state::HostState;

/// One `[[kube.clusters]]` entry of the server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Name that grants refer to, e.g. `test` or `prod`.
    pub name: String,
    /// Path of the kubeconfig file.
    pub kubeconfig: PathBuf,
    /// Context in the kubeconfig; its current context if unset.
    #[serde(default)]
    pub context: Option<String>,
    /// Timeout of each API call, ms (default 10 000).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_timeout() -> u64 {
    10_000
}

struct Cluster {
    config: ClusterConfig,
    client: tokio::sync::OnceCell<kube::Client>,
    kinds: Mutex<HashMap<String, (ApiResource, Scope)>>,
}

/// The configured clusters, with clients created on first use.
#[derive(Default)]
pub struct Clusters {
    clusters: BTreeMap<String, Cluster>,
}

impl std::fmt::Debug for Clusters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.clusters.keys()).finish()
    }
}

impl Clusters {
    /// Clusters from the server configuration.
    pub fn new(configs: Vec<ClusterConfig>) -> Clusters {
        let clusters = configs
            .into_iter()
            .map(|config| {
                (
                    config.name.clone(),
                    Cluster {
                        config,
                        client: tokio::sync::OnceCell::new(),
                        kinds: Mutex::default(),
                    },
                )
            })
            .collect();
        Clusters { clusters }
    }

    /// Whether a cluster of that name is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.clusters.contains_key(name)
    }

    /// The client of cluster `name` (created on first use) and its
    /// per-call timeout, for engines that act under a plugin's grants
    /// outside an invocation (provisioning).
    pub async fn client(&self, name: &str) -> Result<(kube::Client, Duration), String> {
        let cluster = self.get(name).map_err(|e| format!("{e:?}"))?;
        let client = cluster.client().await.map_err(|e| format!("{e:?}"))?;
        Ok((client, cluster.timeout()))
    }

    /// Names of the configured clusters.
    pub fn names(&self) -> Vec<String> {
        self.clusters.keys().cloned().collect()
    }

    fn get(&self, name: &str) -> Result<&Cluster, WitError> {
        self.clusters
            .get(name)
            .ok_or_else(|| WitError::NotFound(format!("no cluster named `{name}` is configured")))
    }
}

impl Cluster {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    async fn client(&self) -> Result<kube::Client, WitError> {
        self.client
            .get_or_try_init(|| async {
                let kubeconfig = Kubeconfig::read_from(&self.config.kubeconfig).map_err(|e| {
                    WitError::Failed(format!("cluster `{}`: {e}", self.config.name))
                })?;
                let options = KubeConfigOptions {
                    context: self.config.context.clone(),
                    ..Default::default()
                };
                let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| {
                        WitError::Failed(format!("cluster `{}`: {e}", self.config.name))
                    })?;
                config.connect_timeout = Some(self.timeout());
                config.read_timeout = Some(self.timeout());
                config.write_timeout = Some(self.timeout());
                kube::Client::try_from(config)
                    .map_err(|e| WitError::Failed(format!("cluster `{}`: {e}", self.config.name)))
            })
            .await
            .cloned()
    }

    /// Resolves (and caches) the plural name and scope of a kind.
    async fn resource(
        &self,
        client: &kube::Client,
        gvk: &GroupVersionKind,
    ) -> Result<(ApiResource, Scope), WitError> {
        let key = format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind);
        if let Some(hit) = self
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(hit.clone());
        }
        let (ar, caps) = with_timeout(self.timeout(), pinned_kind(client, gvk)).await?;
        let entry = (ar, caps.scope);
        self.kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, entry.clone());
        Ok(entry)
    }
}

async fn with_timeout<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, WitError> {
    within(limit, fut).await?.map_err(kube_error)
}

/// The API's own answer, or a retryable error if it did not come in time.
async fn within<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<Result<T, kube::Error>, WitError> {
    tokio::time::timeout(limit, fut).await.map_err(|_| {
        WitError::Retryable(format!(
            "the Kubernetes API did not answer within {} ms",
            limit.as_millis()
        ))
    })
}

fn kube_error(e: kube::Error) -> WitError {
    match e {
        kube::Error::Api(status) => {
            let msg = format!("{} ({})", status.message, status.reason);
            match status.code {
                404 => WitError::NotFound(msg),
                401 | 403 => WitError::Denied(format!("the cluster refused: {msg}")),
                400 | 409 | 422 => WitError::InvalidInput(msg),
                429 | 500..=599 => WitError::Retryable(msg),
                _ => WitError::Failed(msg),
            }
        }
        other => WitError::Retryable(format!("Kubernetes API unreachable: {other}")),
    }
}

/// Splits `apps/v1` into (`apps`, `v1`) and `v1` into (``, `v1`).
fn group_version(api_version: &str) -> (String, String) {
    match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.to_string()),
    }
}

fn describe(
    cluster: &str,
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
) -> String {
    match namespace {
        Some(ns) => format!("{cluster}:{api_version}/{kind} {ns}/{name}"),
        None => format!("{cluster}:{api_version}/{kind} {name}"),
    }
}

type KubeResult<T> = wasmtime::Result<Result<T, WitError>>;

/// What a checked request targets.
struct Target {
    cluster: String,
    gvk: GroupVersionKind,
    namespace: Option<String>,
    name: String,
    label: String,
}

impl Target {
    fn new(
        cluster: &str,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Target {
        let (group, version) = group_version(api_version);
        Target {
            cluster: cluster.into(),
            gvk: GroupVersionKind::gvk(&group, &version, kind),
            namespace: namespace.filter(|n| !n.is_empty()).map(str::to_string),
            name: name.into(),
            label: describe(cluster, api_version, kind, namespace, name),
        }
    }

    fn from_ref(r: &ObjectRef) -> Target {
        Target::new(
            &r.cluster,
            &r.api_version,
            &r.kind,
            r.namespace.as_deref(),
            &r.name,
        )
    }
}

impl HostState {
    /// The grant check: denies (and audits) anything no grant covers.
    fn kube_check(&self, t: &Target, verb: Verb) -> Result<Access, WitError> {
        let policy = &self.caps.policies.kube;
        policy
            .check(
                &t.cluster,
                &t.gvk.group,
                &t.gvk.kind,
                t.namespace.as_deref(),
                verb,
            )
            .map_err(|why| self.deny("kube", verb.as_str(), &t.label, &why))
    }

    fn field_manager(&self) -> String {
        format!("capstan-plugin-{}", self.call.plugin)
    }
}

/// The typed API handle for a checked target; refuses a namespace on a
/// cluster-scoped kind and a missing one on a namespaced kind.
async fn kube_api(
    env: Arc<CapabilityEnv>,
    t: &Target,
) -> Result<(Api<DynamicObject>, Duration), WitError> {
    let cluster = env.kube.get(&t.cluster)?;
    let client = cluster.client().await?;
    let (ar, scope) = cluster.resource(&client, &t.gvk).await?;
    let api = match (scope, &t.namespace) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client, ns, &ar),
        (Scope::Namespaced, None) => {
            return Err(WitError::InvalidInput(format!(
                "{} is namespaced: give a namespace",
                t.gvk.kind
            )));
        }
        (Scope::Cluster, None) => Api::all_with(client, &ar),
        (Scope::Cluster, Some(_)) => {
            return Err(WitError::InvalidInput(format!(
                "{} is cluster-scoped: give no namespace",
                t.gvk.kind
            )));
        }
    };
    Ok((api, cluster.timeout()))
}

fn to_json<T: Serialize>(v: &T) -> Result<String, WitError> {
    serde_json::to_string(v).map_err(|e| WitError::Failed(e.to_string()))
}

impl Host for HostState {
    #[tracing::instrument(name = "plugin.kube.get", skip_all, fields(plugin = %self.call.plugin, target = %target.name))]
    async fn get(&mut self, target: ObjectRef) -> KubeResult<String> {
        let t = Target::from_ref(&target);
        if let Err(e) = self.kube_check(&t, Verb::Get) {
            return Ok(Err(e));
        }
        let env = self.caps.env.clone();
        let result = async {
            let (api, limit) = kube_api(env, &t).await?;
            to_json(&with_timeout(limit, api.get(&t.name)).await?)
        }
        .await;
        Ok(self.audited("kube", "get", &t.label, result))
    }

    #[tracing::instrument(name = "plugin.kube.list", skip_all, fields(plugin = %self.call.plugin, kind = %kind))]
    async fn list(
        &mut self,
        cluster: String,
        api_version: String,
        kind: String,
        namespace: Option<String>,
        label_selector: String,
    ) -> KubeResult<String> {
        let t = Target::new(&cluster, &api_version, &kind, namespace.as_deref(), "*");
        if let Err(e) = self.kube_check(&t, Verb::List) {
            return Ok(Err(e));
        }
        let env = self.caps.env.clone();
        let result = async {
            let (api, limit) = kube_api(env, &t).await?;
            let mut params = ListParams::default();
            if !label_selector.is_empty() {
                params = params.labels(&label_selector);
            }
            let list = with_timeout(limit, api.list(&params)).await?;
            to_json(&list.items)
        }
        .await;
        Ok(self.audited("kube", "list", &t.label, result))
    }

    #[tracing::instrument(name = "plugin.kube.apply", skip_all, fields(plugin = %self.call.plugin, dry_run))]
    async fn apply(
        &mut self,
        cluster: String,
        manifest: String,
        dry_run: bool,
    ) -> KubeResult<String> {
        Ok(self
            .kube_apply(&cluster, &manifest, dry_run)
            .await
            .map_err(apply::flatten))
    }

    #[tracing::instrument(name = "plugin.kube.apply_checked", skip_all, fields(plugin = %self.call.plugin, dry_run))]
    async fn apply_checked(
        &mut self,
        cluster: String,
        manifest: String,
        dry_run: bool,
    ) -> wasmtime::Result<Result<String, ApplyError>> {
        Ok(self.kube_apply(&cluster, &manifest, dry_run).await)
    }

    #[tracing::instrument(name = "plugin.kube.patch", skip_all, fields(plugin = %self.call.plugin, target = %target.name))]
    async fn patch(
        &mut self,
        target: ObjectRef,
        patch: String,
        dry_run: bool,
    ) -> KubeResult<String> {
        let t = Target::from_ref(&target);
        if let Err(e) = self.kube_check(&t, Verb::Patch) {
            return Ok(Err(e));
        }
        let body: Value = match serde_json::from_str(&patch) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Err(WitError::InvalidInput(format!(
                    "patch is not JSON: {e}"
                ))));
            }
        };
        let params = PatchParams {
            dry_run,
            field_manager: Some(self.field_manager()),
            ..Default::default()
        };
        let env = self.caps.env.clone();
        let result = async {
            let (api, limit) = kube_api(env, &t).await?;
            to_json(&with_timeout(limit, api.patch(&t.name, &params, &Patch::Merge(&body))).await?)
        }
        .await;
        let verb = if dry_run { "patch (dry-run)" } else { "patch" };
        Ok(self.audited("kube", verb, &t.label, result))
    }

    #[tracing::instrument(name = "plugin.kube.delete", skip_all, fields(plugin = %self.call.plugin, target = %target.name))]
    async fn delete(&mut self, target: ObjectRef, dry_run: bool) -> KubeResult<()> {
        let t = Target::from_ref(&target);
        if let Err(e) = self.kube_check(&t, Verb::Delete) {
            return Ok(Err(e));
        }
        let params = DeleteParams {
            dry_run,
            ..Default::default()
        };
        let env = self.caps.env.clone();
        let result = async {
            let (api, limit) = kube_api(env, &t).await?;
            with_timeout(limit, api.delete(&t.name, &params))
                .await
                .map(drop)
        }
        .await;
        let verb = if dry_run {
            "delete (dry-run)"
        } else {
            "delete"
        };
        Ok(self.audited("kube", verb, &t.label, result))
    }

    #[tracing::instrument(name = "plugin.kube.rollout_status", skip_all, fields(plugin = %self.call.plugin, name = %name))]
    async fn rollout_status(
        &mut self,
        cluster: String,
        namespace: String,
        name: String,
    ) -> KubeResult<Rollout> {
        let t = Target::new(&cluster, "apps/v1", "Deployment", Some(&namespace), &name);
        if let Err(e) = self.kube_check(&t, Verb::Get) {
            return Ok(Err(e));
        }
        let env = self.caps.env.clone();
        let result = async {
            let (api, limit) = kube_api(env, &t).await?;
            let d = with_timeout(limit, api.get(&t.name)).await?;
            Ok(rollout_of(&d))
        }
        .await;
        Ok(self.audited("kube", "rollout-status", &t.label, result))
    }
}

/// Rollout progress as `kubectl rollout status` judges it.
fn rollout_of(d: &DynamicObject) -> Rollout {
    let n = |p: &str| d.data.pointer(p).and_then(Value::as_u64).unwrap_or(0) as u32;
    let desired = d
        .data
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1) as u32;
    let (updated, ready, available, total) = (
        n("/status/updatedReplicas"),
        n("/status/readyReplicas"),
        n("/status/availableReplicas"),
        n("/status/replicas"),
    );
    let generation = d.metadata.generation.unwrap_or(0);
    let observed_gen = d
        .data
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let observed = observed_gen >= generation;
    let (complete, message) = if !observed {
        (
            false,
            "waiting for the deployment spec update to be observed".to_string(),
        )
    } else if updated < desired {
        (
            false,
            format!("{updated} of {desired} updated replicas are available"),
        )
    } else if total > updated {
        (
            false,
            format!("{} old replicas are pending termination", total - updated),
        )
    } else if available < updated {
        (
            false,
            format!("{available} of {updated} updated replicas are available"),
        )
    } else {
        (true, "successfully rolled out".to_string())
    };
    Rollout {
        desired,
        updated,
        ready,
        available,
        observed,
        complete,
        message,
    }
}
