//! The one place host bindings are generated from `wit/`.
//!
//! Bindings come from the `capstan-host` world, which imports every host
//! interface and exports every role. A plugin exports one role only; the
//! runtime uses that role's `GuestIndices` on its own, so a plugin is never
//! asked for the other roles' exports.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "capstan-host",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::capstan::plugin::types::Error as WitError;
pub use self::exports::capstan::plugin::{alert_handler, deploy_step, metrics_source, provisioner};

#[cfg(test)]
mod tests {
    use wasmtime::component::{Component, HasSelf, Linker};
    use wasmtime::{Config, Engine};

    use super::CapstanHost;
    use crate::runtime::state::HostState;

    /// A component importing `capstan:plugin/kube` with the given functions,
    /// as `wit-component` writes it (the shared `error` type, then the funcs).
    fn importing(funcs: &str) -> String {
        format!(
            r#"(component
                (type $error (variant (case "invalid-input" string) (case "denied" string)
                    (case "not-found" string) (case "failed" string) (case "retryable" string)))
                (import "capstan:plugin/kube@0.1.0" (instance
                    (export "error" (type $e (eq $error)))
                    {funcs}
                ))
            )"#
        )
    }

    const APPLY: &str = r#"(export "apply" (func (param "cluster" string) (param "manifest" string)
        (param "dry-run" bool) (result (result string (error $e)))))"#;
    const DELETE_ALL: &str =
        r#"(export "delete-all" (func (param "cluster" string) (result (result (error $e)))))"#;

    /// Interfaces may only grow: a guest compiled against an older `kube`
    /// (without `apply-checked`) must still link against today's host.
    #[test]
    fn a_guest_built_before_apply_checked_still_links() {
        let mut config = Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config).unwrap();
        let mut linker = Linker::<HostState>::new(&engine);
        CapstanHost::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s).unwrap();
        let link = |funcs: &str| {
            let wasm = wat::parse_str(importing(funcs)).expect("valid WAT");
            let component = Component::new(&engine, wasm).unwrap();
            linker.instantiate_pre(&component).map(drop)
        };
        link(APPLY).expect("the old import links");
        let missing = link(DELETE_ALL).unwrap_err();
        assert!(format!("{missing:#}").contains("delete-all"), "{missing:#}");
    }
}
