//! The registry as the validator's [`PluginCatalog`]: which plugins exist,
//! at which version, in which role.

use std::sync::Arc;

use capstan_store::Store;

use crate::validate::PluginCatalog;

/// Plugins as stored (the active version when none is named).
pub struct RegistryCatalog {
    store: Arc<Store>,
}

impl RegistryCatalog {
    /// Over the store the registry keeps its versions in.
    pub fn new(store: Arc<Store>) -> RegistryCatalog {
        RegistryCatalog { store }
    }
}

impl PluginCatalog for RegistryCatalog {
    fn kind_of(&self, name: &str, version: Option<&str>) -> Option<String> {
        let version = match version {
            Some(v) => v.to_string(),
            None => self.store.active_version(name).ok()??,
        };
        Some(self.store.version(name, &version).ok()??.role)
    }
}
