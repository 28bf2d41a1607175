//! The plugin registry: which version of each plugin is active, and how a new
//! one replaces it. Versions are compiled off the request path and swapped in
//! atomically; calls in flight keep the `Arc` of the version they started on.

mod changes;
mod sync;
mod trust;
mod watch;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use arc_swap::ArcSwapOption;

pub use trust::{Held, PluginGate};
pub use watch::watch_directory;

use crate::manifest::{Manifest, ManifestError};
use crate::metrics::Metrics;
use crate::runtime::{
    Accounting, Call, InvokeError, LoadError, Output, PluginConcurrency, Prepared, Runtime,
};
use crate::store::{Store, StoreError, digest_of};

/// The approval kind of plugin versions.
pub fn trust_kind() -> &'static str {
    trust::KIND
}

/// How many recent invocations each plugin keeps for `GET .../invocations`.
const RECENT_INVOCATIONS: usize = 100;
/// Non-active versions kept compiled for runs that pinned them.
const MAX_PINNED: usize = 32;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such plugin or version.
    #[error("{0}")]
    NotFound(String),
    /// The manifest was refused.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The component was refused.
    #[error("{name} {version}: {source}")]
    Load {
        /// Plugin name.
        name: String,
        /// Version.
        version: String,
        /// Why.
        source: LoadError,
    },
    /// The operation contradicts the stored state.
    #[error("{0}")]
    Conflict(String),
    /// Storage failed.
    #[error("storage: {0}")]
    Store(StoreError),
    /// The invocation failed.
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    /// The caller's roles do not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// The change is held until someone approves it.
    #[error("{0}")]
    Held(String),
}

impl From<crate::trust::projects::TrustError> for RegistryError {
    fn from(e: crate::trust::projects::TrustError) -> Self {
        use crate::trust::projects::TrustError as T;
        match e {
            T::Invalid(m) => RegistryError::Conflict(m),
            T::NotFound(m) => RegistryError::NotFound(m),
            T::Conflict(m) => RegistryError::Conflict(m),
            T::Db(e) => RegistryError::Store(StoreError::Db(e)),
        }
    }
}

impl From<crate::trust::approvals::GateError> for RegistryError {
    fn from(e: crate::trust::approvals::GateError) -> Self {
        use crate::trust::approvals::GateError as G;
        match e {
            G::NotFound(m) => RegistryError::NotFound(m),
            G::Forbidden(m) => RegistryError::Forbidden(m),
            G::Conflict(m) => RegistryError::Conflict(m),
            G::Db(e) => RegistryError::Store(StoreError::Db(e)),
        }
    }
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => RegistryError::NotFound(m),
            StoreError::Conflict(m) => RegistryError::Conflict(m),
            other => RegistryError::Store(other),
        }
    }
}

/// Told of every decision on an approval of the shared gate: how an engine
/// above the registry (pipelines) learns that one of its gates was decided.
/// Called after the decision is stored; kinds it does not own it ignores.
pub trait ApprovalListener: Send + Sync {
    /// `who` decided `approval` (as it is now stored).
    fn decided(
        &self,
        approval: &crate::trust::approvals::Approval,
        who: &crate::trust::Authority,
        approve: bool,
        comment: &str,
    );
}

/// Where a version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Uploaded through the HTTP API or CLI.
    Api,
    /// Found in the watched plugins directory.
    Directory,
    /// Shipped inside the `capstan` binary.
    Bundled,
}

impl Source {
    /// `api`, `directory` or `bundled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Directory => "directory",
            Source::Bundled => "bundled",
        }
    }
}

/// A failed load, kept so the API can show it next to the working version.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct LoadFailure {
    /// The version that failed.
    pub version: String,
    /// Why.
    pub error: String,
    /// Unix seconds.
    pub at: i64,
}

/// One plugin's live state.
pub struct Slot {
    active: ArcSwapOption<Prepared>,
    last_error: Mutex<Option<LoadFailure>>,
    recent: Mutex<VecDeque<Accounting>>,
    /// Calls of this plugin in flight, whichever version they run: a hot
    /// swap does not reset the count.
    concurrency: PluginConcurrency,
}

impl Slot {
    /// The active version, if one is loaded.
    pub fn active(&self) -> Option<Arc<Prepared>> {
        self.active.load_full()
    }

    /// The last failed load, if it is newer than the active version.
    pub fn last_error(&self) -> Option<LoadFailure> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Calls of this plugin running now.
    pub fn in_flight(&self) -> usize {
        self.concurrency.in_flight()
    }

    /// Recent invocations, newest last.
    pub fn recent(&self) -> Vec<Accounting> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// What an install did.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Installed {
    /// Plugin name.
    pub name: String,
    /// Version.
    pub version: String,
    /// sha256 of the component.
    pub digest: String,
    /// Whether it is now the active version.
    pub active: bool,
    /// False when exactly this version was already stored.
    pub changed: bool,
    /// The owning project.
    pub project: String,
    /// Set when the version is held for approval instead of activated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
}

/// The registry of plugins.
pub struct Registry {
    runtime: Arc<Runtime>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    pinned: Mutex<std::collections::HashMap<(String, String), Arc<Prepared>>>,
    approval_listeners: RwLock<Vec<Arc<dyn ApprovalListener>>>,
    /// Serialises version changes; invocations never take it.
    changes: tokio::sync::Mutex<()>,
    ready: AtomicBool,
    draining: AtomicBool,
    directory_errors: Mutex<BTreeMap<String, String>>,
    gate: PluginGate,
}

impl Registry {
    /// An empty registry over `store`; call [`Registry::load_all`] next.
    pub fn new(runtime: Arc<Runtime>, store: Arc<Store>, metrics: Arc<Metrics>) -> Registry {
        Registry {
            runtime,
            metrics,
            slots: RwLock::default(),
            pinned: Mutex::default(),
            approval_listeners: RwLock::default(),
            changes: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            directory_errors: Mutex::default(),
            gate: PluginGate::new(store.clone()),
            store,
        }
    }

    /// Registers an engine's [`ApprovalListener`].
    pub fn on_approval(&self, listener: Arc<dyn ApprovalListener>) {
        self.approval_listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(listener);
    }

    /// Projects, ownership, ceilings and approvals of plugin versions.
    pub fn gate(&self) -> &PluginGate {
        &self.gate
    }

    /// The store, for capability modules and the API.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// True once every stored plugin has been loaded (or has failed to).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Loads the active version of every stored plugin. A plugin that fails
    /// keeps its error on its slot; the others load regardless.
    pub async fn load_all(&self) -> Result<usize, RegistryError> {
        let active = self.store.active_versions()?;
        let mut loaded = 0;
        for (name, version) in active {
            match self.load_version(&name, &version).await {
                Ok(p) => {
                    self.slot(&name).active.store(Some(p));
                    loaded += 1;
                }
                Err(e) => {
                    tracing::error!(plugin = %name, %version, "failed to load: {e}");
                    self.record_failure(&name, &version, &e);
                }
            }
        }
        self.metrics.set_loaded(loaded);
        Ok(loaded)
    }

    /// Whether the server is shutting down: `/readyz` answers 503 so that
    /// load balancers stop sending before the listener closes.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts draining (see [`Registry::is_draining`]).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Marks the registry ready (for `/readyz`) once startup loading is done.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Invokes the active version of `name`.
    pub async fn invoke(
        &self,
        name: &str,
        call: Call,
    ) -> Result<(Output, Accounting, Arc<Prepared>), RegistryError> {
        let slot = self.get_slot(name)?;
        let plugin = slot.active().ok_or_else(|| {
            RegistryError::NotFound(format!("plugin {name} has no loaded version"))
        })?;
        self.invoke_prepared(name, slot, plugin, call).await
    }

    /// Invokes one stored version of `name`, whichever is active: a pipeline
    /// run calls the versions it pinned when it started. `digest` guards
    /// against a version whose content was replaced since (the plugins
    /// directory's dev loop).
    pub async fn invoke_version(
        &self,
        name: &str,
        version: &str,
        digest: &str,
        call: Call,
    ) -> Result<(Output, Accounting, Arc<Prepared>), RegistryError> {
        let slot = self.slot_or_sync(name).await?;
        let plugin = match slot.active() {
            Some(p) if p.manifest.version == version && &*p.digest == digest => p,
            _ => self.pinned(name, version, digest).await?,
        };
        self.invoke_prepared(name, slot, plugin, call).await
    }

    /// A stored version that is not the active one, compiled (or loaded from
    /// the artifact cache) once and kept while it is asked for.
    async fn pinned(
        &self,
        name: &str,
        version: &str,
        digest: &str,
    ) -> Result<Arc<Prepared>, RegistryError> {
        let key = (name.to_string(), version.to_string());
        if let Some(p) = self
            .pinned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && &*p.digest == digest
        {
            return Ok(p.clone());
        }
        let p = self.load_version(name, version).await?;
        if &*p.digest != digest {
            return Err(RegistryError::Conflict(format!(
                "{name} {version} was replaced since it was pinned (digest {} now, {} pinned)",
                &p.digest[..12.min(p.digest.len())],
                &digest[..12.min(digest.len())]
            )));
        }
        let mut pinned = self.pinned.lock().unwrap_or_else(|e| e.into_inner());
        if pinned.len() >= MAX_PINNED {
            pinned.clear();
        }
        pinned.insert(key, p.clone());
        Ok(p)
    }

    async fn invoke_prepared(
        &self,
        name: &str,
        slot: Arc<Slot>,
        plugin: Arc<Prepared>,
        call: Call,
    ) -> Result<(Output, Accounting, Arc<Prepared>), RegistryError> {
        let (result, account) = self.invoke_accounted(name, slot, &plugin, call).await;
        result.map(|output| (output, account, plugin))
    }

    /// As [`Registry::invoke_version`], keeping what the call cost and
    /// logged also when it failed (`None`: the call never started, e.g. the
    /// version is gone). A pipeline step's log shows the plugin's lines.
    pub async fn invoke_version_accounted(
        &self,
        name: &str,
        version: &str,
        digest: &str,
        call: Call,
    ) -> (Result<Output, RegistryError>, Option<Accounting>) {
        let slot = match self.slot_or_sync(name).await {
            Ok(slot) => slot,
            Err(e) => return (Err(e), None),
        };
        let plugin = match slot.active() {
            Some(p) if p.manifest.version == version && &*p.digest == digest => p,
            _ => match self.pinned(name, version, digest).await {
                Ok(p) => p,
                Err(e) => return (Err(e), None),
            },
        };
        let (result, account) = self.invoke_accounted(name, slot, &plugin, call).await;
        (result, Some(account))
    }

    async fn invoke_accounted(
        &self,
        name: &str,
        slot: Arc<Slot>,
        plugin: &Prepared,
        call: Call,
    ) -> (Result<Output, RegistryError>, Accounting) {
        // UUIDv7: unique across restarts and replicas, ordered by time.
        let id = crate::ids::new_id();
        let (result, mut account) = self
            .runtime
            .invoke_limited(Some(&slot.concurrency), plugin, call, id)
            .await;
        self.metrics.record_invocation(name, &account);
        if let Err(InvokeError::Overloaded { scope, .. }) = &result {
            self.metrics.record_overloaded(name, scope.as_str());
        }
        {
            let mut recent = slot.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT_INVOCATIONS {
                recent.pop_front();
            }
            // The log lines belong to the caller, not to the recent list.
            let logs = std::mem::take(&mut account.logs);
            recent.push_back(account.clone());
            account.logs = logs;
        }
        let result = result.map_err(|e| {
            tracing::warn!(plugin = %name, version = %plugin.manifest.version, invocation = %account.invocation, kind = e.kind(), "invocation failed: {e}");
            RegistryError::Invoke(e)
        });
        (result, account)
    }

    /// The live state of `name`; when this replica does not know it yet
    /// (stored by another replica a moment ago, its notice still on the
    /// way), it is loaded from the store first. A pinned version is stored,
    /// so a run never fails for being driven by the other replica.
    async fn slot_or_sync(&self, name: &str) -> Result<Arc<Slot>, RegistryError> {
        match self.get_slot(name) {
            Err(RegistryError::NotFound(_)) => {
                self.sync_plugin(name).await?;
                self.get_slot(name)
            }
            other => other,
        }
    }

    /// The live state of `name`.
    pub fn get_slot(&self, name: &str) -> Result<Arc<Slot>, RegistryError> {
        self.slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound(format!("no plugin named {name}")))
    }

    /// Names of all plugins that have a slot (loaded, or failed to load).
    pub fn names(&self) -> Vec<String> {
        self.slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Errors of plugin-directory entries that could not even be attributed to a plugin.
    pub fn directory_errors(&self) -> BTreeMap<String, String> {
        self.directory_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_directory_error(&self, path: &str, error: Option<String>) {
        let mut errors = self
            .directory_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match error {
            Some(e) => errors.insert(path.to_string(), e),
            None => errors.remove(path),
        };
    }

    fn known(&self, name: &str) -> Result<(), RegistryError> {
        if self.store.versions(name)?.is_empty() {
            return Err(RegistryError::NotFound(format!("no plugin named {name}")));
        }
        Ok(())
    }

    async fn activate_locked(
        &self,
        name: &str,
        version: &str,
        action: &str,
    ) -> Result<(), RegistryError> {
        self.known(name)?;
        let prepared = match self.load_version(name, version).await {
            Ok(p) => p,
            Err(e) => {
                self.record_failure(name, version, &e);
                return Err(e);
            }
        };
        self.store.set_active(name, version, action)?;
        self.swap_in(name, prepared);
        tracing::info!(plugin = %name, %version, action, "active version changed");
        Ok(())
    }

    /// Compiles (or loads the cached artifact of) a stored version.
    async fn load_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Arc<Prepared>, RegistryError> {
        let record = self
            .store
            .version(name, version)?
            .ok_or_else(|| RegistryError::NotFound(format!("{name} has no version {version}")))?;
        let manifest = Manifest::parse(&record.manifest)?;
        let bytes = self.store.blob(&record.digest)?;
        self.prepare(manifest, &bytes).await
    }

    async fn prepare(
        &self,
        manifest: Manifest,
        bytes: &[u8],
    ) -> Result<Arc<Prepared>, RegistryError> {
        let (name, version) = (manifest.name.clone(), manifest.version.clone());
        let digest = digest_of(bytes);
        let artifact = self
            .store
            .artifact_path(&digest, &self.runtime.compatibility_key());
        let runtime = self.runtime.clone();
        let owned = bytes.to_vec();
        let started = Instant::now();
        let load_err = |source| RegistryError::Load {
            name: name.clone(),
            version: version.clone(),
            source,
        };
        let component =
            tokio::task::spawn_blocking(move || runtime.compile_cached(&owned, &artifact))
                .await
                .map_err(|e| load_err(LoadError::Compile(format!("compiler task failed: {e}"))))?
                .map_err(load_err)?;
        let compile_secs = started.elapsed().as_secs_f64();
        let prepared = self
            .runtime
            .prepare(manifest, &digest, &component)
            .await
            .map_err(load_err)?;
        self.metrics.record_reload(&name, true, Some(compile_secs));
        Ok(Arc::new(prepared))
    }

    fn slot(&self, name: &str) -> Arc<Slot> {
        self.slots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| {
                // The in-flight gauge is kept per name by the metrics, so a
                // plugin deleted and installed again while calls still run
                // counts them against its limit.
                Arc::new(Slot {
                    active: Default::default(),
                    last_error: Default::default(),
                    recent: Default::default(),
                    concurrency: PluginConcurrency::new(self.metrics.plugin_in_flight(name)),
                })
            })
            .clone()
    }

    fn swap_in(&self, name: &str, prepared: Arc<Prepared>) {
        let slot = self.slot(name);
        slot.active.store(Some(prepared));
        *slot.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.metrics.set_loaded(self.loaded_count());
    }

    fn loaded_count(&self) -> usize {
        self.slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| s.active().is_some())
            .count()
    }

    fn record_failure(&self, name: &str, version: &str, e: &RegistryError) {
        self.metrics.record_reload(name, false, None);
        let failure = LoadFailure {
            version: version.into(),
            error: e.to_string(),
            at: now(),
        };
        *self
            .slot(name)
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(failure);
        if let Err(err) = self
            .store
            .note(name, version, "load-failed", &e.to_string())
        {
            tracing::warn!("could not record load failure: {err}");
        }
    }
}

use crate::store::unix_secs as now;
