//! The plugin registry: which version of each plugin is active, and how a new
//! one replaces it. Versions are compiled off the request path and swapped in
//! atomically; calls in flight keep the `Arc` of the version they started on.

mod watch;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use arc_swap::ArcSwapOption;

pub use watch::watch_directory;

use crate::manifest::{Manifest, ManifestError};
use crate::metrics::Metrics;
use crate::runtime::{Accounting, Call, InvokeError, LoadError, Output, Prepared, Runtime};
use crate::store::{Store, StoreError, VersionRecord, digest_of};

/// How many recent invocations each plugin keeps for `GET .../invocations`.
const RECENT_INVOCATIONS: usize = 100;

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
    fn as_str(self) -> &'static str {
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
#[derive(Default)]
pub struct Slot {
    active: ArcSwapOption<Prepared>,
    last_error: Mutex<Option<LoadFailure>>,
    recent: Mutex<VecDeque<Accounting>>,
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
}

/// The registry of plugins.
pub struct Registry {
    runtime: Arc<Runtime>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    /// Serialises version changes; invocations never take it.
    changes: tokio::sync::Mutex<()>,
    ready: AtomicBool,
    directory_errors: Mutex<BTreeMap<String, String>>,
}

impl Registry {
    /// An empty registry over `store`; call [`Registry::load_all`] next.
    pub fn new(runtime: Arc<Runtime>, store: Arc<Store>, metrics: Arc<Metrics>) -> Registry {
        Registry {
            runtime,
            store,
            metrics,
            slots: RwLock::default(),
            changes: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            directory_errors: Mutex::default(),
        }
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

    /// Marks the registry ready (for `/readyz`) once startup loading is done.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Validates, compiles and stores a new version; activates it if asked.
    /// A version that fails never replaces the working one.
    pub async fn install(
        &self,
        manifest_text: &str,
        bytes: Vec<u8>,
        source: Source,
        activate: bool,
    ) -> Result<Installed, RegistryError> {
        let manifest = Manifest::parse(manifest_text)?;
        let (name, version) = (manifest.name.clone(), manifest.version.clone());
        let digest = digest_of(&bytes);
        let _guard = self.changes.lock().await;
        let record = VersionRecord {
            name: name.clone(),
            version: version.clone(),
            digest: digest.clone(),
            manifest: manifest.to_toml(),
            role: manifest.role.to_string(),
            source: source.as_str().into(),
            created_at: now(),
        };
        let replace = source != Source::Api;
        if let Some(existing) = self.store.version(&name, &version)?
            && existing.digest != digest
            && !replace
        {
            return Err(RegistryError::Conflict(format!(
                "{name} {version} already exists with different content; publish it under a new version"
            )));
        }
        let prepared = match self.prepare(manifest, &bytes).await {
            Ok(p) => p,
            Err(e) => {
                self.record_failure(&name, &version, &e);
                return Err(e);
            }
        };
        self.store.put_blob(&bytes)?;
        let changed = self.store.insert_version(&record, replace)?;
        let is_active = self.store.active_version(&name)?.as_deref() == Some(version.as_str());
        let swap = activate && (changed || !is_active || self.slot(&name).active().is_none());
        if swap {
            self.store.set_active(&name, &version, "activate")?;
            self.swap_in(&name, prepared);
        }
        tracing::info!(plugin = %name, %version, digest = %&digest[..12], source = source.as_str(), activated = swap, "installed");
        Ok(Installed {
            name,
            version,
            digest,
            active: swap || is_active,
            changed,
        })
    }

    /// Makes a stored version the active one.
    pub async fn activate(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        let _guard = self.changes.lock().await;
        self.activate_locked(name, version, "activate").await
    }

    /// Returns to the version that was active before the current one.
    pub async fn rollback(&self, name: &str) -> Result<String, RegistryError> {
        let _guard = self.changes.lock().await;
        self.known(name)?;
        let target = self.store.rollback_target(name)?.ok_or_else(|| {
            RegistryError::Conflict(format!(
                "{name} has no earlier active version to roll back to"
            ))
        })?;
        self.activate_locked(name, &target, "rollback").await?;
        Ok(target)
    }

    /// Deletes a plugin and every version of it. Calls in flight finish.
    pub async fn delete(&self, name: &str) -> Result<(), RegistryError> {
        let _guard = self.changes.lock().await;
        self.store.delete_plugin(name)?;
        self.slots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.metrics.set_loaded(self.loaded_count());
        Ok(())
    }

    /// Deletes one version that is not active.
    pub async fn delete_version(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        let _guard = self.changes.lock().await;
        Ok(self.store.delete_version(name, version)?)
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
        // UUIDv7: unique across restarts and replicas, ordered by time.
        let id = uuid::Uuid::now_v7().to_string();
        let (result, account) = self.runtime.invoke(&plugin, call, id).await;
        self.metrics.record_invocation(name, &account);
        {
            let mut recent = slot.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT_INVOCATIONS {
                recent.pop_front();
            }
            recent.push_back(account.clone());
        }
        match result {
            Ok(output) => Ok((output, account, plugin)),
            Err(e) => {
                tracing::warn!(plugin = %name, version = %plugin.manifest.version, invocation = %account.invocation, kind = e.kind(), "invocation failed: {e}");
                Err(RegistryError::Invoke(e))
            }
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
            .or_default()
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

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
