//! `pipelines`: the pipelines engine in a real `capstan` process (release
//! build, SQLite in its data directory), driven over HTTP.
//!
//! - **throughput**: N runs of a 5-step chain of trivial steps (the test
//!   guest `pipeline-step` with `quiet`: no capability call at all), all
//!   posted at once; durable runs per second from the first
//!   POST to the last run journaled as succeeded.
//! - **scheduling latency**: per step after the first, the time from the
//!   previous step's result being journaled to the next attempt starting
//!   (both lines of the run log, in the database), and from one attempt's
//!   start to the next step's (`step to step`: with trivial steps, the
//!   latency from a step ready to it running).
//! - **resume**: N runs parked in a `retry-after` wait, then `kill -9` and a
//!   restart on the same data directory: time to `/readyz`, and to every
//!   run finished.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use capstan_tests::procs::{self, Capstan, TOKEN};
use serde_json::{Value, json};

use super::Table;

const CHAIN: &str = "name: chain5\nsteps:\n  - {id: s1, plugin: step, params: {quiet: true}}\n  - {id: s2, plugin: step, needs: [s1], params: {quiet: true}}\n  - {id: s3, plugin: step, needs: [s2], params: {quiet: true}}\n  - {id: s4, plugin: step, needs: [s3], params: {quiet: true}}\n  - {id: s5, plugin: step, needs: [s4], params: {quiet: true}}\n";

/// Requests starting runs in flight at once.
const POSTING: usize = 32;

/// Runs `runs` runs of the chain and answers the two tables.
/// With `perf`, the server is profiled over the throughput window
/// (`<perf>/pipelines.data`).
pub async fn scenario(quick: bool, perf: Option<PathBuf>) -> anyhow::Result<Vec<Table>> {
    let runs = if quick { 50 } else { 1000 };
    let config = max_running_config(256)?;
    let server = Capstan::start(
        None,
        &[
            (
                "CAPSTAN_CONFIG",
                config.path().to_str().context("utf-8 path")?,
            ),
            ("RUST_LOG", "warn"),
        ],
    );
    server.wait_ready().await;
    procs::step_and_pipeline(&server.url(), "chain5", CHAIN).await;

    let recording = perf
        .map(|dir| super::profile::record_pid(&dir, "pipelines", server.pid()))
        .transpose()?;
    let (started, started_ms) = (Instant::now(), unix_ms());
    let ids = post_runs(&server.url(), "chain5", runs, POSTING).await?;
    let posted = started.elapsed();
    let last_ms = wait_all_done(&server.url(), &ids, Duration::from_secs(600)).await?;
    let elapsed = Duration::from_millis(last_ms.saturating_sub(started_ms));
    if let Some(r) = recording {
        eprintln!("profile: {}", r.stop()?.display());
    }
    let mut t = Table::new(
        "Pipelines: durable runs of a 5-step chain (one process, SQLite)",
        &[
            "runs",
            "posted in",
            "all succeeded after",
            "runs/s",
            "steps/s",
        ],
    );
    t.row(vec![
        runs.to_string(),
        format!("{:.2} s", posted.as_secs_f64()),
        format!("{:.2} s", elapsed.as_secs_f64()),
        format!("{:.0}", runs as f64 / elapsed.as_secs_f64()),
        format!("{:.0}", 5.0 * runs as f64 / elapsed.as_secs_f64()),
    ]);
    // 200 runs spread over the whole batch (the first ones never queue).
    let sample: Vec<String> = ids
        .iter()
        .step_by((ids.len() / 200).max(1))
        .cloned()
        .collect();
    let p = phases(&server.url(), &sample).await?;
    let mut l = Table::new(
        "Pipelines: step scheduling latency (previous result journaled -> next attempt started), and the other phases of a run",
        &["phase", "samples", "p50", "p90", "p99", "max"],
    );
    for (phase, v) in [
        (
            "scheduling: result journaled -> next attempt started",
            &p.gaps,
        ),
        ("attempt: started -> result journaled", &p.attempts),
        (
            "step to step: attempt started -> next step's attempt started",
            &p.steps,
        ),
        ("queued: run stored -> first attempt started", &p.queued),
        (
            "running: first attempt started -> last result journaled",
            &p.running,
        ),
    ] {
        l.row(vec![
            phase.to_string(),
            v.len().to_string(),
            format!("{} ms", pct(v, 0.50)),
            format!("{} ms", pct(v, 0.90)),
            format!("{} ms", pct(v, 0.99)),
            format!("{} ms", v.last().copied().unwrap_or(0)),
        ]);
    }
    l.note("measured during the throughput run above, so under that load");
    l.note("a step's result and the next attempt's start are journaled in one transaction when the step's own task drives the run (since `finish_attempt`): `scheduling` is then near 0 by construction and the wait is in `attempt`");
    l.note("`step to step` is the scheduling latency as a user sees it (the previous step ready -> the next one running): the trivial call takes well under 1 ms, the rest is journaling the result with the next start, and starting it");
    drop(server);
    Ok(vec![t, l, resume(runs).await?])
}

/// kill -9 with `runs` runs in flight, then a restart.
async fn resume(runs: usize) -> anyhow::Result<Table> {
    // s2 answers retry-after until its 4th call, 4 s apart: every run is
    // parked there when the server dies (looking at 1,000 runs takes a few
    // seconds while the server is busy starting them).
    let yaml = "name: parked\nsteps:\n  - {id: s1, plugin: step, params: {quiet: true}}\n  - {id: s2, plugin: step, needs: [s1], params: {quiet: true, wait_polls: 4, poll_ms: 4000}, timeout: 10m}\n  - {id: s3, plugin: step, needs: [s2], params: {quiet: true}}\n";
    // Every run in flight at once, none queued by the server's limit.
    let config = max_running_config(runs)?;
    let env = [
        (
            "CAPSTAN_CONFIG",
            config.path().to_str().context("utf-8 path")?,
        ),
        ("RUST_LOG", "warn"),
    ];
    let mut server = Capstan::start(None, &env);
    server.wait_ready().await;
    procs::step_and_pipeline(&server.url(), "parked", yaml).await;
    let ids = post_runs(&server.url(), "parked", runs, POSTING).await?;
    // Wait until every run is past s1 (parked in s2's wait), looking at
    // 32 at a time so that the look takes well under the park.
    let url = server.url();
    let looking = Instant::now();
    let parked: Vec<anyhow::Result<()>> = {
        use futures::StreamExt as _;
        futures::stream::iter(&ids)
            .map(|id| past_s1(&url, id))
            .buffer_unordered(POSTING)
            .collect()
            .await
    };
    parked.into_iter().collect::<anyhow::Result<()>>()?;
    let looked = looking.elapsed();
    let dir = server.kill_9();
    let (restarted, restarted_ms) = (Instant::now(), unix_ms());
    let server = Capstan::start(Some(dir), &env);
    server.wait_ready().await;
    let ready = restarted.elapsed();
    let last_ms = wait_all_done(&server.url(), &ids, Duration::from_secs(900)).await?;
    let done = Duration::from_millis(last_ms.saturating_sub(restarted_ms));
    // When each run's log says it was resumed by the new process.
    let (mut resumed_ms, mut not_resumed) = (0u64, 0usize);
    for id in &ids {
        let log = procs::get_json(&server.url(), &format!("/v1/runs/{id}/log?limit=1000")).await;
        let at = log["lines"].as_array().and_then(|lines| {
            lines
                .iter()
                .filter(|l| {
                    l["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("resumed"))
                })
                .filter_map(|l| l["at_ms"].as_u64())
                .find(|at| *at >= restarted_ms)
        });
        match at {
            Some(at) => resumed_ms = resumed_ms.max(at),
            None => not_resumed += 1,
        }
    }
    let resumed = Duration::from_millis(resumed_ms.saturating_sub(restarted_ms));
    let mut t = Table::new(
        "Pipelines: resume after kill -9",
        &[
            "runs in flight",
            "restart to /readyz",
            "restart to every run resumed",
            "restart to all finished",
        ],
    );
    t.row(vec![
        runs.to_string(),
        format!("{:.2} s", ready.as_secs_f64()),
        format!("{:.2} s", resumed.as_secs_f64()),
        format!("{:.2} s", done.as_secs_f64()),
    ]);
    t.note("resumed: the run's log line `resumed: ...`, written with the first state the new process journals for it");
    t.note("finished: each run still had s2's remaining polls (4 s apart) and s3 to run after the restart");
    t.note(format!(
        "posted, then every run seen past s1 {:.1} s later; then the kill",
        looked.as_secs_f64()
    ));
    if not_resumed > 0 {
        t.note(format!(
            "{not_resumed} runs have no `resumed` line after the restart (they had finished before the kill)"
        ));
    }
    Ok(t)
}

/// Posts `n` runs, `conns` requests in flight at a time (a new one as
/// soon as one is answered); their ids, in order.
/// Waits until run `id` is past its step `s1`.
async fn past_s1(base: &str, id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let run = procs::get_json(base, &format!("/v1/runs/{id}")).await;
        // A step's state is a name, or an object with it (`state`) and details.
        let state = &run["run"]["steps"]["s1"]["state"];
        if state == "succeeded" || state["state"] == "succeeded" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("run {id} never got past s1: {run}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_runs(
    base: &str,
    pipeline: &str,
    n: usize,
    conns: usize,
) -> anyhow::Result<Vec<String>> {
    use futures::StreamExt as _;
    let client = capstan_tests::client();
    let url = format!("{base}/v1/pipelines/{pipeline}/runs");
    let answers: Vec<anyhow::Result<String>> = futures::stream::iter(0..n)
        .map(|_| {
            let rb = client
                .post(&url)
                .bearer_auth(TOKEN)
                .json(&json!({ "params": {} }));
            async move {
                let r = rb.send().await?;
                let status = r.status();
                let body: Value = r.json().await?;
                if status != 201 {
                    bail!("starting a run: {status} {body}");
                }
                Ok(body["run"]["id"].as_str().context("run id")?.to_string())
            }
        })
        .buffered(conns)
        .collect()
        .await;
    answers.into_iter().collect()
}

/// Waits until every run in `ids` succeeded (fails on any other ending); answers when the last of them was
/// journaled as finished (the server's `updated_ms`, Unix ms), so that the
/// time this loop takes to look at a thousand runs is not counted.
async fn wait_all_done(base: &str, ids: &[String], limit: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + limit;
    let mut last_ms = 0u64;
    let mut left: Vec<&String> = ids.iter().collect();
    while !left.is_empty() {
        let mut still = Vec::new();
        for id in left {
            let run = procs::get_json(base, &format!("/v1/runs/{id}")).await;
            match run["run"]["status"].as_str().unwrap_or_default() {
                "succeeded" => {
                    last_ms = last_ms.max(run["updated_ms"].as_u64().unwrap_or_default());
                }
                "queued" | "running" => still.push(id),
                other => bail!("run {id} ended {other}: {run}"),
            }
            if !still.is_empty() {
                // Checking the rest now would only find them running too.
                break;
            }
        }
        let pos = still.first().and_then(|f| ids.iter().position(|i| i == *f));
        left = match pos {
            Some(p) => ids[p..].iter().collect(),
            None => Vec::new(),
        };
        if Instant::now() > deadline {
            bail!("{} runs not finished in {limit:?}", left.len());
        }
        if !left.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(last_ms)
}

/// Phases of runs, in milliseconds, read from their logs.
#[derive(Default)]
struct Phases {
    /// A step's result journaled -> the next step's attempt started.
    gaps: Vec<i64>,
    /// An attempt started -> its result journaled.
    attempts: Vec<i64>,
    /// An attempt started -> the next step's attempt started.
    steps: Vec<i64>,
    /// Run queued -> its first attempt started (waiting to be admitted).
    queued: Vec<i64>,
    /// First attempt started -> last step's result journaled.
    running: Vec<i64>,
}

async fn phases(base: &str, ids: &[String]) -> anyhow::Result<Phases> {
    let mut p = Phases::default();
    for id in ids {
        let log = procs::get_json(base, &format!("/v1/runs/{id}/log?limit=1000")).await;
        let lines = log["lines"].as_array().context("log lines")?;
        let at = |step: Option<&str>, source: &str, prefix: &str| {
            lines
                .iter()
                .find(|l| {
                    l["step"].as_str() == step
                        && l["source"] == source
                        && l["message"]
                            .as_str()
                            .unwrap_or_default()
                            .starts_with(prefix)
                })
                .and_then(|l| l["at_ms"].as_i64())
        };
        let started = |s| at(Some(s), "engine", "attempt 1 started");
        let done = |s| at(Some(s), "plugin", "succeeded");
        for s in ["s1", "s2", "s3", "s4", "s5"] {
            if let (Some(a), Some(b)) = (started(s), done(s)) {
                p.attempts.push(b - a);
            }
        }
        for (prev, next) in [("s1", "s2"), ("s2", "s3"), ("s3", "s4"), ("s4", "s5")] {
            if let (Some(done), Some(start)) = (done(prev), started(next)) {
                p.gaps.push(start - done);
            }
            if let (Some(a), Some(b)) = (started(prev), started(next)) {
                p.steps.push(b - a);
            }
        }
        if let (Some(q), Some(s1)) = (at(None, "engine", "queued"), started("s1")) {
            p.queued.push(s1 - q);
        }
        if let (Some(s1), Some(s5)) = (started("s1"), done("s5")) {
            p.running.push(s5 - s1);
        }
    }
    for v in [
        &mut p.gaps,
        &mut p.attempts,
        &mut p.steps,
        &mut p.queued,
        &mut p.running,
    ] {
        v.sort_unstable();
    }
    Ok(p)
}

/// A config file that sets `pipelines_max_running`.
fn max_running_config(n: usize) -> anyhow::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new()?;
    writeln!(f, "pipelines_max_running = {n}")?;
    Ok(f)
}

fn pct(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
