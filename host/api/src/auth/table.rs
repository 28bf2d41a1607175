//! The token table: API tokens stored as SHA-256 hashes, with a global
//! role, roles per project, or both; an in-memory index of the active ones
//! by hash; revocation that never removes the last admin.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{ApiRole, AuthError, BOOTSTRAP_TOKEN, Caller};
use crate::store::Store;

/// A token as listed: never its secret or hash.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// Name.
    pub name: String,
    /// Global role, if any.
    pub role: Option<ApiRole>,
    /// Roles in single projects.
    pub projects: BTreeMap<String, ApiRole>,
    /// Unix seconds.
    pub created_at: i64,
    /// Who created it (`token:<name>`, or `config`/`startup` for the bootstrap token).
    pub created_by: String,
    /// Whether it was revoked.
    pub revoked: bool,
    /// Unix seconds of the revocation.
    pub revoked_at: Option<i64>,
}

/// A freshly created token with its secret, which is never shown again.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewToken {
    /// The token.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The bearer secret: send `Authorization: Bearer <token>`. Shown only once.
    pub token: String,
}

/// The token table with an in-memory index of active tokens by hash. Only
/// this process changes the table, so the index is always current.
pub struct Tokens {
    store: Arc<Store>,
    active: RwLock<HashMap<[u8; 32], Caller>>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

use crate::store::unix_secs as now;

/// A new random token secret: `cap_` + 32 random bytes, base64url.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "cap_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn validate_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!(
            "token name `{name}` must be 1-64 of [A-Za-z0-9._-]"
        )))
    }
}

impl Tokens {
    /// Loads the active tokens of `store`.
    pub fn load(store: Arc<Store>) -> Result<Tokens, AuthError> {
        let tokens = Tokens {
            store,
            active: RwLock::new(HashMap::new()),
        };
        tokens.reload()?;
        Ok(tokens)
    }

    fn reload(&self) -> Result<(), AuthError> {
        let conn = self.store.conn();
        let mut stmt = conn.prepare(
            "SELECT name, role, projects, hash FROM api_tokens WHERE revoked_at IS NULL",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut active = HashMap::new();
        for row in rows {
            let (name, role, projects, hash) = row?;
            let (Ok(role), Ok(projects), Ok(bytes)) = (
                role.map(|r| r.parse::<ApiRole>()).transpose(),
                serde_json::from_str::<BTreeMap<String, ApiRole>>(&projects),
                hex::decode(&hash),
            ) else {
                tracing::error!(token = %name, "unreadable row in api_tokens; ignoring it");
                continue;
            };
            let Ok(key) = <[u8; 32]>::try_from(bytes) else {
                tracing::error!(token = %name, "bad hash in api_tokens; ignoring it");
                continue;
            };
            active.insert(
                key,
                Caller {
                    name,
                    role,
                    projects,
                },
            );
        }
        drop(stmt);
        drop(conn);
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = active;
        Ok(())
    }

    /// The caller a presented secret belongs to, if it is an active token.
    pub fn authenticate(&self, secret: &str) -> Option<Caller> {
        if secret.is_empty() || secret.len() > 512 {
            return None;
        }
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest(secret))
            .cloned()
    }

    /// Creates a token; the secret in the answer is never stored or shown again.
    pub fn create(
        &self,
        name: &str,
        role: Option<ApiRole>,
        projects: BTreeMap<String, ApiRole>,
        created_by: &str,
    ) -> Result<NewToken, AuthError> {
        validate_name(name)?;
        if role.is_none() && projects.is_empty() {
            return Err(AuthError::Invalid(
                "a token needs a global `role`, roles in `projects`, or both".into(),
            ));
        }
        for p in projects.keys() {
            let exists = self
                .store
                .conn()
                .query_row("SELECT 1 FROM projects WHERE name = ?1", params![p], |_| {
                    Ok(())
                })
                .optional()?
                .is_some();
            if !exists {
                return Err(AuthError::NotFound(format!(
                    "no project named `{p}`; create it first"
                )));
            }
        }
        if name == BOOTSTRAP_TOKEN {
            return Err(AuthError::Conflict(format!(
                "`{BOOTSTRAP_TOKEN}` is taken by the configured admin token"
            )));
        }
        let secret = generate_secret();
        let created_at = now();
        let inserted = self.store.conn().execute(
            "INSERT INTO api_tokens (name, role, projects, hash, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                name,
                role.map(ApiRole::as_str),
                serde_json::to_string(&projects).unwrap_or_default(),
                hex::encode(digest(&secret)),
                created_at,
                created_by
            ],
        );
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(AuthError::Conflict(format!(
                    "a token named `{name}` already exists; revoke it first"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.reload()?;
        Ok(NewToken {
            info: TokenInfo {
                name: name.into(),
                role,
                projects,
                created_at,
                created_by: created_by.into(),
                revoked: false,
                revoked_at: None,
            },
            token: secret,
        })
    }

    /// Every token, active and revoked, oldest first.
    pub fn list(&self) -> Result<Vec<TokenInfo>, AuthError> {
        let conn = self.store.conn();
        let mut stmt = conn.prepare(
            "SELECT name, role, projects, created_at, created_by, revoked_at FROM api_tokens ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, role, projects, created_at, created_by, revoked_at) = row?;
            out.push(TokenInfo {
                name,
                role: role
                    .map(|r| r.parse::<ApiRole>())
                    .transpose()
                    .map_err(AuthError::Invalid)?,
                projects: serde_json::from_str(&projects)
                    .map_err(|e| AuthError::Invalid(format!("token projects: {e}")))?,
                created_at,
                created_by,
                revoked: revoked_at.is_some(),
                revoked_at,
            });
        }
        Ok(out)
    }

    /// Revokes the active token `name`. Refuses to revoke the last admin token.
    pub fn revoke(&self, name: &str) -> Result<(), AuthError> {
        {
            let mut conn = self.store.conn();
            let tx = conn.transaction()?;
            let role: Option<Option<String>> = tx
                .query_row(
                    "SELECT role FROM api_tokens WHERE name = ?1 AND revoked_at IS NULL",
                    params![name],
                    |r| r.get(0),
                )
                .optional()?;
            let role = role.ok_or_else(|| AuthError::NotFound(format!("no token named {name}")))?;
            if role.as_deref() == Some("admin") {
                let admins: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM api_tokens WHERE role = 'admin' AND revoked_at IS NULL",
                    [],
                    |r| r.get(0),
                )?;
                if admins <= 1 {
                    return Err(AuthError::Conflict(format!(
                        "`{name}` is the last admin token; create another admin token first"
                    )));
                }
            }
            tx.execute(
                "UPDATE api_tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                params![name, now()],
            )?;
            tx.commit()?;
        }
        self.reload()
    }

    /// Makes sure an admin can get in. A configured token becomes (or stays)
    /// the active `bootstrap-admin`, replacing an older configured value; a
    /// configured value that was revoked stays revoked. Without one, and
    /// without any active admin token, a token is generated and returned:
    /// the caller shows it once.
    pub fn bootstrap(&self, configured: Option<&str>) -> Result<Option<String>, AuthError> {
        let generated = {
            let mut conn = self.store.conn();
            let tx = conn.transaction()?;
            let (secret, created_by, generated) = match configured {
                Some(secret) => {
                    let secret = secret.trim();
                    if secret.is_empty() {
                        return Err(AuthError::Invalid("admin_token is empty".into()));
                    }
                    if secret.len() < 24 {
                        tracing::warn!(
                            "admin_token is short; use a long random value (e.g. `openssl rand -base64 32`)"
                        );
                    }
                    let existing: Option<(String, Option<i64>)> = tx
                        .query_row(
                            "SELECT name, revoked_at FROM api_tokens WHERE hash = ?1",
                            params![hex::encode(digest(secret))],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                        .optional()?;
                    match existing {
                        Some((_, Some(_))) => {
                            tracing::warn!(
                                "the configured admin_token was revoked and stays revoked; configure a new value to use one"
                            );
                            return Ok(None);
                        }
                        Some((name, None)) => {
                            if name != BOOTSTRAP_TOKEN {
                                tracing::warn!(token = %name, "the configured admin_token is the secret of another token; using that token as it is");
                            }
                            return Ok(None);
                        }
                        None => (secret.to_string(), "config", false),
                    }
                }
                None => {
                    let admins: i64 = tx.query_row(
                        "SELECT COUNT(*) FROM api_tokens WHERE role = 'admin' AND revoked_at IS NULL",
                        [],
                        |r| r.get(0),
                    )?;
                    if admins > 0 {
                        return Ok(None);
                    }
                    (generate_secret(), "startup", true)
                }
            };
            let at = now();
            tx.execute(
                "UPDATE api_tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                params![BOOTSTRAP_TOKEN, at],
            )?;
            tx.execute(
                "INSERT INTO api_tokens (name, role, hash, created_at, created_by) VALUES (?1, 'admin', ?2, ?3, ?4)",
                params![BOOTSTRAP_TOKEN, hex::encode(digest(&secret)), at, created_by],
            )?;
            tx.commit()?;
            generated.then_some(secret)
        };
        self.reload()?;
        Ok(generated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_hashed_revocable_and_an_admin_always_remains() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let tokens = Tokens::load(store.clone()).unwrap();
        let first = tokens.bootstrap(None).unwrap().expect("generated");
        assert!(first.starts_with("cap_") && first.len() == 47, "{first}");
        assert_eq!(tokens.bootstrap(None).unwrap(), None, "only once");
        assert_eq!(
            tokens.authenticate(&first).unwrap().role,
            Some(ApiRole::Admin)
        );

        let t = tokens
            .create("ci", Some(ApiRole::Operator), BTreeMap::new(), "token:x")
            .unwrap();
        assert_eq!(tokens.authenticate(&t.token).unwrap().name, "ci");
        assert!(matches!(
            tokens.create("ci", Some(ApiRole::Viewer), BTreeMap::new(), ""),
            Err(AuthError::Conflict(_))
        ));
        let stored: String = store
            .conn()
            .query_row("SELECT group_concat(hash) FROM api_tokens", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(!stored.contains(&t.token[4..]) && !stored.contains(&first[4..]));
        tokens.revoke("ci").unwrap();
        assert_eq!(tokens.authenticate(&t.token), None);
        // The name can be reused after revocation.
        tokens
            .create("ci", Some(ApiRole::Viewer), BTreeMap::new(), "")
            .unwrap();
        assert!(matches!(
            tokens.revoke(BOOTSTRAP_TOKEN),
            Err(AuthError::Conflict(_))
        ));

        // A configured token replaces the generated one; reloading keeps state.
        let configured = "configured-admin-token-of-some-length";
        assert_eq!(tokens.bootstrap(Some(configured)).unwrap(), None);
        assert_eq!(tokens.authenticate(&first), None);
        let again = Tokens::load(store).unwrap();
        assert_eq!(
            again.authenticate(configured).unwrap().name,
            BOOTSTRAP_TOKEN
        );
        let list = again.list().unwrap();
        assert_eq!(list.iter().filter(|t| !t.revoked).count(), 2);
    }

    #[test]
    fn a_revoked_configured_token_stays_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let tokens = Tokens::load(store).unwrap();
        tokens
            .bootstrap(Some("first-configured-admin-token"))
            .unwrap();
        tokens
            .create("other-admin", Some(ApiRole::Admin), BTreeMap::new(), "")
            .unwrap();
        tokens.revoke(BOOTSTRAP_TOKEN).unwrap();
        assert_eq!(
            tokens
                .bootstrap(Some("first-configured-admin-token"))
                .unwrap(),
            None
        );
        assert_eq!(tokens.authenticate("first-configured-admin-token"), None);
        tokens
            .bootstrap(Some("second-configured-admin-token"))
            .unwrap();
        assert!(
            tokens
                .authenticate("second-configured-admin-token")
                .is_some()
        );
    }
}
