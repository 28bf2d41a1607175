//! The `config` host interface: the plugin's own manifest settings.
//! A plugin sees its settings and nothing else, so no grant is needed.

use crate::runtime::bindings::capstan::plugin::config::Host;
use crate::runtime::state::HostState;

impl Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self
            .call
            .settings
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone()))
    }

    async fn all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self.call.settings.as_ref().clone())
    }
}
