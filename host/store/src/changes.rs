//! Change notices between replicas. A change that other replicas keep in
//! memory (the active version of a plugin, the API tokens, plugin owners)
//! is announced with PostgreSQL's `NOTIFY` inside the transaction that makes
//! it, so the notice goes out exactly when the change commits. Each replica
//! listens on its own connection ([`Store::subscribe`]) and reloads what
//! changed. With SQLite there is one process and nothing to announce.
//!
//! A listener that loses its connection reconnects and sends
//! [`Change::Resync`]: notices sent meanwhile are lost, so the replica
//! reloads everything.

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use crate::sql::{Backend, Conn, Database, DbError};
use crate::{Store, args};

/// The PostgreSQL channel.
const CHANNEL: &str = "capstan_changes";

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The active version of a plugin (or the plugin itself) changed.
    Plugin(String),
    /// API tokens were created or revoked.
    Tokens,
    /// Notices may have been missed: reload everything.
    Resync,
}

impl Change {
    fn encode(&self) -> String {
        match self {
            Change::Plugin(name) => format!("plugin:{name}"),
            Change::Tokens => "tokens".into(),
            Change::Resync => "resync".into(),
        }
    }

    fn decode(payload: &str) -> Option<Change> {
        match payload.split_once(':') {
            Some(("plugin", name)) => Some(Change::Plugin(name.into())),
            _ if payload == "tokens" => Some(Change::Tokens),
            _ if payload == "resync" => Some(Change::Resync),
            _ => None,
        }
    }
}

/// Announces `change` to the other replicas when `conn`'s transaction
/// commits (at once outside a transaction). Nothing on SQLite.
pub fn announce(conn: &mut Conn, change: &Change) -> Result<(), DbError> {
    if conn.backend() == Backend::Postgres {
        conn.exec("SELECT pg_notify(?1, ?2)", args![CHANNEL, change.encode()])?;
    }
    Ok(())
}

impl Store {
    /// Announces `change` (see [`announce`]).
    pub fn announce(&self, change: &Change) -> Result<(), DbError> {
        self.with(|c| announce(c, change))
    }

    /// The changes other replicas make, as they commit; `None` on SQLite.
    /// Listens on a dedicated connection in a thread of its own, until the
    /// receiver is dropped.
    pub fn subscribe(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Change>> {
        let Database::Postgres(url) = self.database().clone() else {
            return None;
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("capstan-listen".into())
            .spawn(move || listen(&url, &tx))
            .expect("spawn the change listener");
        Some(rx)
    }
}

fn listen(url: &str, tx: &tokio::sync::mpsc::UnboundedSender<Change>) {
    let mut first = true;
    while !tx.is_closed() {
        let mut client = match postgres::Client::connect(url, postgres::NoTls)
            .and_then(|mut c| c.batch_execute(&format!("LISTEN {CHANNEL}")).map(|()| c))
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("change listener: connecting: {e}; retrying in 1s");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if !std::mem::take(&mut first) && tx.send(Change::Resync).is_err() {
            return;
        }
        loop {
            let next = client
                .notifications()
                .timeout_iter(Duration::from_secs(1))
                .next();
            match next {
                Ok(Some(n)) => {
                    if let Some(change) = Change::decode(n.payload())
                        && tx.send(change).is_err()
                    {
                        return;
                    }
                }
                Ok(None) if tx.is_closed() => return,
                Ok(None) if client.is_closed() => break,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("change listener: {e}; reconnecting");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip() {
        for c in [Change::Plugin("a:b".into()), Change::Tokens, Change::Resync] {
            assert_eq!(Change::decode(&c.encode()), Some(c));
        }
        assert_eq!(Change::decode("bogus"), None);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_change_committed_on_one_replica_reaches_the_other() {
        let Some(t) = crate::testing::pg() else {
            eprintln!("note: CAPSTAN_TEST_PG is not set; PostgreSQL-only test skipped");
            return;
        };
        let other = t.reopen();
        let mut rx = other.subscribe().expect("PostgreSQL listens");
        assert!(t.store.subscribe().is_some());
        // Not before the commit: a rolled-back change is never announced.
        let _ = t.store.with(|c| {
            c.tx(|c| {
                announce(c, &Change::Plugin("rolled-back".into()))?;
                Err::<(), _>(DbError::Decode("abort".into()))
            })
        });
        // Wait until the listener is connected: announce until one arrives.
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                t.store.announce(&Change::Plugin("p".into())).unwrap();
                if let Ok(Some(c)) =
                    tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
                {
                    return c;
                }
            }
        })
        .await
        .expect("a notice within 10 s");
        assert_eq!(got, Change::Plugin("p".into()));
    }

    #[test]
    fn sqlite_has_nothing_to_announce() {
        let t = crate::testing::sqlite();
        assert!(t.store.subscribe().is_none());
        t.store.announce(&Change::Tokens).unwrap();
    }
}
