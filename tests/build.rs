//! Builds the test guests in `tests/guests/` from source to wasm32-wasip2
//! and generates a path constant for each (as wasmtime's test-programs do).

#[path = "../host/capstan/guest_build.rs"]
mod guest_build;

use std::fmt::Write;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["tests/guests", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let guests = guest_build::packages_in(&root.join("tests").join("guests"))?;
    let names: Vec<String> = guests.iter().map(|(n, _)| n.clone()).collect();
    let built = guest_build::build_guests(&names, &out_dir)?;
    let mut code = String::new();
    for (name, path) in &built {
        let konst = name.to_uppercase().replace('-', "_");
        writeln!(code, "/// Path of the `{name}` test guest component.")?;
        writeln!(
            code,
            "pub const {konst}: &str = {:?};",
            path.display().to_string()
        )?;
    }
    writeln!(code, "/// Every test guest, by package name.")?;
    writeln!(code, "pub const ALL: &[(&str, &str)] = &[")?;
    for (name, _) in &built {
        writeln!(
            code,
            "    ({name:?}, {}),",
            name.to_uppercase().replace('-', "_")
        )?;
    }
    writeln!(code, "];")?;
    std::fs::write(out_dir.join("guests.rs"), code)?;
    Ok(())
}
