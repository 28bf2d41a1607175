//! The watched pipelines directory: every `*.yaml` / `*.yml` file is a
//! pipeline. Changes are debounced; a file whose content changed is
//! validated and stored as the pipeline's next revision (source
//! `directory`). A file that does not validate keeps its error, shown by
//! `GET /v1/pipelines`, and the pipeline keeps its last good revision.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_registry::trust::Authority;
use notify::{RecursiveMode, Watcher};

use super::Engine;

/// Quiet time after the last file event before the directory is rescanned.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Errors of the files that did not load, by file name.
pub type DirectoryErrors = Arc<Mutex<BTreeMap<String, String>>>;

impl Engine {
    /// Scans `dir` now, then after every burst of changes, until the
    /// returned watcher is dropped.
    pub async fn watch_directory(
        self: &Arc<Self>,
        dir: PathBuf,
    ) -> anyhow::Result<notify::RecommendedWatcher> {
        std::fs::create_dir_all(&dir)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        let mut seen = HashMap::new();
        self.scan(&dir, &mut seen).await;
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                engine.scan(&dir, &mut seen).await;
            }
        });
        Ok(watcher)
    }

    /// Errors of pipeline files in the watched directory, by file name.
    pub fn directory_errors(&self) -> BTreeMap<String, String> {
        self.dir_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn scan(&self, dir: &Path, seen: &mut HashMap<PathBuf, String>) {
        let files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect(),
            Err(e) => {
                tracing::error!(dir = %dir.display(), "cannot read the pipelines directory: {e}");
                return;
            }
        };
        let who = Authority::system("directory");
        let mut errors = BTreeMap::new();
        for path in files {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let yaml = match std::fs::read_to_string(&path) {
                Ok(y) => y,
                Err(e) => {
                    errors.insert(name, format!("cannot read: {e}"));
                    continue;
                }
            };
            if seen.get(&path) == Some(&yaml) {
                if let Some(e) = self.directory_errors().get(&name) {
                    errors.insert(name, e.clone());
                }
                continue;
            }
            let label = format!("pipelines/{name}");
            match self
                .put_pipeline(&yaml, &label, None, "directory", &who)
                .await
            {
                Ok((row, true)) => {
                    tracing::info!(pipeline = %row.name, revision = row.revision, file = %label, "pipeline stored")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(file = %label, "pipeline not loaded: {e}");
                    errors.insert(name, e.to_string());
                }
            }
            seen.insert(path, yaml);
        }
        *self.dir_errors.lock().unwrap_or_else(|e| e.into_inner()) = errors;
    }
}
