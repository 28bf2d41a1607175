//! Turning component bytes into a `Prepared` plugin: compile (or load the
//! precompiled artifact), link, check the role's export, trial-instantiate.

use std::path::Path;
use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, InstancePre};

use super::bindings::{alert_handler, deploy_step, metrics_source, provisioner};
use super::engine::Runtime;
use super::error::LoadError;
use super::limits::Limiter;
use super::state::{CallInfo, HostState};
use crate::capabilities::{CallCaps, Policies};
use crate::manifest::{Manifest, Role};

/// The export lookups of one role, resolved once at load.
#[derive(Clone)]
pub(super) enum RoleIndices {
    Provisioner(Arc<provisioner::GuestIndices>),
    DeployStep(Arc<deploy_step::GuestIndices>),
    MetricsSource(Arc<metrics_source::GuestIndices>),
    AlertHandler(Arc<alert_handler::GuestIndices>),
}

/// A plugin version ready to run: compiled, linked and checked against its role.
#[derive(Clone)]
pub struct Prepared {
    /// The validated manifest.
    pub manifest: Arc<Manifest>,
    /// sha256 of the component bytes, hex.
    pub digest: Arc<str>,
    pub(super) pre: InstancePre<HostState>,
    pub(super) indices: RoleIndices,
    pub(super) settings: Arc<Vec<(String, String)>>,
    pub(super) policies: Arc<Policies>,
}

impl Prepared {
    /// The version's grants as checked at load: host-side actions done for
    /// the plugin (an alert handler's `kube` actions, the provisioning
    /// engine's calls) check the same grants.
    pub fn policies(&self) -> &Arc<Policies> {
        &self.policies
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("digest", &self.digest)
            .finish()
    }
}

impl Prepared {
    pub(super) fn call_caps(&self, env: &Arc<crate::capabilities::CapabilityEnv>) -> CallCaps {
        CallCaps {
            env: env.clone(),
            policies: self.policies.clone(),
            revealed: Default::default(),
        }
    }
}

impl Runtime {
    /// Checks the header, then compiles `bytes`. CPU-heavy: call it off the
    /// request path (e.g. in `spawn_blocking`).
    pub fn compile(&self, bytes: &[u8]) -> Result<Component, LoadError> {
        check_header(bytes)?;
        Component::new(&self.engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))
    }

    /// Compiles `bytes`, reusing the precompiled artifact at `artifact` when it
    /// was produced by a compatible engine, and (re)writing it otherwise.
    pub fn compile_cached(&self, bytes: &[u8], artifact: &Path) -> Result<Component, LoadError> {
        if artifact.exists() {
            // SAFETY: the artifact directory belongs to this server, files are
            // written atomically by `compile_cached` itself from `Component::serialize`,
            // and their name carries the engine's compatibility key.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(&self.engine, artifact) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %artifact.display(), "recompiling: cached artifact unusable: {e}")
                }
            }
        }
        let component = self.compile(bytes)?;
        let serialized = component
            .serialize()
            .map_err(|e| LoadError::Cache(format!("serialize: {e}")))?;
        // The artifact is a cache: a version whose blob is stored runs
        // without it (and is compiled again on the next start).
        if let Err(e) = crate::store::write_atomic(artifact, &serialized) {
            tracing::warn!(path = %artifact.display(), "compiled artifact not cached: {e}");
        }
        Ok(component)
    }

    /// Links `component`, checks it against `manifest.role`'s export, and
    /// instantiates it once to prove it can run.
    pub async fn prepare(
        &self,
        manifest: Manifest,
        digest: &str,
        component: &Component,
    ) -> Result<Prepared, LoadError> {
        let role = manifest.role;
        check_exports(&self.engine, component, role)?;
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::UnknownImport(format!("{e:#}")))?;
        let bad_export = |e: wasmtime::Error| LoadError::BadExport {
            export: role.export().to_string(),
            reason: format!("{e:#}"),
        };
        let indices = match role {
            Role::Provisioner => RoleIndices::Provisioner(Arc::new(
                provisioner::GuestIndices::new(&pre).map_err(bad_export)?,
            )),
            Role::DeployStep => RoleIndices::DeployStep(Arc::new(
                deploy_step::GuestIndices::new(&pre).map_err(bad_export)?,
            )),
            Role::MetricsSource => RoleIndices::MetricsSource(Arc::new(
                metrics_source::GuestIndices::new(&pre).map_err(bad_export)?,
            )),
            Role::AlertHandler => RoleIndices::AlertHandler(Arc::new(
                alert_handler::GuestIndices::new(&pre).map_err(bad_export)?,
            )),
        };
        let policies = Policies::prepare(&manifest.grants, &self.env).map_err(LoadError::Grants)?;
        let prepared = Prepared {
            policies: Arc::new(policies),
            settings: Arc::new(manifest.settings_as_strings()),
            manifest: Arc::new(manifest),
            digest: digest.into(),
            pre,
            indices,
        };
        self.trial_instantiate(&prepared).await?;
        Ok(prepared)
    }

    /// Instantiates once and resolves the typed exports: this is where a
    /// function with the right name but the wrong signature is caught.
    async fn trial_instantiate(&self, p: &Prepared) -> Result<(), LoadError> {
        let call = CallInfo {
            plugin: p.manifest.name.as_str().into(),
            version: p.manifest.version.as_str().into(),
            invocation: "load-check".into(),
            settings: p.settings.clone(),
        };
        let limiter = Limiter::new(self.memory_cap(&p.manifest), 5_000);
        let mut store = Store::new(
            &self.engine,
            HostState::new(call, limiter, p.call_caps(&self.env)),
        );
        store.limiter(|s| &mut s.limiter);
        store
            .set_fuel(u64::MAX)
            .map_err(|e| LoadError::Instantiate(e.to_string()))?;
        store.set_epoch_deadline(500);
        let instance = p
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let bad = |e: wasmtime::Error| LoadError::BadExport {
            export: p.manifest.role.export().to_string(),
            reason: format!("{e:#}"),
        };
        match &p.indices {
            RoleIndices::Provisioner(i) => i.load(&mut store, &instance).map(drop).map_err(bad),
            RoleIndices::DeployStep(i) => i.load(&mut store, &instance).map(drop).map_err(bad),
            RoleIndices::MetricsSource(i) => i.load(&mut store, &instance).map(drop).map_err(bad),
            RoleIndices::AlertHandler(i) => i.load(&mut store, &instance).map(drop).map_err(bad),
        }
    }

    pub(super) fn memory_cap(&self, m: &Manifest) -> usize {
        let mb = m
            .limits
            .memory_mb
            .unwrap_or(self.config.default_memory_mb)
            .min(self.config.max_memory_mb);
        (mb as usize) << 20
    }
}

fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return Err(LoadError::NotWasm(format!(
            "{} bytes without the `\\0asm` magic number",
            bytes.len()
        )));
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Err(LoadError::CoreModule),
        [_, _, 1, 0] => Ok(()),
        _ => Err(LoadError::NotWasm(format!(
            "unknown WebAssembly version/layer {:02x?}",
            &bytes[4..8]
        ))),
    }
}

fn check_exports(
    engine: &wasmtime::Engine,
    component: &Component,
    role: Role,
) -> Result<(), LoadError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
        .map(|(name, _)| name.to_string())
        .collect();
    if exports.iter().any(|e| e == role.export()) {
        return Ok(());
    }
    let hint = Role::ALL
        .into_iter()
        .find(|r| exports.iter().any(|e| e == r.export()))
        .map(|r| format!(" (it looks like a `{r}` plugin)"))
        .unwrap_or_default();
    let found = if exports.is_empty() {
        "; it exports no interfaces".to_string()
    } else {
        format!("; it exports {}{hint}", exports.join(", "))
    };
    Err(LoadError::WrongWorld {
        role: role.to_string(),
        expected: role.export().to_string(),
        found,
    })
}
