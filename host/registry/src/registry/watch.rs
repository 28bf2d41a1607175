//! The watched plugins directory: each `*.toml` manifest next to its component
//! (`component = "x.wasm"`, or the manifest's stem with `.wasm`). Changes are
//! debounced, then every entry whose content changed is installed and activated.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::{Registry, Source};
use crate::manifest::Manifest;
use crate::store::digest_of;

/// Quiet time after the last file event before the directory is rescanned.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Scans `dir` once now, then again after every burst of changes, until the
/// returned watcher is dropped.
pub async fn watch_directory(
    registry: Arc<Registry>,
    dir: PathBuf,
) -> anyhow::Result<notify::RecommendedWatcher> {
    std::fs::create_dir_all(&dir)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let mut seen = HashMap::new();
    scan(&registry, &dir, &mut seen).await;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until the directory has been quiet for a while.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            scan(&registry, &dir, &mut seen).await;
        }
    });
    Ok(watcher)
}

/// Installs every manifest whose manifest or component bytes changed since
/// the last scan. Errors are logged and kept for the API.
async fn scan(registry: &Registry, dir: &Path, seen: &mut HashMap<PathBuf, String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(dir = %dir.display(), "cannot read plugins directory: {e}");
            return;
        }
    };
    let mut manifests: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    manifests.sort();
    for path in manifests {
        let key = path.display().to_string();
        let (text, bytes) = match read_entry(&path) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(manifest = %key, "skipping plugin: {e}");
                registry.set_directory_error(&key, Some(e));
                continue;
            }
        };
        let fingerprint = format!("{}:{}", digest_of(text.as_bytes()), digest_of(&bytes));
        if seen.get(&path) == Some(&fingerprint) {
            continue;
        }
        seen.insert(path.clone(), fingerprint);
        match registry
            .install(&text, bytes, Source::Directory, true)
            .await
        {
            Ok(i) => {
                registry.set_directory_error(&key, None);
                if i.changed {
                    tracing::info!(plugin = %i.name, version = %i.version, "loaded from plugins directory");
                }
            }
            Err(e) => {
                tracing::error!(manifest = %key, "plugin not loaded: {e}");
                registry.set_directory_error(&key, Some(e.to_string()));
            }
        }
    }
}

fn read_entry(manifest_path: &Path) -> Result<(String, Vec<u8>), String> {
    let text = std::fs::read_to_string(manifest_path).map_err(|e| format!("read manifest: {e}"))?;
    let manifest = Manifest::parse(&text).map_err(|e| e.to_string())?;
    let component = match &manifest.component {
        Some(rel) => {
            let rel = Path::new(rel);
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(format!(
                    "component path `{}` must stay inside the plugins directory",
                    rel.display()
                ));
            }
            manifest_path.with_file_name(rel)
        }
        None => manifest_path.with_extension("wasm"),
    };
    let bytes = std::fs::read(&component)
        .map_err(|e| format!("read component {}: {e}", component.display()))?;
    Ok((text, bytes))
}
