//! The key that encrypts secrets at rest: where it comes from (inline, or a
//! key file), reading it strictly, and creating a key file once, mode 0600
//! from the first byte.
//!
//! A key that cannot be read is never replaced: only a key file that does
//! not exist, on a database that holds no secrets yet, is created. Anything
//! else (permission denied, a directory in its place, bad base64, wrong
//! length) stops the server with a message naming the file.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;

/// A 256-bit AES-GCM key.
pub type KeyBytes = [u8; 32];

const ADVICE: &str = "the server never replaces a key it cannot read, since every stored \
    secret would be lost; fix the file, or point secrets_key_file / \
    CAPSTAN_SECRETS_KEY_FILE (or CAPSTAN_SECRETS_KEY) at the right key";

/// Where the secrets key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Given inline (`secrets_key` / `CAPSTAN_SECRETS_KEY`), base64.
    Inline(String),
    /// A key file (`secrets_key_file` / `CAPSTAN_SECRETS_KEY_FILE`, default
    /// `<data_dir>/secrets.key`).
    File(PathBuf),
}

impl KeySource {
    /// The source in effect: an inline key, else the key file, else
    /// `<data_dir>/secrets.key`. Both inline and file is an error.
    pub fn resolve(
        inline: Option<&str>,
        file: Option<&Path>,
        data_dir: &Path,
    ) -> Result<KeySource, KeyError> {
        match (inline, file) {
            (Some(_), Some(f)) => Err(KeyError::Config(format!(
                "both secrets_key (CAPSTAN_SECRETS_KEY) and secrets_key_file ({}) are set; set one",
                f.display()
            ))),
            (Some(k), None) => Ok(KeySource::Inline(k.to_string())),
            (None, Some(f)) => Ok(KeySource::File(f.to_path_buf())),
            (None, None) => Ok(KeySource::File(data_dir.join("secrets.key"))),
        }
    }

    /// How to name the source in messages.
    pub fn describe(&self) -> String {
        match self {
            KeySource::Inline(_) => "secrets_key (CAPSTAN_SECRETS_KEY)".into(),
            KeySource::File(p) => format!("key file {}", p.display()),
        }
    }
}

/// Why the secrets key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The configuration is contradictory.
    #[error("{0}")]
    Config(String),
    /// The key exists but cannot be read or parsed.
    #[error("cannot use the secrets key from {source_desc}: {problem}; {ADVICE}")]
    Unusable {
        /// Which source (names the file).
        source_desc: String,
        /// What is wrong.
        problem: String,
    },
    /// The key file is missing although secrets are stored.
    #[error(
        "secrets key file {path} is missing, but the database holds secrets encrypted under a key; \
         restore the file (or point secrets_key_file / CAPSTAN_SECRETS_KEY_FILE at it). \
         A new key is only generated for a database without secrets"
    )]
    Missing {
        /// The key file.
        path: String,
    },
    /// The key does not decrypt what is stored.
    #[error(
        "the secrets key from {source_desc} is not the key the stored secrets were encrypted with; \
         restore the right key (an interrupted `capstan secrets rotate-key` is completed \
         automatically from <key file>.new)"
    )]
    WrongKey {
        /// Which source.
        source_desc: String,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The database failed.
    #[error("secrets database: {0}")]
    Db(#[from] crate::store::sql::DbError),
    /// A stored secret does not decrypt (rotation refuses to go on).
    #[error("{0}")]
    Secret(String),
}

/// Parses base64 key text (surrounding whitespace ignored).
pub fn parse(text: &str) -> Result<KeyBytes, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64 ({e})"))?;
    let len = bytes.len();
    bytes
        .try_into()
        .map_err(|_| format!("must be 32 bytes (base64), got {len}"))
}

/// The key in `path`; `None` only if no file (or link) exists there.
pub fn read_file(path: &Path) -> Result<Option<KeyBytes>, KeyError> {
    let unusable = |problem: String| KeyError::Unusable {
        source_desc: format!("key file {}", path.display()),
        problem,
    };
    if std::fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| unusable(format!("cannot read it: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| unusable("not base64 text".into()))?;
    let key = parse(&text).map_err(unusable)?;
    warn_if_open(path);
    Ok(Some(key))
}

#[cfg(unix)]
fn warn_if_open(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", m.permissions().mode() & 0o777),
            "the secrets key file is readable by others; chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_open(_path: &Path) {}

/// A fresh random key.
pub fn generate() -> KeyBytes {
    rand::random()
}

/// Writes `key` to `path`, mode 0600 from creation: a temporary sibling
/// created 0600, written and fsynced, then linked into place. Without
/// `replace`, an existing file is kept (and [`KeyError::Io`] with
/// `AlreadyExists` returned): two servers starting at once cannot clobber
/// each other's key. With `replace`, the file is atomically renamed over.
pub fn write_file(path: &Path, key: &KeyBytes, replace: bool) -> Result<(), KeyError> {
    let io = |what, source| KeyError::Io {
        what,
        path: path.display().to_string(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let text = format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let written = create_private(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("write the secrets key", e));
    }
    let placed = if replace {
        std::fs::rename(&tmp, path)
    } else {
        // A hard link fails if the name exists: an atomic create-if-absent.
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        linked
    };
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("place the secrets key at", e));
    }
    sync_dir(dir);
    Ok(())
}

/// Atomically renames `from` over `to` and makes the rename durable.
pub fn swap(from: &Path, to: &Path) -> Result<(), KeyError> {
    std::fs::rename(from, to).map_err(|source| KeyError::Io {
        what: "rename the new secrets key over",
        path: to.display().to_string(),
        source,
    })?;
    sync_dir(to.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// `path` with `.new` appended: where a rotation puts the next key.
pub fn next_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".new");
    PathBuf::from(s)
}

#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_none_and_a_written_one_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        assert!(read_file(&path).unwrap().is_none());
        let key = generate();
        write_file(&path, &key, false).unwrap();
        assert_eq!(read_file(&path).unwrap(), Some(key));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Create-if-absent never clobbers; replace does.
        let other = generate();
        let e = write_file(&path, &other, false).unwrap_err();
        assert!(
            matches!(&e, KeyError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
            "{e}"
        );
        assert_eq!(read_file(&path).unwrap(), Some(key));
        write_file(&path, &other, true).unwrap();
        assert_eq!(read_file(&path).unwrap(), Some(other));
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn unreadable_keys_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        type Make<'a> = &'a dyn Fn(&Path);
        let cases: [(&str, Make<'_>, &str); 4] = [
            (
                "a-dir.key",
                &|p| std::fs::create_dir(p).unwrap(),
                "cannot read it",
            ),
            (
                "short.key",
                &|p| std::fs::write(p, "c2hvcnQ=").unwrap(),
                "must be 32 bytes",
            ),
            (
                "junk.key",
                &|p| std::fs::write(p, "not base64!").unwrap(),
                "not base64",
            ),
            (
                "binary.key",
                &|p| std::fs::write(p, [0xff, 0xfe]).unwrap(),
                "not base64",
            ),
        ];
        for (name, make, needle) in cases {
            let path = dir.path().join(name);
            make(&path);
            let e = read_file(&path).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains(needle), "{e}");
        }
    }
}
