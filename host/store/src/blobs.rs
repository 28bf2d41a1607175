//! Content-addressed component bytes: files `blobs/sha256/<hex>` with the
//! embedded SQLite database; rows of the `blobs` table with PostgreSQL, where
//! every replica must read them.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::{Store, StoreError, write_atomic};
use crate::args;
use crate::sql::Backend;

/// The hex sha256 of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Store {
    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest)
    }

    /// Stores `bytes` (idempotently) and returns their digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let digest = digest_of(bytes);
        if self.backend() == Backend::Postgres {
            self.with(|c| {
                c.exec(
                    "INSERT INTO blobs (digest, bytes) VALUES (?1, ?2) ON CONFLICT (digest) DO NOTHING",
                    args![digest.as_str(), bytes],
                )
            })?;
            return Ok(digest);
        }
        let path = self.blob_path(&digest);
        if !path.exists() {
            write_atomic(&path, bytes).map_err(|source| StoreError::Io {
                what: "write blob",
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(digest)
    }

    /// Reads the blob with `digest`, checking that its content still matches.
    pub fn blob(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let bytes = if self.backend() == Backend::Postgres {
            self.with(|c| c.row("SELECT bytes FROM blobs WHERE digest = ?1", args![digest]))?
                .ok_or_else(|| StoreError::NotFound(format!("no blob {digest}")))?
                .get(0)?
        } else {
            std::fs::read(&path).map_err(|source| StoreError::Io {
                what: "read blob",
                path: path.display().to_string(),
                source,
            })?
        };
        if digest_of(&bytes) != digest {
            return Err(StoreError::Conflict(format!(
                "blob {} is corrupt (content does not match its digest)",
                path.display()
            )));
        }
        Ok(bytes)
    }

    /// Where the precompiled artifact of `digest` for an engine with
    /// compatibility key `compat` lives.
    pub fn artifact_path(&self, digest: &str, compat: &str) -> PathBuf {
        self.root
            .join("artifacts")
            .join(format!("{digest}-{compat}.cwasm"))
    }
}
