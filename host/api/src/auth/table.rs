//! The token table: API tokens stored as SHA-256 hashes, with a global
//! role, roles per project, or both; an in-memory index of the active ones
//! by hash; revocation that never removes the last admin.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use crate::store::args;
use crate::store::changes::{Change, announce};
use crate::store::sql::{Conn, DbError, ErrorKind};
use base64::Engine as _;
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

    /// Reads the active tokens again (another replica changed them).
    pub fn reload(&self) -> Result<(), AuthError> {
        let rows = self.store.with(|c| {
            c.rows(
                "SELECT name, role, projects, hash FROM api_tokens WHERE revoked_at IS NULL",
                args![],
            )
        })?;
        let mut active = HashMap::new();
        for row in rows {
            let (name, role, projects, hash): (String, Option<String>, String, String) =
                (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
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
                .with(|c| c.row("SELECT 1 FROM projects WHERE name = ?1", args![p]))?
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
        let args = args![
            name,
            role.map(ApiRole::as_str),
            serde_json::to_string(&projects).unwrap_or_default(),
            hex::encode(digest(&secret)),
            created_at,
            created_by
        ];
        let inserted = self.store.with(|c| {
            c.exec(
                "INSERT INTO api_tokens (name, role, projects, hash, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                args,
            )?;
            announce(c, &Change::Tokens)
        });
        match inserted {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Unique => {
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
        let rows = self.store.with(|c| {
            c.rows(
                "SELECT name, role, projects, created_at, created_by, revoked_at FROM api_tokens ORDER BY id",
                args![],
            )
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, role, projects): (String, Option<String>, String) =
                (row.get(0)?, row.get(1)?, row.get(2)?);
            let (created_at, created_by, revoked_at): (i64, String, Option<i64>) =
                (row.get(3)?, row.get(4)?, row.get(5)?);
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
        self.store.with(|c| c.tx(|tx| revoke_in(tx, name)))?;
        self.reload()
    }

    /// Makes sure an admin can get in. A configured token becomes (or stays)
    /// the active `bootstrap-admin`, replacing an older configured value; a
    /// configured value that was revoked stays revoked. Without one, and
    /// without any active admin token, a token is generated and returned:
    /// the caller shows it once.
    pub fn bootstrap(&self, configured: Option<&str>) -> Result<Option<String>, AuthError> {
        let generated = match self.store.with(|c| c.tx(|tx| bootstrap_in(tx, configured))) {
            // Another replica starting at the same moment stored it first.
            Err(AuthError::Storage(e)) if e.kind() == ErrorKind::Unique => None,
            other => other?,
        };
        self.reload()?;
        Ok(generated)
    }
}

fn admins(tx: &mut Conn) -> Result<i64, DbError> {
    tx.value(
        "SELECT COUNT(*) FROM api_tokens WHERE role = 'admin' AND revoked_at IS NULL",
        args![],
    )
}

fn revoke_in(tx: &mut Conn, name: &str) -> Result<(), AuthError> {
    let role: Option<Option<String>> = tx
        .row(
            "SELECT role FROM api_tokens WHERE name = ?1 AND revoked_at IS NULL",
            args![name],
        )?
        .map(|r| r.get(0))
        .transpose()?;
    let role = role.ok_or_else(|| AuthError::NotFound(format!("no token named {name}")))?;
    if role.as_deref() == Some("admin") && admins(tx)? <= 1 {
        return Err(AuthError::Conflict(format!(
            "`{name}` is the last admin token; create another admin token first"
        )));
    }
    tx.exec(
        "UPDATE api_tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
        args![name, now()],
    )?;
    announce(tx, &Change::Tokens)?;
    Ok(())
}

fn bootstrap_in(tx: &mut Conn, configured: Option<&str>) -> Result<Option<String>, AuthError> {
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
            let existing = tx.row(
                "SELECT name, revoked_at FROM api_tokens WHERE hash = ?1",
                args![hex::encode(digest(secret))],
            )?;
            let existing: Option<(String, Option<i64>)> = match existing {
                Some(r) => Some((r.get(0)?, r.get(1)?)),
                None => None,
            };
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
            if admins(tx)? > 0 {
                return Ok(None);
            }
            (generate_secret(), "startup", true)
        }
    };
    let at = now();
    tx.exec(
        "UPDATE api_tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
        args![BOOTSTRAP_TOKEN, at],
    )?;
    tx.exec(
        "INSERT INTO api_tokens (name, role, hash, created_at, created_by) VALUES (?1, 'admin', ?2, ?3, ?4)",
        args![BOOTSTRAP_TOKEN, hex::encode(digest(&secret)), at, created_by],
    )?;
    announce(tx, &Change::Tokens)?;
    Ok(generated.then_some(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_hashed_revocable_and_an_admin_always_remains() {
        for t in crate::store::testing::backends() {
            hashed_revocable_admin_remains(t.store.clone());
        }
    }

    fn hashed_revocable_admin_remains(store: Arc<Store>) {
        let b = store.backend();
        let tokens = Tokens::load(store.clone()).unwrap();
        let first = tokens.bootstrap(None).unwrap().expect("generated");
        assert!(
            first.starts_with("cap_") && first.len() == 47,
            "{b:?}: {first}"
        );
        assert_eq!(tokens.bootstrap(None).unwrap(), None, "{b:?}: only once");
        assert_eq!(
            tokens.authenticate(&first).unwrap().role,
            Some(ApiRole::Admin),
            "{b:?}"
        );

        let t = tokens
            .create("ci", Some(ApiRole::Operator), BTreeMap::new(), "token:x")
            .unwrap();
        assert_eq!(tokens.authenticate(&t.token).unwrap().name, "ci", "{b:?}");
        assert!(
            matches!(
                tokens.create("ci", Some(ApiRole::Viewer), BTreeMap::new(), ""),
                Err(AuthError::Conflict(_))
            ),
            "{b:?}"
        );
        let stored: Vec<String> = store
            .with(|c| c.rows("SELECT hash FROM api_tokens", args![]))
            .unwrap()
            .iter()
            .map(|r| r.get(0).unwrap())
            .collect();
        let stored = stored.join(",");
        assert!(
            !stored.contains(&t.token[4..]) && !stored.contains(&first[4..]),
            "{b:?}"
        );
        tokens.revoke("ci").unwrap();
        assert_eq!(tokens.authenticate(&t.token), None, "{b:?}");
        // The name can be reused after revocation.
        tokens
            .create("ci", Some(ApiRole::Viewer), BTreeMap::new(), "")
            .unwrap();
        assert!(
            matches!(tokens.revoke(BOOTSTRAP_TOKEN), Err(AuthError::Conflict(_))),
            "{b:?}"
        );

        // A configured token replaces the generated one; reloading keeps state.
        let configured = "configured-admin-token-of-some-length";
        assert_eq!(tokens.bootstrap(Some(configured)).unwrap(), None, "{b:?}");
        assert_eq!(tokens.authenticate(&first), None, "{b:?}");
        let again = Tokens::load(store).unwrap();
        assert_eq!(
            again.authenticate(configured).unwrap().name,
            BOOTSTRAP_TOKEN,
            "{b:?}"
        );
        let list = again.list().unwrap();
        assert_eq!(list.iter().filter(|t| !t.revoked).count(), 2, "{b:?}");
    }

    #[test]
    fn a_revoked_configured_token_stays_revoked() {
        for t in crate::store::testing::backends() {
            revoked_configured_stays_revoked(t.store.clone());
        }
    }

    fn revoked_configured_stays_revoked(store: Arc<Store>) {
        let b = store.backend();
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
            None,
            "{b:?}"
        );
        assert_eq!(
            tokens.authenticate("first-configured-admin-token"),
            None,
            "{b:?}"
        );
        tokens
            .bootstrap(Some("second-configured-admin-token"))
            .unwrap();
        assert!(
            tokens
                .authenticate("second-configured-admin-token")
                .is_some(),
            "{b:?}"
        );
    }
}
