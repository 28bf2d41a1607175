//! Loading the key at startup and `capstan secrets rotate-key`.
//!
//! A rotation goes in three durable steps, each of which leaves a state the
//! server starts from:
//! 1. the new key is written next to the old one, as `<key file>.new`
//!    (0600, fsynced); a crash here leaves the database under the old key,
//!    and the next start or rotation deletes the unused `.new` file;
//! 2. every secret and the key check are re-encrypted under the new key in
//!    one database transaction, with the audit record of the rotation; a
//!    crash before the commit changes nothing, after it the database is
//!    under the new key while the key file still holds the old one;
//! 3. `.new` is renamed over the key file; a crash between 2 and 3 is
//!    completed at the next start: the old key no longer matches the key
//!    check, the `.new` key does, so it is renamed into place.

use std::path::Path;

use super::key::{self, KeyBytes, KeyError, KeySource};
use super::rekey;
use crate::capabilities::audit::{self, AuditRecord};
use crate::store::Store;

/// The key from `source`, after finishing an interrupted rotation; a
/// missing key file is created only on a database without secrets.
pub(super) fn load_key(source: &KeySource, store: &Store) -> Result<KeyBytes, KeyError> {
    let path = match source {
        KeySource::Inline(text) => {
            return key::parse(text).map_err(|problem| KeyError::Unusable {
                source_desc: source.describe(),
                problem,
            });
        }
        KeySource::File(path) => path,
    };
    finish_rotation(path, store)?;
    if let Some(k) = key::read_file(path)? {
        return Ok(k);
    }
    if store.with(rekey::has_secrets)? {
        return Err(KeyError::Missing {
            path: path.display().to_string(),
        });
    }
    let k = key::generate();
    match key::write_file(path, &k, false) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), "generated a secrets key (mode 0600); back it up, or keep it outside the data directory (secrets_key_file)");
            Ok(k)
        }
        // Another process created it first: use theirs.
        Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
            key::read_file(path)?.ok_or_else(|| KeyError::Unusable {
                source_desc: source_desc(path),
                problem: "it exists but cannot be read (a dangling link?)".into(),
            })
        }
        Err(e) => Err(e),
    }
}

fn source_desc(path: &Path) -> String {
    KeySource::File(path.to_path_buf()).describe()
}

/// Completes or discards a rotation a crash interrupted (see the module doc).
fn finish_rotation(path: &Path, store: &Store) -> Result<(), KeyError> {
    let next = key::next_path(path);
    let Some(new) = key::read_file(&next)? else {
        return Ok(());
    };
    let current = key::read_file(path)?;
    let current_ok = match current {
        Some(cur) => store.with(|c| rekey::key_matches(c, &cur))? != Some(false),
        None => false,
    };
    if current_ok {
        std::fs::remove_file(&next).map_err(|source| KeyError::Io {
            what: "remove the unused key of an interrupted rotation",
            path: next.display().to_string(),
            source,
        })?;
        tracing::warn!(path = %next.display(), "removed the new key of a rotation that did not commit; the old key stays in use");
    } else if store.with(|c| rekey::key_matches(c, &new))? == Some(true) {
        key::swap(&next, path)?;
        tracing::warn!(path = %path.display(), "completed an interrupted key rotation: the new key is now in place");
    }
    Ok(())
}

/// Re-encrypts every secret under a fresh key and swaps it into `path`
/// (see the module doc); audited as `secrets.rotate-key` by `actor`.
/// The caller holds the data directory (no server runs on it). Returns how
/// many secrets were re-encrypted.
pub fn rotate_key(path: &Path, store: &Store, actor: &str) -> Result<usize, KeyError> {
    let source = KeySource::File(path.to_path_buf());
    let old = load_key(&source, store)?;
    store.with(|c| rekey::prepare(c, &old, &source.describe()))?;
    let new = key::generate();
    let next = key::next_path(path);
    key::write_file(&next, &new, true)?;
    let record = |conn: &mut crate::store::sql::Conn, n: usize| {
        let detail = serde_json::json!({ "secrets": n, "key_file": path.display().to_string() });
        let mut r = AuditRecord::change(actor, "secrets.rotate-key", "secrets", detail);
        r.capability = "secrets".into();
        audit::insert_now(conn, r)
    };
    let n = match store.with(|c| rekey::reencrypt(c, &old, &new, record)) {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&next);
            return Err(e);
        }
    };
    key::swap(&next, path)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::secrets::SecretBox;

    /// Runs `test` on a fresh store of every backend, with the key file's
    /// path in its data directory.
    fn each(test: impl Fn(&Store, &Path)) {
        for t in crate::store::testing::backends() {
            test(&t.store, &t.dir.path().join("secrets.key"));
        }
    }

    fn open(path: &Path, store: &Store) -> Result<SecretBox, KeyError> {
        SecretBox::open(&KeySource::File(path.to_path_buf()), store)
    }

    #[test]
    fn rotation_reencrypts_everything_and_is_audited() {
        each(|store, path| {
            let b = store.backend();
            let sb = open(path, store).unwrap();
            sb.put(store, "a", "alpha").unwrap();
            sb.put(store, "b", "beta").unwrap();
            let before = key::read_file(path).unwrap().unwrap();
            assert_eq!(rotate_key(path, store, "cli:test").unwrap(), 2, "{b:?}");
            let after = key::read_file(path).unwrap().unwrap();
            assert_ne!(before, after, "{b:?}");
            assert!(!key::next_path(path).exists(), "{b:?}");
            let sb = open(path, store).unwrap();
            assert_eq!(sb.get(store, "a").unwrap(), "alpha", "{b:?}");
            assert_eq!(sb.get(store, "b").unwrap(), "beta", "{b:?}");
            // The old key is refused from now on.
            let stale = KeySource::Inline(base64_of(&before));
            let e = SecretBox::open(&stale, store).err().unwrap();
            assert!(matches!(e, KeyError::WrongKey { .. }), "{b:?}: {e}");
            let row = store
                .with(|c| {
                    c.row(
                        "SELECT verb, detail FROM audit WHERE actor = 'cli:test'",
                        crate::store::args![],
                    )
                })
                .unwrap()
                .unwrap();
            let (verb, detail): (String, String) = (row.get(0).unwrap(), row.get(1).unwrap());
            assert_eq!(verb, "secrets.rotate-key", "{b:?}");
            assert!(detail.contains("\"secrets\":2"), "{b:?}: {detail}");
        });
    }

    #[test]
    fn a_crash_before_the_commit_keeps_the_old_key() {
        each(|store, path| {
            let b = store.backend();
            open(path, store).unwrap().put(store, "a", "alpha").unwrap();
            let old = key::read_file(path).unwrap().unwrap();
            // Step 1 done, step 2 never committed.
            key::write_file(&key::next_path(path), &key::generate(), true).unwrap();
            let sb = open(path, store).unwrap();
            assert_eq!(sb.get(store, "a").unwrap(), "alpha", "{b:?}");
            assert_eq!(key::read_file(path).unwrap(), Some(old), "{b:?}");
            assert!(!key::next_path(path).exists(), "{b:?}");
        });
    }

    #[test]
    fn a_crash_after_the_commit_is_completed_at_start() {
        each(|store, path| {
            let b = store.backend();
            open(path, store).unwrap().put(store, "a", "alpha").unwrap();
            let old = key::read_file(path).unwrap().unwrap();
            // Steps 1 and 2 done, the swap (3) never happened.
            let new = key::generate();
            key::write_file(&key::next_path(path), &new, true).unwrap();
            store
                .with(|c| rekey::reencrypt(c, &old, &new, |_, _| Ok(())))
                .unwrap();
            let sb = open(path, store).unwrap();
            assert_eq!(sb.get(store, "a").unwrap(), "alpha", "{b:?}");
            assert_eq!(key::read_file(path).unwrap(), Some(new), "{b:?}");
            assert!(!key::next_path(path).exists(), "{b:?}");
        });
    }

    #[test]
    fn a_missing_key_with_secrets_stored_is_refused() {
        each(|store, path| {
            let b = store.backend();
            open(path, store).unwrap().put(store, "a", "x").unwrap();
            std::fs::remove_file(path).unwrap();
            let e = open(path, store).err().unwrap().to_string();
            assert!(
                e.contains("is missing") && e.contains(&path.display().to_string()),
                "{b:?}: {e}"
            );
            assert!(
                !path.exists(),
                "{b:?}: no key was generated over the lost one"
            );
        });
    }

    fn base64_of(k: &KeyBytes) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(k)
    }
}
