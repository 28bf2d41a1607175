//! Named secrets: stored by an operator through the API, encrypted at rest
//! (AES-256-GCM), readable only by plugins whose manifest names them. Values
//! are never logged or audited; a value a plugin read is redacted from that
//! invocation's output, logs and audit records.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::runtime::bindings::WitError;
use crate::runtime::bindings::capstan::plugin::secrets::Host;
use crate::runtime::state::HostState;
use crate::store::Store;

/// Table of encrypted secrets.
pub const SCHEMA: &str = r#"
CREATE TABLE secrets (
    name        TEXT PRIMARY KEY,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    updated_at  INTEGER NOT NULL
);
"#;

/// Secret values handed to the guest during one invocation, shared by every
/// place that may echo them (outputs, log lines, audit records, HTTP targets)
/// so each can replace them with `[REDACTED]`.
#[derive(Debug, Clone, Default)]
pub struct Revealed(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Revealed {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers a value the guest has seen.
    pub fn push(&self, value: String) {
        if !value.is_empty() {
            self.lock().push(value);
        }
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

/// Encrypts and decrypts secret values with the server's key.
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl SecretBox {
    /// The key from `key_b64` (32 bytes, base64) if given, else from
    /// `<data_dir>/secrets.key`, created with a fresh random key if missing.
    pub fn load(key_b64: Option<&str>, data_dir: &Path) -> Result<SecretBox, SecretError> {
        let engine = base64::engine::general_purpose::STANDARD;
        let bytes = match key_b64 {
            Some(k) => engine
                .decode(k.trim())
                .map_err(|e| SecretError::Invalid(format!("secrets key is not base64: {e}")))?,
            None => {
                let path = data_dir.join("secrets.key");
                match std::fs::read_to_string(&path) {
                    Ok(text) => engine
                        .decode(text.trim())
                        .map_err(|e| SecretError::Invalid(format!("{}: {e}", path.display())))?,
                    Err(_) => {
                        let key: [u8; 32] = rand::random();
                        crate::store::write_atomic(&path, engine.encode(key).as_bytes()).map_err(
                            |e| SecretError::Storage(format!("write {}: {e}", path.display())),
                        )?;
                        restrict(&path);
                        tracing::warn!(path = %path.display(), "generated a secrets key; set CAPSTAN_SECRETS_KEY to manage it yourself");
                        key.to_vec()
                    }
                }
            }
        };
        if bytes.len() != 32 {
            return Err(SecretError::Invalid(format!(
                "secrets key must be 32 bytes, got {}",
                bytes.len()
            )));
        }
        Ok(SecretBox {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
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
        let nonce: [u8; 12] = rand::random();
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), value.as_bytes())
            .map_err(|_| SecretError::Storage("encryption failed".into()))?;
        store
            .conn()
            .execute(
                "INSERT INTO secrets (name, nonce, ciphertext, updated_at) VALUES (?1, ?2, ?3, strftime('%s','now'))
                 ON CONFLICT(name) DO UPDATE SET nonce = ?2, ciphertext = ?3, updated_at = strftime('%s','now')",
                params![name, nonce.to_vec(), ciphertext],
            )
            .map_err(|e| SecretError::Storage(e.to_string()))?;
        Ok(())
    }

    /// Reads and decrypts a secret.
    pub fn get(&self, store: &Store, name: &str) -> Result<String, SecretError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = store
            .conn()
            .query_row(
                "SELECT nonce, ciphertext FROM secrets WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| SecretError::Storage(e.to_string()))?;
        let (nonce, ciphertext) = row.ok_or_else(|| SecretError::NotFound(name.into()))?;
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(&nonce), ciphertext.as_ref())
            .map_err(|_| SecretError::Storage("decryption failed: wrong secrets key?".into()))?;
        String::from_utf8(plain).map_err(|_| SecretError::Storage("secret is not UTF-8".into()))
    }

    /// Deletes a secret.
    pub fn delete(store: &Store, name: &str) -> Result<(), SecretError> {
        let n = store
            .conn()
            .execute("DELETE FROM secrets WHERE name = ?1", params![name])
            .map_err(|e| SecretError::Storage(e.to_string()))?;
        if n == 0 {
            return Err(SecretError::NotFound(name.into()));
        }
        Ok(())
    }

    /// Secret names (never values), sorted.
    pub fn names(store: &Store) -> Result<Vec<String>, SecretError> {
        let conn = store.conn();
        let mut stmt = conn
            .prepare("SELECT name FROM secrets ORDER BY name")
            .map_err(|e| SecretError::Storage(e.to_string()))?;
        let rows = stmt
            .query_map([], |r| r.get(0))
            .map_err(|e| SecretError::Storage(e.to_string()))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| SecretError::Storage(e.to_string()))
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

#[cfg(unix)]
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

#[cfg(not(unix))]
fn restrict(_path: &Path) {}

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

    #[test]
    fn values_are_encrypted_at_rest_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let sb = SecretBox::load(None, dir.path()).unwrap();
        sb.put(&store, "slack-webhook", "https://hooks.example/very-secret")
            .unwrap();
        assert_eq!(
            sb.get(&store, "slack-webhook").unwrap(),
            "https://hooks.example/very-secret"
        );
        let raw: Vec<u8> = store
            .conn()
            .query_row("SELECT ciphertext FROM secrets", [], |r| r.get(0))
            .unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("very-secret"));
        // The same key file decrypts after a restart; another key does not.
        let again = SecretBox::load(None, dir.path()).unwrap();
        assert_eq!(
            again.get(&store, "slack-webhook").unwrap(),
            "https://hooks.example/very-secret"
        );
        let other = SecretBox::load(
            Some(&base64::engine::general_purpose::STANDARD.encode([7u8; 32])),
            dir.path(),
        )
        .unwrap();
        assert!(other.get(&store, "slack-webhook").is_err());
        assert!(sb.put(&store, "bad name", "x").is_err());
    }
}
