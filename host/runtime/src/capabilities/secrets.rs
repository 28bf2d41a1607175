//! Named secrets: stored by an operator through the API, encrypted at rest
//! (AES-256-GCM, each ciphertext bound to its secret's name as associated
//! data), readable only by plugins whose manifest names them. Values are
//! never logged or audited; a value a plugin read is redacted from that
//! invocation's output, logs and audit records. The key: [`key`]; checking
//! it against the database: [`rekey`]; rotation: [`rotate`].

mod key;
mod rekey;
mod rotate;

use crate::store::args;
use aes_gcm::Aes256Gcm;
use serde::{Deserialize, Serialize};

use crate::runtime::bindings::WitError;
use crate::runtime::bindings::capstan::plugin::secrets::Host;
use crate::runtime::state::HostState;
use crate::store::Store;
pub use key::{KeyError, KeySource};
pub use rotate::rotate_key;

/// Secret values handed to the guest during one invocation, shared by every
/// place that may echo them (outputs, log lines, audit records, HTTP targets)
/// so each can replace them with `[REDACTED]`.
#[derive(Debug, Clone, Default)]
pub struct Revealed(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Revealed {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers a value the guest has seen, with the forms it may be
    /// echoed in: each line of a multi-line value, the value JSON-escaped,
    /// and its base64 encodings (standard and URL-safe, padded or not).
    /// Longest first, so a form is masked whole before any part of it.
    pub fn push(&self, value: String) {
        if value.is_empty() {
            return;
        }
        let mut forms = masked_forms(&value);
        let mut all = self.lock();
        all.append(&mut forms);
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        all.dedup();
    }

    /// Whether no secret was read in this invocation.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// `text` with every revealed value replaced by `[REDACTED]`.
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let mut out = std::borrow::Cow::Borrowed(text);
        for secret in self.lock().iter() {
            if out.contains(secret.as_str()) {
                out = std::borrow::Cow::Owned(out.replace(secret.as_str(), "[REDACTED]"));
            }
        }
        out
    }
}

/// Lines shorter than this are not masked on their own: a one-line part
/// such as `}` or `-----` would mask every occurrence in the log.
const MIN_MASKED_LINE: usize = 6;

/// The forms of `value` that masking looks for.
fn masked_forms(value: &str) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut forms = vec![value.to_string()];
    let escaped = serde_json::to_string(value).unwrap_or_default();
    forms.push(escaped.trim_matches('"').to_string());
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        forms.push(engine.encode(value));
    }
    if value.contains('\n') {
        forms.extend(
            value
                .lines()
                .map(str::trim)
                .filter(|l| l.len() >= MIN_MASKED_LINE)
                .map(str::to_string),
        );
    }
    forms.retain(|f| !f.is_empty());
    forms
}

/// `[grants.secrets]`: the secret names the plugin may read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretsGrant {
    /// Secret names.
    pub names: Vec<String>,
}

/// Why a secret operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// No such secret.
    #[error("no secret named {0}")]
    NotFound(String),
    /// Bad name or value.
    #[error("{0}")]
    Invalid(String),
    /// Encryption, decryption or storage failed.
    #[error("secret storage: {0}")]
    Storage(String),
}

/// Encrypts and decrypts secret values with the server's key, each bound
/// to its secret's name.
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl SecretBox {
    /// Loads the key from `source` and checks it against `store`: finishes
    /// an interrupted rotation, creates a key file only if none exists and
    /// no secret is stored yet, refuses a key that cannot be read or is not
    /// the one the stored secrets were encrypted with, and binds secrets
    /// stored before names were bound to their name (one transaction).
    pub fn open(source: &KeySource, store: &Store) -> Result<SecretBox, KeyError> {
        let key = rotate::load_key(source, store)?;
        store.with(|c| rekey::prepare(c, &key, &source.describe()))?;
        Ok(SecretBox {
            cipher: rekey::cipher(&key),
        })
    }

    /// Stores (or replaces) a secret.
    pub fn put(&self, store: &Store, name: &str, value: &str) -> Result<(), SecretError> {
        validate_name(name)?;
        if value.len() > 64 * 1024 {
            return Err(SecretError::Invalid(
                "secret values are limited to 64 KiB".into(),
            ));
        }
        let (nonce, ciphertext) = rekey::seal(&self.cipher, &rekey::aad(name), value.as_bytes());
        store
            .with(|c| {
                c.exec(
                    "INSERT INTO secrets (name, nonce, ciphertext, format, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(name) DO UPDATE SET nonce = ?2, ciphertext = ?3, format = ?4, updated_at = ?5",
                    args![name, nonce, ciphertext, rekey::FORMAT_BOUND, crate::store::unix_secs()],
                )
            })
            .map_err(|e| SecretError::Storage(e.to_string()))?;
        Ok(())
    }

    /// Reads and decrypts a secret. A ciphertext that is not this secret's
    /// own (copied from another row, altered, or under another key) is an
    /// error, never garbage.
    pub fn get(&self, store: &Store, name: &str) -> Result<String, SecretError> {
        let row: Option<(Vec<u8>, Vec<u8>, i64)> = store
            .with(|c| {
                c.row(
                    "SELECT nonce, ciphertext, format FROM secrets WHERE name = ?1",
                    args![name],
                )?
                .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .transpose()
            })
            .map_err(|e: crate::store::sql::DbError| SecretError::Storage(e.to_string()))?;
        let (nonce, ciphertext, format) = row.ok_or_else(|| SecretError::NotFound(name.into()))?;
        let plain = (format == rekey::FORMAT_BOUND)
            .then(|| rekey::open(&self.cipher, &nonce, &ciphertext, &rekey::aad(name)))
            .flatten()
            .ok_or_else(|| {
                SecretError::Storage(format!(
                    "secret `{name}` does not decrypt: its stored value is not this secret's \
                     (altered, copied from another secret, or under another key); store it again"
                ))
            })?;
        String::from_utf8(plain).map_err(|_| SecretError::Storage("secret is not UTF-8".into()))
    }

    /// Deletes a secret.
    pub fn delete(store: &Store, name: &str) -> Result<(), SecretError> {
        let n = store
            .with(|c| c.exec("DELETE FROM secrets WHERE name = ?1", args![name]))
            .map_err(|e| SecretError::Storage(e.to_string()))?;
        if n == 0 {
            return Err(SecretError::NotFound(name.into()));
        }
        Ok(())
    }

    /// Secret names (never values), sorted.
    pub fn names(store: &Store) -> Result<Vec<String>, SecretError> {
        store
            .with(|c| {
                c.rows("SELECT name FROM secrets ORDER BY name", args![])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
            })
            .map_err(|e: crate::store::sql::DbError| SecretError::Storage(e.to_string()))
    }
}

fn validate_name(name: &str) -> Result<(), SecretError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SecretError::Invalid(format!(
            "secret name `{name}` must be 1-128 of [A-Za-z0-9._-]"
        )))
    }
}

impl Host for HostState {
    #[tracing::instrument(name = "plugin.secrets.get", skip_all, fields(plugin = %self.call.plugin, secret = %name))]
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, WitError>> {
        if !self.caps.policies.secrets.contains(&name) {
            return Ok(Err(self.deny(
                "secrets",
                "get",
                &name,
                "secret not granted to this plugin",
            )));
        }
        let result = self
            .caps
            .env
            .secrets
            .get(&self.caps.env.store, &name)
            .map_err(|e| match e {
                SecretError::NotFound(n) => WitError::NotFound(format!("no secret named {n}")),
                other => WitError::Failed(other.to_string()),
            });
        if let Ok(value) = &result {
            self.caps.revealed.push(value.clone());
        }
        let result = self.audited("secrets", "get", &name, result);
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::{Aead, KeyInit};
    use std::path::Path;

    /// Runs `test` on a fresh store of every backend, with its data
    /// directory and a key file there.
    fn each(test: impl Fn(&Path, &Store, &KeySource)) {
        for t in crate::store::testing::backends() {
            let source = KeySource::File(t.dir.path().join("secrets.key"));
            test(t.dir.path(), &t.store, &source);
        }
    }

    fn other_key() -> KeySource {
        KeySource::Inline(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            [7u8; 32],
        ))
    }

    #[test]
    fn values_are_encrypted_at_rest_and_round_trip() {
        each(|_dir, store, source| {
            let b = store.backend();
            let sb = SecretBox::open(source, store).unwrap();
            sb.put(store, "slack-webhook", "https://hooks.example/very-secret")
                .unwrap();
            assert_eq!(
                sb.get(store, "slack-webhook").unwrap(),
                "https://hooks.example/very-secret",
                "{b:?}"
            );
            let raw: Vec<u8> = store
                .with(|c| c.value("SELECT ciphertext FROM secrets", args![]))
                .unwrap();
            assert!(
                !String::from_utf8_lossy(&raw).contains("very-secret"),
                "{b:?}"
            );
            // The same key file decrypts after a restart; another key is refused.
            let again = SecretBox::open(source, store).unwrap();
            assert_eq!(
                again.get(store, "slack-webhook").unwrap(),
                "https://hooks.example/very-secret",
                "{b:?}"
            );
            let e = SecretBox::open(&other_key(), store)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("not the key the stored secrets"), "{b:?}: {e}");
            assert!(sb.put(store, "bad name", "x").is_err(), "{b:?}");
        });
    }

    #[test]
    fn a_ciphertext_copied_to_another_secret_does_not_decrypt() {
        each(|_dir, store, source| {
            let b = store.backend();
            let sb = SecretBox::open(source, store).unwrap();
            sb.put(store, "prod-db", "prod-password").unwrap();
            sb.put(store, "dev-db", "dev-password").unwrap();
            store
                .with(|c| {
                    c.exec(
                        "UPDATE secrets SET (nonce, ciphertext) =
                           (SELECT nonce, ciphertext FROM secrets WHERE name = 'prod-db')
                         WHERE name = 'dev-db'",
                        args![],
                    )
                })
                .unwrap();
            let e = sb.get(store, "dev-db").unwrap_err().to_string();
            assert!(e.contains("`dev-db` does not decrypt"), "{b:?}: {e}");
            assert!(!e.contains("prod-password"), "{b:?}: {e}");
            assert_eq!(sb.get(store, "prod-db").unwrap(), "prod-password", "{b:?}");
        });
    }

    #[test]
    fn rows_stored_before_names_were_bound_are_upgraded_at_start() {
        each(|dir, store, source| {
            let b = store.backend();
            // As the previous version stored them: no associated data,
            // format 0, and no key check yet.
            let key = [9u8; 32];
            key::write_file(&dir.join("secrets.key"), &key, false).unwrap();
            let cipher = Aes256Gcm::new_from_slice(&key).unwrap();
            for (name, value) in [("a", "alpha"), ("b", "beta")] {
                let nonce: [u8; 12] = rand::random();
                let ct = cipher
                    .encrypt(aes_gcm::Nonce::from_slice(&nonce), value.as_bytes())
                    .unwrap();
                store
                    .with(|c| {
                        c.exec(
                            "INSERT INTO secrets (name, nonce, ciphertext, updated_at) VALUES (?1, ?2, ?3, 0)",
                            args![name, nonce.to_vec(), ct],
                        )
                    })
                    .unwrap();
            }
            let sb = SecretBox::open(source, store).unwrap();
            assert_eq!(sb.get(store, "a").unwrap(), "alpha", "{b:?}");
            assert_eq!(sb.get(store, "b").unwrap(), "beta", "{b:?}");
            let legacy: i64 = store
                .with(|c| c.value("SELECT count(*) FROM secrets WHERE format = 0", args![]))
                .unwrap();
            assert_eq!(legacy, 0, "{b:?}");
        });
    }

    #[test]
    fn a_wrong_key_is_refused_on_a_database_from_before_the_key_check() {
        each(|_dir, store, source| {
            let b = store.backend();
            let sb = SecretBox::open(source, store).unwrap();
            sb.put(store, "a", "alpha").unwrap();
            store
                .with(|c| c.exec("DELETE FROM secrets_key_check", args![]))
                .unwrap();
            assert!(
                matches!(
                    SecretBox::open(&other_key(), store),
                    Err(KeyError::WrongKey { .. })
                ),
                "{b:?}"
            );
            assert_eq!(
                SecretBox::open(source, store)
                    .unwrap()
                    .get(store, "a")
                    .unwrap(),
                "alpha",
                "{b:?}"
            );
        });
    }

    #[test]
    fn a_revealed_value_is_masked_whole_by_line_json_escaped_and_in_base64() {
        use base64::Engine as _;
        let key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0\nAQEFAASCBKcwggSjAgEAAo\n-----END KEY-----";
        let r = Revealed::default();
        r.push(key.to_string());
        r.push("hunter2-password".to_string());
        for (echo, leak) in [
            (format!("key={key}"), "MIIEvQ"),
            (
                "line 2 alone: AQEFAASCBKcwggSjAgEAAo".to_string(),
                "AQEFAASC",
            ),
            (serde_json::json!({ "k": key }).to_string(), "MIIEvQ"),
            (
                base64::engine::general_purpose::STANDARD.encode("hunter2-password"),
                "aHVudGVy",
            ),
            (
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key),
                "LS0tLS1C",
            ),
        ] {
            let masked = r.redact(&echo);
            assert!(!masked.contains(leak), "{echo:?} -> {masked:?}");
            assert!(masked.contains("[REDACTED]"), "{masked:?}");
        }
        // Short lines of a multi-line value are not masked everywhere.
        assert_eq!(r.redact("-----END"), "-----END");
    }
}
