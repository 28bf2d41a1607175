//! Group commit for the engine's writes. Every write a run goes through
//! (its journaled state, a step's result, a new run) is queued here; one
//! thread takes whatever is queued, runs it in one transaction with one
//! sync, and only then answers each writer. A writer still waits for its
//! own write to be durable before acting on it, but hundreds of runs share
//! a sync instead of paying one each.
//!
//! A batch that fails is rolled back and its writes are run again one
//! transaction each, so one bad write fails alone.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use capstan_store::sql::{Conn, DbError};
use capstan_store::{Store, StoreError};
use tokio::sync::oneshot;

/// At most this many writes share a transaction.
const MAX_BATCH: usize = 512;

type Op = Box<dyn FnMut(&mut Conn) -> Result<(), DbError> + Send>;

struct Job {
    op: Op,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The queue of writes and its writer thread (which ends with the last
/// handle).
pub(crate) struct Journal {
    queue: Mutex<mpsc::Sender<Job>>,
}

impl Journal {
    /// Starts the writer over `store`.
    pub(crate) fn start(store: Arc<Store>) -> Journal {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("capstan-pipelines-journal".into())
            .spawn(move || writer(&store, &rx))
            .expect("spawning the journal writer");
        Journal {
            queue: Mutex::new(tx),
        }
    }

    /// Runs `f` in the next batch's transaction; answers once that
    /// transaction is committed. `f` may run twice (the batch failed and
    /// is run again write by write); only a committed run's value is kept.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        mut f: impl FnMut(&mut Conn) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let slot = Arc::new(Mutex::new(None));
        let out = slot.clone();
        let op: Op = Box::new(move |c| {
            let v = f(c)?;
            *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
            Ok(())
        });
        let (done, answer) = oneshot::channel();
        let sent = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Job { op, done });
        if sent.is_err() {
            return Err(gone());
        }
        answer.await.map_err(|_| gone())??;
        let value = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        value.ok_or_else(gone)
    }
}

fn gone() -> StoreError {
    StoreError::Db(DbError::Unavailable(
        "the pipelines journal writer stopped".into(),
    ))
}

fn writer(store: &Store, rx: &mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let batch = store.with(|c| {
            c.tx(|c| {
                for job in jobs.iter_mut() {
                    (job.op)(c)?;
                }
                Ok::<_, DbError>(())
            })
        });
        match batch {
            Ok(()) => {
                for job in jobs {
                    let _ = job.done.send(Ok(()));
                }
            }
            Err(_) if jobs.len() > 1 => {
                for mut job in jobs {
                    let one: Result<(), DbError> = store.with(|c| c.tx(|c| (job.op)(c)));
                    let _ = job.done.send(one.map_err(StoreError::from));
                }
            }
            Err(e) => {
                if let Some(job) = jobs.into_iter().next() {
                    let _ = job.done.send(Err(StoreError::from(e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use capstan_store::args;

    use super::*;

    /// Many writers at once share transactions; a write that fails fails
    /// alone; every answered write is in the database, seen by another
    /// connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_commit_together_and_a_bad_one_fails_alone() {
        for t in capstan_store::testing::backends() {
            let journal = Arc::new(Journal::start(t.store.clone()));
            let mut writes = tokio::task::JoinSet::new();
            for i in 0..200i64 {
                let journal = journal.clone();
                writes.spawn(async move {
                    let r = journal
                        .write(move |c| {
                            if i == 77 {
                                c.exec("INSERT INTO no_such_table VALUES (1)", args![])?;
                            }
                            c.exec(
                                "INSERT INTO run_log (run_id, step, source, message, at_ms)
                                 VALUES ('r', NULL, 'engine', ?1, 0)",
                                args![i.to_string()],
                            )?;
                            Ok(i)
                        })
                        .await;
                    (i, r)
                });
            }
            let mut failed = Vec::new();
            while let Some(done) = writes.join_next().await {
                let (i, r) = done.unwrap();
                match r {
                    Ok(v) => assert_eq!(v, i),
                    Err(e) => failed.push((i, e.to_string())),
                }
            }
            assert_eq!(failed.len(), 1, "{failed:?}");
            assert_eq!(failed[0].0, 77);
            assert!(failed[0].1.contains("no_such_table"), "{failed:?}");
            let other = t.reopen();
            let n: i64 = other
                .with(|c| c.value("SELECT COUNT(*) FROM run_log WHERE run_id = 'r'", args![]))
                .unwrap();
            assert_eq!(n, 199, "{:?}", t.store.backend());
        }
    }
}
