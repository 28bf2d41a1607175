//! Keeping a replica's loaded plugins in line with the shared store: when
//! another replica uploads, activates, rolls back or deletes a plugin, the
//! store announces it ([`crate::store::changes`]) and this replica loads
//! (compiling off the request path) and swaps in the version that is now
//! active, or drops the plugin. Calls in flight finish on the version they
//! started with, as with a local change.

use super::{Registry, RegistryError};

impl Registry {
    /// Makes the loaded version of `name` the one the store says is active.
    pub async fn sync_plugin(&self, name: &str) -> Result<(), RegistryError> {
        let _guard = self.changes.lock().await;
        self.gate.refresh_owner(name)?;
        let Some(version) = self.store.active_version(name)? else {
            let removed = self
                .slots
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
            if removed.is_some() {
                self.metrics.set_loaded(self.loaded_count());
                tracing::info!(plugin = %name, "deleted on another replica; unloaded");
            }
            return Ok(());
        };
        let digest = self.store.version(name, &version)?.map(|r| r.digest);
        let loaded = self.get_slot(name).ok().and_then(|s| s.active());
        if let (Some(p), Some(d)) = (&loaded, &digest)
            && p.manifest.version == version
            && *p.digest == **d
        {
            return Ok(());
        }
        match self.load_version(name, &version).await {
            Ok(p) => {
                self.swap_in(name, p);
                tracing::info!(plugin = %name, %version, "active version changed on another replica; swapped in");
                Ok(())
            }
            Err(e) => {
                self.record_failure(name, &version, &e);
                Err(e)
            }
        }
    }

    /// Syncs every plugin, stored or loaded (after notices may have been
    /// missed). Returns how many could not be loaded.
    pub async fn sync_all(&self) -> Result<usize, RegistryError> {
        let mut names: Vec<String> = self
            .store
            .active_versions()?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        names.extend(self.names());
        names.sort();
        names.dedup();
        let mut failed = 0;
        for name in names {
            if let Err(e) = self.sync_plugin(&name).await {
                tracing::error!(plugin = %name, "sync failed: {e}");
                failed += 1;
            }
        }
        Ok(failed)
    }
}
