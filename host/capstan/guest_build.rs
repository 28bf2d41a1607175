//! Builds this workspace's Wasm guest crates for `wasm32-wasip2`.
//! Shared by the build scripts of `capstan` (example plugins) and
//! `capstan-tests` (test guests) through `#[path]`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `packages` with the `guest` profile and copies each component to
/// `out_dir/<package>.wasm`. Returns (package, path) pairs.
pub fn build_guests(packages: &[String], out_dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    ensure_wasm_target()?;
    let workspace = workspace_root();
    // OUT_DIR is <target>/[<triple>/]<profile>/build/<pkg>/out; guests get a
    // target dir of their own beside it so the outer build's lock is not shared.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|p| p.join("wasm-guests"))
        .unwrap_or_else(|| workspace.join("target").join("wasm-guests"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "guest"])
        .arg("--target-dir")
        .arg(&target_dir);
    for p in packages {
        cmd.args(["-p", p]);
    }
    // The outer build's settings (clippy's wrapper, host rustflags, profile)
    // must not leak into the guest build.
    for (key, _) in std::env::vars() {
        let leaks = key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_MAKEFLAGS"
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
            || key == "TARGET"
            || key == "HOST"
            || key == "PROFILE"
            || key == "OPT_LEVEL"
            || key == "DEBUG";
        if leaks {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status()?;
    anyhow::ensure!(
        status.success(),
        "building guests {packages:?} for wasm32-wasip2 failed ({status}); is the target installed? (`rustup target add wasm32-wasip2`)"
    );
    let mut built = Vec::new();
    for p in packages {
        let file = format!("{}.wasm", p.replace('-', "_"));
        let src = target_dir.join("wasm32-wasip2").join("guest").join(&file);
        let dst = out_dir.join(&file);
        std::fs::copy(&src, &dst).map_err(|e| anyhow::anyhow!("copy {}: {e}", src.display()))?;
        built.push((p.clone(), dst));
    }
    Ok(built)
}

/// rustup installs a toolchain file's targets only when it installs the
/// toolchain itself, so a machine that already had the toolchain may lack
/// `wasm32-wasip2`: add it (rustup is how the toolchain file is honoured),
/// or say exactly what to run.
fn ensure_wasm_target() -> anyhow::Result<()> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let target = sysroot.join("lib/rustlib/wasm32-wasip2");
    if target.is_dir() {
        return Ok(());
    }
    // Run again once the target is there, so that cargo stops replaying the
    // warning below on every build.
    println!("cargo:rerun-if-changed={}", target.display());
    println!(
        "cargo:warning=the wasm32-wasip2 target is missing; running `rustup target add wasm32-wasip2`"
    );
    let added = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status();
    match added {
        Ok(s) if s.success() => Ok(()),
        other => anyhow::bail!(
            "the wasm32-wasip2 target is not installed and `rustup target add wasm32-wasip2` failed ({other:?}); run it yourself (in this directory, so that rust-toolchain.toml picks the toolchain) and build again"
        ),
    }
}

/// The workspace root: the nearest ancestor of the package being built
/// whose `Cargo.toml` has a `[workspace]` table.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml"))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
        })
        .unwrap_or(here)
        .to_path_buf()
}

/// Package names of the crates directly under `dir` (each `*/Cargo.toml`).
pub fn packages_in(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let manifest = path.join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest)?;
        let name = text
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("name = \"")
                    .and_then(|r| r.strip_suffix('"'))
            })
            .ok_or_else(|| anyhow::anyhow!("no package name in {}", manifest.display()))?;
        found.push((name.to_string(), path));
    }
    found.sort();
    Ok(found)
}
