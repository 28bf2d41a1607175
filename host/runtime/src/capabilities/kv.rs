//! Key-value state per plugin, in the server's database. Plugins are
//! isolated by construction: every query is keyed by the calling plugin's name.

use serde::{Deserialize, Serialize};

use crate::store::args;
use crate::store::sql::{Conn, DbError};

use crate::runtime::bindings::WitError;
use crate::runtime::bindings::capstan::plugin::kv::Host;
use crate::runtime::state::HostState;

/// Deletes every kv entry of `plugin` (when the plugin is deleted, so that
/// a plugin published later under the same name starts empty). Returns how
/// many keys were deleted.
pub fn purge(store: &crate::store::Store, plugin: &str) -> Result<usize, crate::store::StoreError> {
    let n = store.with(|c| c.exec("DELETE FROM kv WHERE plugin = ?1", args![plugin]))?;
    Ok(n as usize)
}

/// Longest key, bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Most keys `list-keys` returns.
pub const MAX_LIST: usize = 1000;

/// `[grants.kv]`: the plugin may keep state, within these limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KvGrant {
    /// Total bytes of keys and values the plugin may store (default 1 MiB).
    #[serde(default = "default_quota")]
    pub max_bytes: u64,
    /// Largest single value (default 64 KiB).
    #[serde(default = "default_value")]
    pub max_value_bytes: u64,
}

fn default_quota() -> u64 {
    1 << 20
}

fn default_value() -> u64 {
    64 << 10
}

impl KvGrant {
    /// Checks the limits are positive and consistent.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_bytes == 0 || self.max_value_bytes == 0 {
            return Err("limits must be positive".into());
        }
        if self.max_value_bytes > self.max_bytes {
            return Err("max_value_bytes exceeds max_bytes".into());
        }
        Ok(())
    }
}

type KvResult<T> = wasmtime::Result<Result<T, WitError>>;

impl HostState {
    fn kv_check(&self, verb: &str, key: &str) -> Result<KvGrant, WitError> {
        let Some(grant) = self.caps.policies.kv.clone() else {
            return Err(self.deny("kv", verb, key, "the manifest grants no kv"));
        };
        if key.len() > MAX_KEY_BYTES {
            // Guest-chosen text: the audit target is cut at a character boundary.
            let why = format!("key of {} bytes is longer than {MAX_KEY_BYTES}", key.len());
            self.audit("kv", verb, super::clip(key, 64), false, &why);
            return Err(WitError::InvalidInput(why));
        }
        Ok(grant)
    }

    /// Runs `f` on the database on a blocking thread (never on an async
    /// worker: a slow disk or a locked database must not stall other calls),
    /// then audits the outcome.
    async fn kv_db<T: Send + 'static>(
        &mut self,
        verb: &str,
        key: &str,
        f: impl FnOnce(&mut Conn, &str) -> Result<T, WitError> + Send + 'static,
    ) -> Result<T, WitError> {
        let store = self.caps.env.store.clone();
        let plugin = self.call.plugin.to_string();
        let result = store
            .run(move |c| Ok::<_, DbError>(f(c, &plugin)))
            .await
            .unwrap_or_else(|e| Err(db_err(e)));
        self.audited("kv", verb, key, result)
    }
}

impl From<DbError> for WitError {
    fn from(e: DbError) -> WitError {
        db_err(e)
    }
}

fn db_err(e: DbError) -> WitError {
    WitError::Failed(format!("kv storage: {e}"))
}

fn check_quota(
    conn: &mut Conn,
    plugin: &str,
    key: &str,
    value: &[u8],
    grant: &KvGrant,
) -> Result<(), WitError> {
    if value.len() as u64 > grant.max_value_bytes {
        return Err(WitError::InvalidInput(format!(
            "value of {} bytes exceeds the limit of {} bytes",
            value.len(),
            grant.max_value_bytes
        )));
    }
    let used: i64 = conn
        .value(
            "SELECT CAST(COALESCE(SUM(octet_length(key) + octet_length(value)), 0) AS BIGINT)
             FROM kv WHERE plugin = ?1 AND key != ?2",
            args![plugin, key],
        )
        .map_err(db_err)?;
    let total = used as u64 + (key.len() + value.len()) as u64;
    if total > grant.max_bytes {
        return Err(WitError::Denied(format!(
            "kv quota of {} bytes exceeded ({} bytes would be stored)",
            grant.max_bytes, total
        )));
    }
    Ok(())
}

impl Host for HostState {
    #[tracing::instrument(name = "plugin.kv.get", skip_all, fields(plugin = %self.call.plugin))]
    async fn get(&mut self, key: String) -> KvResult<Option<Vec<u8>>> {
        if let Err(e) = self.kv_check("get", &key) {
            return Ok(Err(e));
        }
        let k = key.clone();
        Ok(self
            .kv_db("get", &key, move |c, plugin| {
                c.row(
                    "SELECT value FROM kv WHERE plugin = ?1 AND key = ?2",
                    args![plugin, k],
                )
                .and_then(|r| r.map(|r| r.get(0)).transpose())
                .map_err(db_err)
            })
            .await)
    }

    #[tracing::instrument(name = "plugin.kv.set", skip_all, fields(plugin = %self.call.plugin))]
    async fn set(&mut self, key: String, value: Vec<u8>) -> KvResult<()> {
        let grant = match self.kv_check("set", &key) {
            Ok(g) => g,
            Err(e) => return Ok(Err(e)),
        };
        let k = key.clone();
        Ok(self
            .kv_db("set", &key, move |c, plugin| {
                c.tx(|c| {
                    check_quota(c, plugin, &k, &value, &grant)?;
                    c.exec(
                        "INSERT INTO kv (plugin, key, value) VALUES (?1, ?2, ?3)
                         ON CONFLICT(plugin, key) DO UPDATE SET value = ?3",
                        args![plugin, k, value],
                    )
                    .map(drop)
                    .map_err(db_err)
                })
            })
            .await)
    }

    #[tracing::instrument(name = "plugin.kv.set_if_absent", skip_all, fields(plugin = %self.call.plugin))]
    async fn set_if_absent(&mut self, key: String, value: Vec<u8>) -> KvResult<bool> {
        let grant = match self.kv_check("set-if-absent", &key) {
            Ok(g) => g,
            Err(e) => return Ok(Err(e)),
        };
        let k = key.clone();
        Ok(self
            .kv_db("set-if-absent", &key, move |c, plugin| {
                // The insert is one statement: atomic against concurrent calls.
                c.tx(|c| {
                    check_quota(c, plugin, &k, &value, &grant)?;
                    c.exec(
                        "INSERT INTO kv (plugin, key, value) VALUES (?1, ?2, ?3) ON CONFLICT(plugin, key) DO NOTHING",
                        args![plugin, k, value],
                    )
                    .map(|n| n == 1)
                    .map_err(db_err)
                })
            })
            .await)
    }

    #[tracing::instrument(name = "plugin.kv.delete", skip_all, fields(plugin = %self.call.plugin))]
    async fn delete(&mut self, key: String) -> KvResult<bool> {
        if let Err(e) = self.kv_check("delete", &key) {
            return Ok(Err(e));
        }
        let k = key.clone();
        Ok(self
            .kv_db("delete", &key, move |c, plugin| {
                c.exec(
                    "DELETE FROM kv WHERE plugin = ?1 AND key = ?2",
                    args![plugin, k],
                )
                .map(|n| n == 1)
                .map_err(db_err)
            })
            .await)
    }

    #[tracing::instrument(name = "plugin.kv.list_keys", skip_all, fields(plugin = %self.call.plugin))]
    async fn list_keys(&mut self, prefix: String) -> KvResult<Vec<String>> {
        if let Err(e) = self.kv_check("list-keys", &prefix) {
            return Ok(Err(e));
        }
        let p = prefix.clone();
        Ok(self
            .kv_db("list-keys", &prefix, move |c, plugin| {
                c.rows(
                    "SELECT key FROM kv WHERE plugin = ?1 AND substr(key, 1, length(?2)) = ?2 ORDER BY key LIMIT ?3",
                    args![plugin, p, MAX_LIST as i64],
                )
                .and_then(|rows| rows.iter().map(|r| r.get(0)).collect())
                .map_err(db_err)
            })
            .await)
    }
}
