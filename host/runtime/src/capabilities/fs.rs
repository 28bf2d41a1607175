//! Files in granted directories, through cap-std. Each `[[grants.fs]]` entry
//! mounts a host directory at a guest path, read-only or read-write; the
//! directory is opened once at load and every access goes through cap-std,
//! which refuses `..`, absolute paths and symlinks that lead outside it.

use std::io::{ErrorKind, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};

use crate::runtime::bindings::WitError;
use crate::runtime::bindings::capstan::plugin::fs::Host;
use crate::runtime::state::HostState;

/// Largest file a plugin may read or write, bytes.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Access mode of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Read-only.
    Ro,
    /// Read-write.
    Rw,
}

/// One `[[grants.fs]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FsGrant {
    /// Absolute host directory.
    #[schema(value_type = String)]
    pub host_path: PathBuf,
    /// Absolute guest path it appears at, e.g. `/templates`.
    pub guest_path: String,
    /// `ro` (default) or `rw`.
    #[serde(default = "read_only")]
    pub mode: Mode,
}

fn read_only() -> Mode {
    Mode::Ro
}

/// Checks mounts: absolute paths, no `..`, no duplicates.
pub fn validate(grants: &[FsGrant]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for g in grants {
        if !g.host_path.is_absolute() {
            return Err(format!(
                "host_path `{}` must be absolute",
                g.host_path.display()
            ));
        }
        let guest = Path::new(&g.guest_path);
        if !guest.is_absolute()
            || guest
                .components()
                .any(|c| matches!(c, Component::ParentDir))
            || g.guest_path == "/"
        {
            return Err(format!(
                "guest_path `{}` must be an absolute path below `/` without `..`",
                g.guest_path
            ));
        }
        if !seen.insert(g.guest_path.trim_end_matches('/').to_string()) {
            return Err(format!("guest_path `{}` is mounted twice", g.guest_path));
        }
    }
    Ok(())
}

/// An opened mount.
#[derive(Debug)]
struct Mount {
    guest: String,
    dir: Arc<Dir>,
    mode: Mode,
}

/// The opened directories of a plugin version.
#[derive(Debug, Default)]
pub struct FsPolicy {
    mounts: Vec<Mount>,
}

impl FsPolicy {
    /// Opens every granted directory (the only ambient-authority step).
    pub fn open(grants: &[FsGrant]) -> Result<FsPolicy, String> {
        let mut mounts = Vec::new();
        for g in grants {
            let dir = Dir::open_ambient_dir(&g.host_path, ambient_authority())
                .map_err(|e| format!("cannot open {}: {e}", g.host_path.display()))?;
            mounts.push(Mount {
                guest: g.guest_path.trim_end_matches('/').to_string(),
                dir: Arc::new(dir),
                mode: g.mode,
            });
        }
        // Longest mount first, so nested mounts win.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.guest.len()));
        Ok(FsPolicy { mounts })
    }

    /// The mount and the path relative to it, if `path` is under a mount and
    /// names no parent directory.
    fn resolve(&self, path: &str) -> Result<(&Mount, PathBuf), &'static str> {
        let mount = self
            .mounts
            .iter()
            .find(|m| {
                path == m.guest
                    || path
                        .strip_prefix(&m.guest)
                        .is_some_and(|r| r.starts_with('/'))
            })
            .ok_or("path is not under a granted mount")?;
        let rest = path[mount.guest.len()..].trim_start_matches('/');
        let rel = Path::new(rest);
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err("path must not contain `..`");
        }
        let rel = if rest.is_empty() {
            PathBuf::from(".")
        } else {
            rel.to_path_buf()
        };
        Ok((mount, rel))
    }
}

type FsResult<T> = wasmtime::Result<Result<T, WitError>>;

/// Opens a regular file to read (or, with `write`, to replace).
/// `O_NONBLOCK` keeps the open of a FIFO from waiting for the other end,
/// and the type is checked on the opened handle, so nothing can be swapped
/// in between a check and the open.
fn open_regular(dir: &Dir, rel: &Path, write: bool) -> std::io::Result<cap_std::fs::File> {
    use cap_std::fs::OpenOptionsExt;
    let mut options = cap_std::fs::OpenOptions::new();
    options.custom_flags(libc::O_NONBLOCK);
    if write {
        options.write(true).create(true).truncate(true);
    } else {
        options.read(true);
    }
    let file = dir.open_with(rel, &options)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else {
            "not a regular file (FIFO, socket or device)"
        };
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            format!("{} is {what}", rel.display()),
        ));
    }
    Ok(file)
}

fn io_err(e: std::io::Error) -> WitError {
    match e.kind() {
        ErrorKind::NotFound => WitError::NotFound(e.to_string()),
        ErrorKind::InvalidInput => WitError::InvalidInput(e.to_string()),
        ErrorKind::PermissionDenied => {
            WitError::Denied(format!("{e} (outside the granted directory?)"))
        }
        _ => WitError::Failed(e.to_string()),
    }
}

impl HostState {
    /// Deny first: the path must resolve under a mount with the needed mode.
    fn fs_check(
        &self,
        verb: &str,
        path: &str,
        write: bool,
    ) -> Result<(Arc<Dir>, PathBuf), WitError> {
        let policy = &self.caps.policies.fs;
        match policy.resolve(path) {
            Err(why) => Err(self.deny("fs", verb, path, why)),
            Ok((m, _)) if write && m.mode == Mode::Ro => {
                Err(self.deny("fs", verb, path, "mount is read-only"))
            }
            Ok((m, rel)) => Ok((m.dir.clone(), rel)),
        }
    }

    /// Runs a blocking cap-std operation off the async executor and audits it.
    /// An escape that cap-std refuses is audited as a denial.
    async fn fs_run<T: Send + 'static>(
        &mut self,
        verb: &str,
        path: &str,
        op: impl FnOnce() -> Result<T, std::io::Error> + Send + 'static,
    ) -> Result<T, WitError> {
        let result = tokio::task::spawn_blocking(op)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match result {
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                Err(self.deny("fs", verb, path, &format!("refused by the sandbox: {e}")))
            }
            other => self.audited("fs", verb, path, other.map_err(io_err)),
        }
    }
}

impl Host for HostState {
    #[tracing::instrument(name = "plugin.fs.read_file", skip_all, fields(plugin = %self.call.plugin, path = %path))]
    async fn read_file(&mut self, path: String) -> FsResult<Vec<u8>> {
        let (dir, rel) = match self.fs_check("read", &path, false) {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self
            .fs_run("read", &path, move || {
                let file = open_regular(&dir, &rel, false)?;
                let mut buf = Vec::new();
                file.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf)?;
                if buf.len() as u64 > MAX_FILE_BYTES {
                    return Err(std::io::Error::new(
                        ErrorKind::FileTooLarge,
                        "file larger than 16 MiB",
                    ));
                }
                Ok(buf)
            })
            .await)
    }

    #[tracing::instrument(name = "plugin.fs.write_file", skip_all, fields(plugin = %self.call.plugin, path = %path))]
    async fn write_file(&mut self, path: String, data: Vec<u8>) -> FsResult<()> {
        let (dir, rel) = match self.fs_check("write", &path, true) {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        if data.len() as u64 > MAX_FILE_BYTES {
            return Ok(Err(WitError::InvalidInput(
                "file larger than 16 MiB".into(),
            )));
        }
        Ok(self
            .fs_run("write", &path, move || {
                use std::io::Write;
                open_regular(&dir, &rel, true)?.write_all(&data)
            })
            .await)
    }

    #[tracing::instrument(name = "plugin.fs.list_dir", skip_all, fields(plugin = %self.call.plugin, path = %path))]
    async fn list_dir(&mut self, path: String) -> FsResult<Vec<String>> {
        let (dir, rel) = match self.fs_check("list", &path, false) {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self
            .fs_run("list", &path, move || {
                let mut names = Vec::new();
                for entry in dir.read_dir(&rel)? {
                    names.push(entry?.file_name().to_string_lossy().into_owned());
                }
                names.sort();
                Ok(names)
            })
            .await)
    }

    #[tracing::instrument(name = "plugin.fs.remove_file", skip_all, fields(plugin = %self.call.plugin, path = %path))]
    async fn remove_file(&mut self, path: String) -> FsResult<()> {
        let (dir, rel) = match self.fs_check("remove", &path, true) {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self
            .fs_run("remove", &path, move || dir.remove_file(&rel))
            .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_stays_inside_mounts() {
        let a = tempfile::tempdir().unwrap();
        let policy = FsPolicy::open(&[FsGrant {
            host_path: a.path().into(),
            guest_path: "/data".into(),
            mode: Mode::Ro,
        }])
        .unwrap();
        assert_eq!(
            policy.resolve("/data/x/y.txt").unwrap().1,
            PathBuf::from("x/y.txt")
        );
        assert_eq!(policy.resolve("/data").unwrap().1, PathBuf::from("."));
        assert!(policy.resolve("/database/x").is_err());
        assert!(policy.resolve("/data/../etc/passwd").is_err());
        assert!(policy.resolve("/etc/passwd").is_err());
        assert!(policy.resolve("data/x").is_err());
    }

    #[test]
    fn grants_are_validated() {
        let g = |h: &str, guest: &str| FsGrant {
            host_path: h.into(),
            guest_path: guest.into(),
            mode: Mode::Rw,
        };
        assert!(validate(&[g("relative", "/x")]).is_err());
        assert!(validate(&[g("/tmp", "x")]).is_err());
        assert!(validate(&[g("/tmp", "/")]).is_err());
        assert!(validate(&[g("/tmp", "/a/../b")]).is_err());
        assert!(validate(&[g("/tmp", "/a"), g("/var", "/a/")]).is_err());
        assert!(validate(&[g("/tmp", "/a"), g("/var", "/b")]).is_ok());
    }
}
