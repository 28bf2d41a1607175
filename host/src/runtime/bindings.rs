//! The one place host bindings are generated from `wit/`.
//!
//! Bindings come from the `capstan-host` world, which imports every host
//! interface and exports every role. A plugin exports one role only; the
//! runtime uses that role's `GuestIndices` on its own, so a plugin is never
//! asked for the other roles' exports.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "capstan-host",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::capstan::plugin::types::Error as WitError;
pub use self::exports::capstan::plugin::{alert_handler, deploy_step, metrics_source, provisioner};
