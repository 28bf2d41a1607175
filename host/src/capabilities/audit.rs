//! The audit log: every capability use (allowed or denied) and every mutating
//! API call, in SQLite. Writes go through a background writer that batches
//! them, so a capability call never waits on a disk flush; readers call
//! [`Audit::flush`] first and so always see everything recorded before.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use rusqlite::params;
use serde::Serialize;

use crate::store::Store;

/// Table of audit records.
pub const SCHEMA: &str = r#"
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms       INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    plugin      TEXT,
    version     TEXT,
    invocation  TEXT,
    capability  TEXT NOT NULL,
    target      TEXT NOT NULL,
    verb        TEXT NOT NULL,
    allowed     INTEGER NOT NULL,
    outcome     TEXT NOT NULL
);
CREATE INDEX audit_by_plugin ON audit (plugin, id);
"#;

/// Adds what a mutation changed, as JSON text (`''` for capability uses).
pub const SCHEMA_DETAIL: &str = r#"
ALTER TABLE audit ADD COLUMN detail TEXT NOT NULL DEFAULT '';
"#;

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Row id (0 until stored).
    pub id: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Who acted: `plugin:<name>` or `token:<name>`.
    pub actor: String,
    /// Plugin name, for capability uses.
    pub plugin: Option<String>,
    /// Plugin version.
    pub version: Option<String>,
    /// Invocation id.
    pub invocation: Option<String>,
    /// `http`, `fs`, `kv`, `secrets`, `kube` or `api`.
    pub capability: String,
    /// What was acted on (URL, path, key, secret name, object, route).
    pub target: String,
    /// The operation.
    pub verb: String,
    /// Whether the grant allowed it.
    pub allowed: bool,
    /// `ok`, or why it was denied or failed.
    pub outcome: String,
    /// What a mutation changed (name, version, digest, grants, from/to...);
    /// null for capability uses.
    #[schema(value_type = Option<Object>)]
    pub detail: serde_json::Value,
}

impl AuditRecord {
    /// A record of a change made by `actor` (`token:<name>`, `directory`,
    /// `bundled`...): `what` is the kind of change (`plugin.upload`,
    /// `plugin.activate`, `ceiling.set`...), `target` what it changed.
    pub fn change(actor: &str, what: &str, target: &str, detail: serde_json::Value) -> AuditRecord {
        AuditRecord {
            id: 0,
            at_ms: 0,
            actor: actor.into(),
            plugin: None,
            version: None,
            invocation: None,
            capability: "change".into(),
            target: target.into(),
            verb: what.into(),
            allowed: true,
            outcome: "ok".into(),
            detail,
        }
    }
}

/// Why a durable audit write failed.
#[derive(Debug, thiserror::Error)]
#[error("audit log write failed: {0}")]
pub struct AuditError(#[from] rusqlite::Error);

/// A filter for [`Audit::query`].
#[derive(Debug, Default, Clone, serde::Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Only this plugin.
    pub plugin: Option<String>,
    /// Only this capability.
    pub capability: Option<String>,
    /// Only allowed (true) or denied (false) records.
    pub allowed: Option<bool>,
    /// Only this invocation.
    pub invocation: Option<String>,
    /// Newest N records (default 100, at most 1000).
    pub limit: Option<u32>,
}

enum Msg {
    Record(AuditRecord),
    Flush(Sender<()>),
}

/// Handle to the audit log.
#[derive(Clone)]
pub struct Audit {
    tx: Sender<Msg>,
    store: Arc<Store>,
}

impl Audit {
    /// Starts the background writer over `store`.
    pub fn start(store: Arc<Store>) -> Audit {
        let (tx, rx) = channel();
        let writer_store = store.clone();
        std::thread::Builder::new()
            .name("capstan-audit".into())
            .spawn(move || writer(writer_store, rx))
            .expect("spawn audit writer");
        Audit { tx, store }
    }

    /// Records an action. Never blocks on the database.
    pub fn record(&self, mut r: AuditRecord) {
        r.at_ms = now_ms();
        if r.allowed {
            tracing::debug!(target: "capstan::audit", actor = %r.actor, capability = %r.capability, verb = %r.verb, target = %r.target, outcome = %r.outcome, "allowed");
        } else {
            tracing::warn!(target: "capstan::audit", actor = %r.actor, capability = %r.capability, verb = %r.verb, target = %r.target, outcome = %r.outcome, "denied");
        }
        let _ = self.tx.send(Msg::Record(r));
    }

    /// Stores a record before returning: for mutations, whose record must
    /// be durable before the change is acknowledged.
    pub async fn record_durable(&self, mut r: AuditRecord) -> Result<(), AuditError> {
        r.at_ms = now_ms();
        tracing::info!(target: "capstan::audit", actor = %r.actor, capability = %r.capability, verb = %r.verb, target = %r.target, outcome = %r.outcome, "change");
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || insert(&store.conn(), &r)).await {
            Ok(result) => Ok(result?),
            Err(e) => Err(AuditError(rusqlite::Error::InvalidParameterName(format!(
                "audit task failed: {e}"
            )))),
        }
    }

    /// Waits until every record sent so far is stored.
    pub async fn flush(&self) {
        let (done, wait) = channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = tokio::task::spawn_blocking(move || wait.recv_timeout(Duration::from_secs(10)))
                .await;
        }
    }

    /// Newest records matching `q`, newest first.
    pub async fn query(&self, q: &AuditQuery) -> rusqlite::Result<Vec<AuditRecord>> {
        self.flush().await;
        let conn = self.store.conn();
        let mut stmt = conn.prepare(
            "SELECT id, at_ms, actor, plugin, version, invocation, capability, target, verb, allowed, outcome, detail
             FROM audit
             WHERE (?1 IS NULL OR plugin = ?1) AND (?2 IS NULL OR capability = ?2)
               AND (?3 IS NULL OR allowed = ?3) AND (?4 IS NULL OR invocation = ?4)
             ORDER BY id DESC LIMIT ?5",
        )?;
        let limit = q.limit.unwrap_or(100).min(1000);
        let rows = stmt.query_map(
            params![q.plugin, q.capability, q.allowed, q.invocation, limit],
            |r| {
                Ok(AuditRecord {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    actor: r.get(2)?,
                    plugin: r.get(3)?,
                    version: r.get(4)?,
                    invocation: r.get(5)?,
                    capability: r.get(6)?,
                    target: r.get(7)?,
                    verb: r.get(8)?,
                    allowed: r.get(9)?,
                    outcome: r.get(10)?,
                    detail: parse_detail(&r.get::<_, String>(11)?),
                })
            },
        )?;
        rows.collect()
    }
}

fn writer(store: Arc<Store>, rx: Receiver<Msg>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 512 {
                break;
            }
        }
        let mut waiters = Vec::new();
        let mut conn = store.conn();
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for msg in batch {
                match msg {
                    Msg::Record(r) => insert(&tx, &r)?,
                    Msg::Flush(done) => waiters.push(done),
                }
            }
            tx.commit()
        })();
        drop(conn);
        if let Err(e) = result {
            tracing::error!("audit write failed: {e}");
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}

fn insert(conn: &rusqlite::Connection, r: &AuditRecord) -> rusqlite::Result<()> {
    let detail = if r.detail.is_null() {
        String::new()
    } else {
        r.detail.to_string()
    };
    conn.execute(
        "INSERT INTO audit (at_ms, actor, plugin, version, invocation, capability, target, verb, allowed, outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![r.at_ms, r.actor, r.plugin, r.version, r.invocation, r.capability, r.target, r.verb, r.allowed, r.outcome, detail],
    )?;
    Ok(())
}

fn parse_detail(text: &str) -> serde_json::Value {
    if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.into()))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
