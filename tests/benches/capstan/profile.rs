//! `--perf DIR`: a `perf record` of the bench process during the first
//! measured round of each `http` target, and a summary of where the server's
//! CPU time went (self time by symbol, and every sample put into one bucket).
//!
//! Sampling costs CPU and disturbs the figures of the same run: take the
//! ratio from a run without `--perf`, the profile from a run with it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;

/// Samples per second and thread (`perf record -F`).
const FREQ: u32 = 999;

/// A `perf record` of this process, running in the background.
pub struct Recording {
    child: Child,
    data: PathBuf,
}

/// Starts recording this process for `secs` seconds into `dir/<name>.data`.
pub fn record(dir: &Path, name: &str, secs: f64) -> anyhow::Result<Recording> {
    start(dir, name, std::process::id(), Some(secs))
}

/// Starts recording process `pid` into `dir/<name>.data` until
/// [`Recording::stop`]; answers once perf has written its data file's
/// header (a SIGINT before that kills perf, and a short window is lost).
pub fn record_pid(dir: &Path, name: &str, pid: u32) -> anyhow::Result<Recording> {
    let _ = std::fs::remove_file(dir.join(format!("{name}.data")));
    let r = start(dir, name, pid, None)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::metadata(&r.data).is_ok_and(|m| m.len() > 0) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "perf record did not start within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(r)
}

fn start(dir: &Path, name: &str, pid: u32, secs: Option<f64>) -> anyhow::Result<Recording> {
    std::fs::create_dir_all(dir)?;
    let data = dir.join(format!("{name}.data"));
    let mut cmd = Command::new("perf");
    cmd.args(["record", "-q", "-F", &FREQ.to_string()])
        .args(["--call-graph", "dwarf,16384", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data);
    if let Some(secs) = secs {
        cmd.args(["--", "sleep", &format!("{secs:.3}")]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running `perf record` (Debian: apt-get install linux-perf)")?;
    Ok(Recording { child, data })
}

impl Recording {
    /// Ends a recording started by [`record_pid`] (SIGINT, as Ctrl-C would);
    /// the data file's path.
    pub fn stop(self) -> anyhow::Result<PathBuf> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        self.finish()
    }

    /// Waits for the recording to end; the data file's path.
    pub fn finish(mut self) -> anyhow::Result<PathBuf> {
        let status = self.child.wait()?;
        let written = std::fs::metadata(&self.data).is_ok_and(|m| m.len() > 0);
        // perf may die of the SIGINT that stops it while it is still
        // attaching to new threads; what it wrote is still readable.
        let interrupted = std::os::unix::process::ExitStatusExt::signal(&status) == Some(2);
        anyhow::ensure!(
            status.success() || (interrupted && written),
            "perf record failed: {status}"
        );
        Ok(self.data)
    }
}

/// Where a sample's time goes. The audit writer's thread and the plugin
/// call (any frame of `Registry::invoke`, wasmtime or the guest's code) take
/// their samples whole (guest code is a leaf in anonymous memory); every other sample goes to the bucket of its
/// innermost frame that matches one, so that a `memcpy` counts for its
/// caller's crate.
const BUCKETS: &[(&str, &[&str])] = &[
    ("audit writer thread (SQLite)", &[]),
    (
        "plugin call (`Registry::invoke`: instantiate, guest, host calls)",
        &[
            "Registry::invoke",
            "wasmtime",
            "cranelift",
            // The call's own frames, when the unwinding stops short of
            // `Registry::invoke` (deep HTTP stacks outgrow the stack copy).
            "capstan_runtime::runtime::",
            "capstan_registry::metrics::",
        ],
    ),
    (
        "kernel: TCP send/receive",
        &[
            "tcp_",
            "sock_",
            "__sys_sendto",
            "__sys_recvfrom",
            "ksys_write",
            "ksys_read",
            "sendmsg",
            "recvmsg",
            "skb",
        ],
    ),
    (
        "kernel: wake-ups, epoll, futex, scheduling",
        &[
            "futex",
            "epoll",
            "schedule",
            "try_to_wake_up",
            "sched_yield",
        ],
    ),
    (
        "malloc / free",
        &["malloc", "_int_free", "cfree", "__libc_free", "realloc"],
    ),
    ("JSON (serde_json)", &["serde_json::", "serde::"]),
    ("token hash (sha2)", &["sha2::"]),
    (
        "tracing",
        &["tracing::", "tracing_core::", "tower_http::trace"],
    ),
    (
        "hyper / axum / tower (HTTP/1 parse and encode, routing)",
        &[
            "hyper::",
            "hyper_util::",
            "axum::",
            "tower::",
            "tower_http::",
            "http::",
            "httparse::",
        ],
    ),
    (
        "capstan API (guard, handler, response DTO)",
        &["capstan_api::"],
    ),
    (
        "capstan registry, runtime, store (audit record, slot lookup...)",
        &["capstan"],
    ),
    (
        "tokio (scheduler, timers, I/O driver)",
        &["tokio::", "mio::"],
    ),
];

/// One sample: its thread's name and frames, leaf first.
struct Sample {
    comm: String,
    frames: Vec<String>,
}

fn samples(data: &Path) -> anyhow::Result<Vec<Sample>> {
    let out = Command::new("perf")
        .args(["script", "--no-inline", "-F", "comm,tid,ip,sym,dso", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()?;
    anyhow::ensure!(out.status.success(), "perf script failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut all = Vec::new();
    let mut current: Option<Sample> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            all.extend(current.take());
        } else if line.starts_with(char::is_whitespace) {
            if let Some(s) = &mut current {
                s.frames.push(frame(line.trim()));
            }
        } else {
            all.extend(current.take());
            // `comm tid`; a comm may hold spaces.
            let comm = line.trim_end().rsplit_once(' ').map_or(line, |(c, _)| c);
            current = Some(Sample {
                comm: comm.trim().to_string(),
                frames: Vec::new(),
            });
        }
    }
    all.extend(current);
    Ok(all)
}

/// `addr sym+off (dso)` -> `sym`, or `[JIT]` for code outside any file
/// (the guest's compiled code), or `[unknown] (dso)`.
fn frame(line: &str) -> String {
    let rest = line.split_once(' ').map_or("", |(_, r)| r);
    let (sym, dso) = match rest.rfind(" (") {
        Some(i) => (&rest[..i], rest[i + 2..].trim_end_matches(')')),
        None => (rest, ""),
    };
    let sym = sym.split("+0x").next().unwrap_or(sym);
    // perf names anonymous executable memory `/tmp/perf-<pid>.map`.
    let anonymous =
        dso == "[unknown]" || dso.starts_with("//anon") || dso.starts_with("/tmp/perf-");
    if sym == "[unknown]" && (anonymous || dso.is_empty()) {
        "[JIT]".into()
    } else if sym == "[unknown]" {
        format!("[unknown] ({dso})")
    } else {
        sym.to_string()
    }
}

fn bucket_of(s: &Sample) -> &'static str {
    if s.comm == "capstan-audit" {
        return BUCKETS[0].0;
    }
    let matches = |f: &String, patterns: &[&str]| patterns.iter().any(|p| f.contains(p));
    // Guest code is only ever the leaf: perf cannot unwind through it. An
    // unknown frame further up is an unwinding that ran out of stack copy.
    let guest = s.frames.first().is_some_and(|f| f == "[JIT]");
    if guest || s.frames.iter().any(|f| matches(f, BUCKETS[1].1)) {
        return BUCKETS[1].0;
    }
    for f in &s.frames {
        if let Some((name, _)) = BUCKETS[2..].iter().find(|(_, p)| matches(f, p)) {
            return name;
        }
    }
    "other"
}

/// What one recording shows: shares of the server threads' samples.
pub struct Summary {
    /// Server samples (the load generator's threads left out).
    pub samples: usize,
    /// (bucket, share), in [`BUCKETS`] order, then `other`.
    pub buckets: Vec<(&'static str, f64)>,
    /// (leaf symbol, share), the largest first.
    pub top_self: Vec<(String, f64)>,
}

/// Summarises `data`, leaving out the threads whose name starts with `loadgen`.
pub fn summarise(data: &Path, top: usize) -> anyhow::Result<Summary> {
    let all: Vec<Sample> = samples(data)?
        .into_iter()
        .filter(|s| !s.comm.starts_with("loadgen"))
        .collect();
    let n = all.len().max(1) as f64;
    let mut buckets: HashMap<&str, usize> = HashMap::new();
    let mut leaves: HashMap<String, usize> = HashMap::new();
    for s in &all {
        *buckets.entry(bucket_of(s)).or_default() += 1;
        let leaf = s.frames.first().cloned().unwrap_or_else(|| "[none]".into());
        *leaves.entry(leaf).or_default() += 1;
    }
    let order = BUCKETS.iter().map(|(b, _)| *b).chain(["other"]);
    let buckets = order
        .map(|b| (b, buckets.get(b).copied().unwrap_or(0) as f64 / n))
        .collect();
    let mut top_self: Vec<(String, f64)> = leaves
        .into_iter()
        .map(|(sym, c)| (sym, c as f64 / n))
        .collect();
    top_self.sort_by(|a, b| b.1.total_cmp(&a.1));
    top_self.truncate(top);
    Ok(Summary {
        samples: all.len(),
        buckets,
        top_self,
    })
}
