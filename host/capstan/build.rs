//! Builds the example plugins in `plugins/` from source to wasm32-wasip2 and
//! generates `bundled.rs`, so `capstan serve` ships them with no other step.

#[path = "guest_build.rs"]
mod guest_build;

use std::fmt::Write;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let root = guest_build::workspace_root();
    for dir in ["plugins", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let plugins = guest_build::packages_in(&root.join("plugins"))?;
    let names: Vec<String> = plugins.iter().map(|(n, _)| n.clone()).collect();
    let built = guest_build::build_guests(&names, &out_dir)?;
    let mut code = String::from(
        "/// Example plugins compiled into the binary.\npub const BUNDLED: &[Bundled] = &[\n",
    );
    for ((name, dir), (_, wasm)) in plugins.iter().zip(&built) {
        let manifest = dir.join("capstan.toml");
        anyhow::ensure!(manifest.exists(), "plugin {name} has no capstan.toml");
        writeln!(
            code,
            "    Bundled {{ package: {name:?}, manifest: include_str!({:?}), component: include_bytes!({:?}) }},",
            manifest.canonicalize()?.display().to_string(),
            wasm.display().to_string()
        )?;
    }
    code.push_str("];\n");
    std::fs::write(out_dir.join("bundled.rs"), code)?;
    Ok(())
}
