//! The metrics engine: when metrics-source plugins run, and what `/metrics`
//! serves of them.
//!
//! A source in `schedule` mode (the default) runs on its own timer, every
//! `interval` with at most `timeout` per run, never two runs at once;
//! `/metrics` serves its last good values and how old they are. A source in
//! `scrape` mode runs during each scrape, all of them at once, each within
//! its timeout and the scrape's (`X-Prometheus-Scrape-Timeout-Seconds` less
//! an offset). Either way each source reports, as exporters do:
//! `capstan_source_success{plugin}` (its last run succeeded: 1, failed or
//! timed out: 0), `capstan_source_duration_seconds{plugin}` and
//! `capstan_source_last_success_timestamp_seconds{plugin}`. A source that
//! fails or hangs keeps its last good values (up to `max_age_intervals`
//! intervals old, then they are dropped) and never delays the others. At
//! most `max_parallel` scheduled runs go at once; a due source waits for a
//! free slot (sources whose turn comes first go first).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::manifest::{Role, SourceMode};
use crate::registry::Registry;
use crate::runtime::bindings::metrics_source::MetricFamily;
use crate::runtime::{Call, Output, Prepared};

/// Server-wide defaults; a manifest's `[metrics]` overrides them per plugin.
#[derive(Debug, Clone)]
pub struct SourceDefaults {
    /// `schedule` or `scrape`.
    pub mode: SourceMode,
    /// Time between runs in schedule mode.
    pub interval: Duration,
    /// Longest a run may take.
    pub timeout: Duration,
    /// Taken off the scrape's timeout header, so the answer arrives in time.
    pub scrape_offset: Duration,
    /// Cached values older than this many intervals are no longer served.
    pub max_age_intervals: u32,
    /// Scheduled runs at once; more due sources wait for the next tick, so
    /// sources never crowd out invocations (or each other at startup).
    pub max_parallel: usize,
}

impl Default for SourceDefaults {
    fn default() -> Self {
        SourceDefaults {
            mode: SourceMode::Schedule,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            scrape_offset: Duration::from_millis(500),
            max_age_intervals: 10,
            max_parallel: 16,
        }
    }
}

/// One source's schedule, resolved from its manifest and the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    mode: SourceMode,
    interval: Duration,
    timeout: Duration,
}

/// What is known of one source.
#[derive(Default)]
struct Cached {
    /// Active version's digest the state belongs to.
    digest: String,
    families: Arc<Vec<MetricFamily>>,
    /// Wall-clock and monotonic time of the last success.
    last_success: Option<(SystemTime, Instant)>,
    /// Outcome and duration of the last completed run.
    last_run: Option<(bool, Duration)>,
    next_due: Option<Instant>,
}

#[derive(Default)]
struct SourceState {
    cached: Mutex<Cached>,
    running: AtomicBool,
}

/// The metrics engine of one server (each replica serves its own `/metrics`).
pub struct Sources {
    registry: Arc<Registry>,
    defaults: SourceDefaults,
    state: Mutex<HashMap<String, Arc<SourceState>>>,
    /// Scheduled runs in flight.
    running: Arc<AtomicUsize>,
}

impl Sources {
    /// An engine over `registry`'s metrics-source plugins.
    pub fn new(registry: Arc<Registry>, defaults: SourceDefaults) -> Arc<Sources> {
        Arc::new(Sources {
            registry,
            defaults,
            state: Mutex::new(HashMap::new()),
            running: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The active metrics sources with their plans; forgets removed ones.
    fn active(&self) -> Vec<(String, Arc<Prepared>, Plan, Arc<SourceState>)> {
        let mut out = Vec::new();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for name in self.registry.names() {
            let Some(p) = self.registry.get_slot(&name).ok().and_then(|s| s.active()) else {
                continue;
            };
            if p.manifest.role != Role::MetricsSource {
                continue;
            }
            let m = p.manifest.metrics.clone().unwrap_or_default();
            let plan = Plan {
                mode: m.mode.unwrap_or(self.defaults.mode),
                interval: m
                    .interval_ms
                    .map_or(self.defaults.interval, Duration::from_millis),
                timeout: m
                    .timeout_ms
                    .map_or(self.defaults.timeout, Duration::from_millis),
            };
            let s = state.entry(name.clone()).or_default().clone();
            out.push((name, p, plan, s));
        }
        state.retain(|n, _| out.iter().any(|(m, ..)| m == n));
        out
    }

    /// Runs due schedule-mode sources until the task is aborted.
    pub async fn run_scheduler(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (name, plan, s) in self.due(Instant::now()) {
                if self.running.load(Ordering::Acquire) >= self.defaults.max_parallel.max(1) {
                    break;
                }
                if s.running.swap(true, Ordering::AcqRel) {
                    continue;
                }
                self.running.fetch_add(1, Ordering::AcqRel);
                let me = self.clone();
                tokio::spawn(async move {
                    me.run_one(&name, &s, plan.timeout).await;
                    s.cached.lock().unwrap_or_else(|e| e.into_inner()).next_due =
                        Some(Instant::now() + plan.interval);
                    s.running.store(false, Ordering::Release);
                    me.running.fetch_sub(1, Ordering::AcqRel);
                });
            }
        }
    }

    /// Schedule-mode sources due at `now`, the longest overdue first (a new
    /// or replaced version first of all).
    fn due(&self, now: Instant) -> Vec<(String, Plan, Arc<SourceState>)> {
        let mut due = Vec::new();
        for (name, p, plan, s) in self.active() {
            if plan.mode != SourceMode::Schedule || s.running.load(Ordering::Acquire) {
                continue;
            }
            let mut c = s.cached.lock().unwrap_or_else(|e| e.into_inner());
            if c.digest != *p.digest {
                c.digest = p.digest.to_string();
                c.next_due = None;
            }
            if c.next_due.is_none_or(|at| at <= now) {
                due.push((c.next_due, name, plan, s.clone()));
            }
        }
        due.sort_by_key(|(at, ..)| *at);
        due.into_iter().map(|(_, n, p, s)| (n, p, s)).collect()
    }

    /// One run of `name` within `timeout`; records its outcome.
    async fn run_one(&self, name: &str, s: &SourceState, timeout: Duration) {
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, self.registry.invoke(name, Call::Collect)).await;
        let took = started.elapsed();
        let families = match result {
            Ok(Ok((Output::Metrics(f), _, _))) => Some(f),
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                tracing::warn!(plugin = %name, "metrics source failed: {e}");
                None
            }
            Err(_) => {
                tracing::warn!(plugin = %name, timeout_ms = timeout.as_millis() as u64, "metrics source timed out");
                None
            }
        };
        let mut c = s.cached.lock().unwrap_or_else(|e| e.into_inner());
        c.last_run = Some((families.is_some(), took));
        if let Some(f) = families {
            c.families = Arc::new(f);
            c.last_success = Some((SystemTime::now(), Instant::now()));
        }
    }

    /// The text of `/metrics`: the server's families, each source's
    /// families and its success, duration and last success. Scrape-mode
    /// sources run now, within `scrape_timeout` (from the scrape's header)
    /// less the offset.
    pub async fn render(self: &Arc<Self>, scrape_timeout: Option<Duration>) -> String {
        let active = self.active();
        let budget = scrape_timeout.map(|t| {
            t.saturating_sub(self.defaults.scrape_offset)
                .max(Duration::from_millis(100))
        });
        let mut runs = tokio::task::JoinSet::new();
        for (name, _, plan, s) in &active {
            if plan.mode == SourceMode::Scrape {
                let timeout = budget.map_or(plan.timeout, |b| b.min(plan.timeout));
                let (me, name, s) = (self.clone(), name.clone(), s.clone());
                runs.spawn(async move { me.run_one(&name, &s, timeout).await });
            }
        }
        while runs.join_next().await.is_some() {}
        let mut families = Vec::new();
        let mut meta = Meta::default();
        let now = Instant::now();
        for (name, _, plan, s) in &active {
            let c = s.cached.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((ok, took)) = c.last_run {
                meta.add(name, ok, took, c.last_success.map(|(t, _)| t));
            }
            let max_age = plan.interval.max(plan.timeout) * self.defaults.max_age_intervals;
            if c.last_success.is_some_and(|(_, at)| now - at <= max_age) {
                families.push((name.clone(), c.families.to_vec()));
            }
        }
        let text = self.registry.metrics().render(&families);
        let mut text = text.strip_suffix("# EOF\n").unwrap_or(&text).to_string();
        meta.write(&mut text);
        text.push_str("# EOF\n");
        text
    }
}

/// The per-source families, written as text.
#[derive(Default)]
struct Meta {
    success: String,
    duration: String,
    last: String,
}

impl Meta {
    fn add(&mut self, plugin: &str, ok: bool, took: Duration, last: Option<SystemTime>) {
        // Plugin names are [a-z0-9-]: nothing to escape.
        let _ = writeln!(
            self.success,
            "capstan_source_success{{plugin=\"{plugin}\"}} {}",
            u8::from(ok)
        );
        let _ = writeln!(
            self.duration,
            "capstan_source_duration_seconds{{plugin=\"{plugin}\"}} {}",
            took.as_secs_f64()
        );
        if let Some(t) = last.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
            let _ = writeln!(
                self.last,
                "capstan_source_last_success_timestamp_seconds{{plugin=\"{plugin}\"}} {}",
                t.as_secs_f64()
            );
        }
    }

    fn write(&self, out: &mut String) {
        for (name, help, body) in [
            (
                "capstan_source_success",
                "Whether the metrics source's last run succeeded (1) or failed or timed out (0)",
                &self.success,
            ),
            (
                "capstan_source_duration_seconds",
                "How long the metrics source's last run took",
                &self.duration,
            ),
            (
                "capstan_source_last_success_timestamp_seconds",
                "When the metrics source last succeeded (Unix time): the age of the values served",
                &self.last,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            out.push_str(body);
        }
    }
}
