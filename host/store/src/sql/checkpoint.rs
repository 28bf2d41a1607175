//! SQLite WAL checkpoints off the request path.
//!
//! By default SQLite checkpoints inside the commit that pushes the WAL past
//! 1,000 pages, so whichever request commits then also copies the WAL into
//! the database and fsyncs it: a 1,000-alert group paid that about every
//! fourth delivery. Here one thread per database runs passive checkpoints a
//! few times a second (they never block readers or writers); writers keep
//! SQLite's own checkpoint only as a backstop, should this thread fall far
//! behind.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// `wal_autocheckpoint` of the pool's connections: 16,384 pages (64 MiB at
/// 4 KiB), reached only if the background checkpoints fall behind.
pub(super) const WRITER_BACKSTOP_PAGES: i64 = 16_384;
/// How often the thread checkpoints.
const PERIOD: Duration = Duration::from_millis(100);

/// The checkpoint thread of one SQLite database; stopped on drop.
pub(super) struct Checkpointer {
    stop: Arc<AtomicBool>,
    last: Arc<Mutex<(i64, i64)>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path`.
    pub(super) fn start(path: PathBuf) -> Checkpointer {
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(Mutex::new((0, 0)));
        let (s, l) = (stop.clone(), last.clone());
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&path, &s, &l))
            .ok();
        if thread.is_none() {
            tracing::warn!("no checkpoint thread: SQLite checkpoints in writers' commits");
        }
        Checkpointer { stop, last, thread }
    }

    /// The last checkpoint's (frames in the WAL, frames of them copied
    /// into the database).
    pub(super) fn last(&self) -> (i64, i64) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn run(path: &std::path::Path, stop: &AtomicBool, last: &Mutex<(i64, i64)>) {
    let conn = match rusqlite::Connection::open(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("checkpoint thread: opening {}: {e}", path.display());
            return;
        }
    };
    let mut last_error = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(PERIOD);
        // (busy, frames in the WAL, frames checkpointed); PASSIVE copies
        // what no reader still needs and waits for nobody.
        let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        match r {
            Ok((_, log, done)) => {
                *last.lock().unwrap_or_else(|e| e.into_inner()) = (log, done);
                last_error = None;
            }
            Err(e) => {
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!("checkpointing {}: {e}", path.display());
                }
                last_error = Some(e);
            }
        }
    }
}
