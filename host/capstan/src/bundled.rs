//! The example plugins shipped inside the binary (built from `plugins/` by
//! `build.rs`), installed into a fresh data directory on first start.

/// One bundled plugin.
#[derive(Debug, Clone, Copy)]
pub struct Bundled {
    /// Cargo package name.
    pub package: &'static str,
    /// Its `capstan.toml`.
    pub manifest: &'static str,
    /// The component bytes.
    pub component: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

/// The bundled plugin whose manifest names `name`.
pub fn find(name: &str) -> Option<&'static Bundled> {
    BUNDLED
        .iter()
        .find(|b| crate::manifest::Manifest::parse(b.manifest).is_ok_and(|m| m.name == name))
}
