//! The plugin registry: which version of each plugin is active, and how a new
//! one replaces it. Versions are compiled off the request path and swapped in
//! atomically; calls in flight keep the `Arc` of the version they started on.

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
use crate::store::{Store, StoreError, VersionRecord, digest_of};

/// The approval kind of plugin versions.
pub fn trust_kind() -> &'static str {
    trust::KIND
}

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
            changes: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            directory_errors: Mutex::default(),
            gate: PluginGate::new(store.clone()),
            store,
        }
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

    /// Validates, compiles and stores a new version from the server itself
    /// (bundled, plugins directory); activates it if asked.
    pub async fn install(
        &self,
        manifest_text: &str,
        bytes: Vec<u8>,
        source: Source,
        activate: bool,
    ) -> Result<Installed, RegistryError> {
        let who = crate::trust::Authority::system(source.as_str());
        self.install_as(manifest_text, bytes, source, activate, &who)
            .await
    }

    /// Validates, compiles and stores a new version published by `who`.
    /// Only members of the owning project may publish; grants beyond the
    /// project's ceiling, or wider than the active version's, are held for
    /// approval instead of activated (see [`PluginGate::decide`]).
    /// A version that fails never replaces the working one.
    pub async fn install_as(
        &self,
        manifest_text: &str,
        bytes: Vec<u8>,
        source: Source,
        activate: bool,
        who: &crate::trust::Authority,
    ) -> Result<Installed, RegistryError> {
        let manifest = Manifest::parse(manifest_text)?;
        self.runtime.check_limits(&manifest)?;
        let (name, version) = (manifest.name.clone(), manifest.version.clone());
        let digest = digest_of(&bytes);
        let _guard = self.changes.lock().await;
        let project = self.gate.owning_project(&manifest, who)?;
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
        let grants = manifest.grants.clone();
        let prepared = match self.prepare(manifest, &bytes).await {
            Ok(p) => p,
            Err(e) => {
                self.record_failure(&name, &version, &e);
                return Err(e);
            }
        };
        self.store.put_blob(&bytes)?;
        let changed = self.store.insert_version(&record, replace)?;
        self.gate.claim(&name, &project)?;
        let active = self.slot(&name).active();
        let held = self.gate.decide(
            &name,
            &version,
            &digest,
            &project,
            &grants,
            active.as_ref().map(|p| &p.manifest.grants),
            who,
            activate,
        )?;
        let is_active = self.store.active_version(&name)?.as_deref() == Some(version.as_str());
        let swap = held.is_none()
            && activate
            && (changed || !is_active || self.slot(&name).active().is_none());
        let from = active.as_ref().map(|p| p.manifest.version.clone());
        self.audit_change(
            who,
            "plugin.upload",
            &name,
            serde_json::json!({
                "name": name, "version": version, "digest": digest, "project": project,
                "role": record.role, "source": source.as_str(), "grants": grants,
                "changed": changed, "held": held.as_ref().map(|h| &h.approval),
            }),
        )
        .await;
        if swap {
            self.store.set_active(&name, &version, "activate")?;
            self.swap_in(&name, prepared);
            self.audit_change(
                who,
                "plugin.activate",
                &name,
                serde_json::json!({ "name": name, "from": from, "to": version }),
            )
            .await;
        }
        tracing::info!(plugin = %name, %version, digest = %&digest[..12], source = source.as_str(), activated = swap, held = held.is_some(), "installed");
        Ok(Installed {
            name,
            version,
            digest,
            active: swap || (is_active && held.is_none()),
            changed,
            project,
            held,
        })
    }

    /// Records a change in the audit log before it is acknowledged.
    pub async fn audit_change(
        &self,
        who: &crate::trust::Authority,
        what: &str,
        target: &str,
        detail: serde_json::Value,
    ) {
        let mut record = crate::capabilities::AuditRecord::change(&who.actor, what, target, detail);
        record.plugin = Some(target.to_string());
        if let Err(e) = self.runtime.env().audit.record_durable(record).await {
            tracing::error!("{e}");
        }
    }

    /// Makes a stored version the active one (as the server itself).
    pub async fn activate(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        let who = crate::trust::Authority::system("server");
        self.activate_as(name, version, &who).await
    }

    /// Makes a stored version the active one, for `who`: an operator of the
    /// owning project, and the version's grants must not need an approval
    /// that it lacks.
    pub async fn activate_as(
        &self,
        name: &str,
        version: &str,
        who: &crate::trust::Authority,
    ) -> Result<(), RegistryError> {
        let _guard = self.changes.lock().await;
        self.gate
            .require(name, who, crate::trust::Role::Operator, "activate")?;
        let record = self
            .store
            .version(name, version)?
            .ok_or_else(|| RegistryError::NotFound(format!("{name} has no version {version}")))?;
        let grants = Manifest::parse(&record.manifest)?.grants;
        let active = self.slot(name).active();
        self.gate.check_activation(
            name,
            version,
            &record.digest,
            &grants,
            active.as_ref().map(|p| &p.manifest.grants),
            who,
        )?;
        let from = active.map(|p| p.manifest.version.clone());
        self.activate_locked(name, version, "activate").await?;
        self.audit_change(
            who,
            "plugin.activate",
            name,
            serde_json::json!({ "name": name, "from": from, "to": version }),
        )
        .await;
        Ok(())
    }

    /// Returns to the version that was active before the current one.
    pub async fn rollback(&self, name: &str) -> Result<String, RegistryError> {
        let who = crate::trust::Authority::system("server");
        self.rollback_as(name, &who).await
    }

    /// Returns to the version that was active before the current one, for
    /// `who` (an operator of the owning project). That version was
    /// authorised when it was first activated.
    pub async fn rollback_as(
        &self,
        name: &str,
        who: &crate::trust::Authority,
    ) -> Result<String, RegistryError> {
        let _guard = self.changes.lock().await;
        self.known(name)?;
        self.gate
            .require(name, who, crate::trust::Role::Operator, "roll back")?;
        let target = self.store.rollback_target(name)?.ok_or_else(|| {
            RegistryError::Conflict(format!(
                "{name} has no earlier active version to roll back to"
            ))
        })?;
        let from = self.slot(name).active().map(|p| p.manifest.version.clone());
        self.activate_locked(name, &target, "rollback").await?;
        self.audit_change(
            who,
            "plugin.rollback",
            name,
            serde_json::json!({ "name": name, "from": from, "to": target }),
        )
        .await;
        Ok(target)
    }

    /// Deletes a plugin and every version of it. Calls in flight finish.
    pub async fn delete(&self, name: &str) -> Result<(), RegistryError> {
        let who = crate::trust::Authority::system("server");
        self.delete_as(name, &who).await
    }

    /// Deletes a plugin, every version of it, its kv entries and its
    /// ownership, for `who` (an admin of the owning project). A plugin
    /// published later under the same name starts with no state.
    pub async fn delete_as(
        &self,
        name: &str,
        who: &crate::trust::Authority,
    ) -> Result<(), RegistryError> {
        let _guard = self.changes.lock().await;
        self.gate
            .require(name, who, crate::trust::Role::Admin, "delete")?;
        let project = self.gate.owner(name);
        self.store.delete_plugin(name)?;
        let kv_keys = crate::capabilities::kv::purge(&self.store, name)?;
        self.gate.release(name)?;
        self.slots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.metrics.set_loaded(self.loaded_count());
        self.audit_change(
            who,
            "plugin.delete",
            name,
            serde_json::json!({ "name": name, "project": project, "kv_keys_deleted": kv_keys }),
        )
        .await;
        Ok(())
    }

    /// Deletes one version that is not active.
    pub async fn delete_version(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        let who = crate::trust::Authority::system("server");
        self.delete_version_as(name, version, &who).await
    }

    /// Deletes one version that is not active, for `who` (an admin of the
    /// owning project).
    pub async fn delete_version_as(
        &self,
        name: &str,
        version: &str,
        who: &crate::trust::Authority,
    ) -> Result<(), RegistryError> {
        let _guard = self.changes.lock().await;
        self.gate
            .require(name, who, crate::trust::Role::Admin, "delete versions of")?;
        self.store.delete_version(name, version)?;
        self.audit_change(
            who,
            "plugin.delete-version",
            name,
            serde_json::json!({ "name": name, "version": version }),
        )
        .await;
        Ok(())
    }

    /// Records a decision on a held version; an approval that completes
    /// activates the version if its upload asked for that.
    pub async fn decide_approval(
        &self,
        id: &str,
        who: &crate::trust::Authority,
        approve: bool,
        comment: &str,
    ) -> Result<crate::trust::approvals::Approval, RegistryError> {
        let _guard = self.changes.lock().await;
        let approval = self.gate.approvals().decide(id, who, approve, comment)?;
        let what = if approve {
            "approval.approve"
        } else {
            "approval.reject"
        };
        self.audit_change(
            who,
            what,
            &approval.subject,
            serde_json::json!({ "id": id, "subject": approval.subject, "state": approval.state, "comment": comment }),
        )
        .await;
        let wants_activation =
            approval.detail.get("activate") == Some(&serde_json::Value::Bool(true));
        if approval.kind == trust::KIND
            && approval.state == crate::trust::approvals::ApprovalState::Approved
            && wants_activation
        {
            let (name, version) = approval.subject.split_once('@').ok_or_else(|| {
                RegistryError::Conflict(format!("bad subject {}", approval.subject))
            })?;
            let from = self.slot(name).active().map(|p| p.manifest.version.clone());
            self.activate_locked(name, version, "activate").await?;
            self.audit_change(
                who,
                "plugin.activate",
                name,
                serde_json::json!({ "name": name, "from": from, "to": version, "approval": id }),
            )
            .await;
        }
        Ok(approval)
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
        let id = crate::ids::new_id();
        let (result, account) = self
            .runtime
            .invoke_limited(Some(&slot.concurrency), &plugin, call, id)
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
