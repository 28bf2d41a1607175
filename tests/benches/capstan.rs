//! Capstan benchmarks: figures, not assertions.
//!
//! ```sh
//! cargo bench -p capstan-tests --bench capstan                     # every scenario
//! cargo bench -p capstan-tests --bench capstan -- http --markdown  # one scenario, plus Markdown tables
//! cargo bench -p capstan-tests --bench capstan -- --quick          # small sizes, a smoke run
//! cargo bench -p capstan-tests --bench capstan -- http --perf DIR  # also profile each HTTP target (perf)
//! cargo bench -p capstan-tests --bench capstan -- pipelines --perf DIR  # also profile the server over the throughput window
//! ```
//!
//! Scenarios (each measured in the same run as its comparison):
//!
//! - `invoke`: in-process fresh-instance invoke of the bundled `render-deployment`
//!   through `Registry::invoke` and `Runtime::invoke`, next to bare wasmtime
//!   running the same component with the same params (own engine, same pooling
//!   settings, `InstancePre`, fresh `Store` per call).
//! - `http`: `POST /v1/plugins/render-deployment/invoke` under a loopback load
//!   generator (keep-alive connections, fixed duration), next to a plain axum
//!   handler that returns a similar JSON body without running Wasm.
//! - `reload`: new versions installed through the watched plugins directory
//!   and the upload API while the load generator invokes the plugin.
//! - `restart`: time to `/readyz` with 100 plugins, precompiled artifacts
//!   removed (cold) and present (warm).
//! - `rss`: VmRSS/VmHWM of a fresh process before and after loading 100
//!   plugins, and after 1000 invocations spread over them.
//! - `noisy`: HTTP invoke latency of `render-deployment` (1 connection) while
//!   two other plugins spin until their deadline, with and without the
//!   per-plugin concurrency limit.
//! - `pipelines`: durable runs per second of a 5-step pipeline, step
//!   scheduling latency, and resuming in-flight runs after `kill -9`, in a
//!   `capstan` process (see `capstan/pipelines.rs`).
//!
//! Without `--bench` (as `cargo test --benches` runs it) nothing is measured.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use capstan::manifest::{Manifest, Role};
use capstan::registry::{Registry, Source};
use capstan::runtime::Call;
use capstan::runtime::bindings::capstan::plugin::{config as wit_config, log as wit_log};
use capstan::runtime::bindings::{alert_handler, deploy_step};
use capstan::server::Server;
use capstan_tests::{TestServer, test_config};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

#[path = "capstan/pipelines.rs"]
mod pipelines;
#[path = "capstan/profile.rs"]
mod profile;

const PLUGIN: &str = "render-deployment";
const PARAMS: &str =
    r#"{"name":"web","image":"registry.local/web:1.4.2","replicas":3,"port":8080}"#;
const SCENARIOS: [&str; 7] = [
    "invoke",
    "http",
    "reload",
    "restart",
    "rss",
    "noisy",
    "pipelines",
];

// ---------------------------------------------------------------- options

#[derive(Debug, Clone)]
struct Opts {
    filters: Vec<String>,
    markdown: bool,
    quick: bool,
    bench: bool,
    /// `--secs N`: seconds per HTTP round instead of the default.
    secs: Option<f64>,
    /// `--perf DIR`: profile each `http` target's first round, or the
    /// `pipelines` server over its throughput window (see [`profile`]).
    perf: Option<PathBuf>,
    /// `--pin`: the server (this process) on CPU 0 with one runtime worker,
    /// every load generator on CPU 1 (see [`pin`]).
    pin: bool,
}

/// Sizes of every scenario; `--quick` shrinks them for a smoke run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    invoke_warmup: usize,
    invoke_rounds: usize,
    invoke_per_round: usize,
    http_concurrency: usize,
    http_warmup: Duration,
    http_rounds: usize,
    http_round: Duration,
    reload_k: usize,
    reload_concurrency: usize,
    restart_plugins: usize,
    restart_cold_runs: usize,
    restart_warm_runs: usize,
    rss_plugins: usize,
    rss_calls: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                invoke_warmup: 20,
                invoke_rounds: 2,
                invoke_per_round: 20,
                http_concurrency: 16,
                http_warmup: Duration::from_millis(200),
                http_rounds: 1,
                http_round: Duration::from_secs(1),
                reload_k: 2,
                reload_concurrency: 16,
                restart_plugins: 10,
                restart_cold_runs: 1,
                restart_warm_runs: 1,
                rss_plugins: 10,
                rss_calls: 100,
            }
        } else {
            Sizes {
                invoke_warmup: 200,
                invoke_rounds: 10,
                invoke_per_round: 200,
                http_concurrency: 16,
                http_warmup: Duration::from_secs(1),
                http_rounds: 2,
                http_round: Duration::from_secs(5),
                reload_k: 10,
                reload_concurrency: 16,
                restart_plugins: 100,
                restart_cold_runs: 2,
                restart_warm_runs: 3,
                rss_plugins: 100,
                rss_calls: 1000,
            }
        }
    }
}

fn parse_args(args: &[String]) -> Opts {
    let mut o = Opts {
        filters: Vec::new(),
        markdown: false,
        quick: false,
        bench: false,
        secs: None,
        perf: None,
        pin: false,
    };
    let mut args = args.iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--secs" => o.secs = args.next().and_then(|s| s.parse().ok()),
            "--perf" => o.perf = args.next().map(PathBuf::from),
            "--pin" => o.pin = true,
            "--bench" => o.bench = true,
            "--markdown" => o.markdown = true,
            "--quick" => o.quick = true,
            flag if flag.starts_with('-') => eprintln!("ignoring unknown flag {flag}"),
            name => o.filters.push(name.to_string()),
        }
    }
    o
}

impl Opts {
    fn wants(&self, scenario: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| scenario.contains(f.as_str()))
    }
}

// ---------------------------------------------------------------- report

/// One table of figures.
struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    fn new(title: &str, headers: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    fn print_plain(&self) {
        let cols = self.headers.len();
        let mut width = vec![0; cols];
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        println!("\n== {}", self.title);
        let line = |r: &Vec<String>| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == 0 {
                        format!("{c:<w$}", w = width[i])
                    } else {
                        format!("{c:>w$}", w = width[i])
                    }
                })
                .collect();
            println!("  {}", cells.join("  "));
        };
        line(&self.headers);
        println!(
            "  {}",
            width
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("  ")
        );
        for r in &self.rows {
            line(r);
        }
        for n in &self.notes {
            println!("  * {n}");
        }
    }

    fn print_markdown(&self) {
        println!("\n#### {}\n", self.title);
        println!("| {} |", self.headers.join(" | "));
        let align: Vec<&str> = (0..self.headers.len())
            .map(|i| if i == 0 { "---" } else { "---:" })
            .collect();
        println!("|{}|", align.join("|"));
        for r in &self.rows {
            println!("| {} |", r.join(" | "));
        }
        if !self.notes.is_empty() {
            println!();
            for n in &self.notes {
                println!("- {n}");
            }
        }
    }
}

/// Order statistics of a sample, in the sample's unit.
#[derive(Debug, Clone, Copy)]
struct Stats {
    n: usize,
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

fn stats(samples: &[f64]) -> Stats {
    let mut s: Vec<f64> = samples.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return Stats {
            n: 0,
            min: f64::NAN,
            p50: f64::NAN,
            p90: f64::NAN,
            p99: f64::NAN,
            max: f64::NAN,
            mean: f64::NAN,
        };
    }
    // Nearest rank.
    let rank = |p: f64| s[((p / 100.0 * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    Stats {
        n: s.len(),
        min: s[0],
        p50: rank(50.0),
        p90: rank(90.0),
        p99: rank(99.0),
        max: s[s.len() - 1],
        mean: s.iter().sum::<f64>() / s.len() as f64,
    }
}

fn f1(x: f64) -> String {
    format!("{x:.1}")
}

fn f2(x: f64) -> String {
    format!("{x:.2}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------- machine

fn machine_table(label: &str) -> Table {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown")
        .to_string();
    let mhz = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("?")
        .to_string();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut t = Table::new(label, &["item", "value"]);
    t.row(vec!["nproc".into(), nproc.to_string()]);
    t.row(vec!["cpu".into(), format!("{model} @ {mhz} MHz")]);
    t.row(vec!["memory".into(), mem]);
    t.row(vec!["kernel".into(), kernel.trim().to_string()]);
    t.row(vec!["loadavg".into(), loadavg()]);
    t.row(vec![
        "pinning (`--pin`)".into(),
        if pinned() {
            "server on CPU 0 with 1 runtime worker, load generators on CPU 1".into()
        } else {
            "none: server and load generators share every CPU".into()
        },
    ]);
    t
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------- plugins

fn render_deployment() -> &'static capstan::bundled::Bundled {
    capstan::bundled::find(PLUGIN).expect("render-deployment is bundled")
}

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The component with a custom section appended: same code, another digest,
/// so the server compiles it instead of reusing a cached artifact.
fn salted(component: &[u8], salt: &str) -> Vec<u8> {
    let name = b"capstan-bench";
    let mut payload = Vec::new();
    leb128(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(salt.as_bytes());
    let mut out = component.to_vec();
    out.push(0);
    leb128(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// `manifest` with its `name` and/or `version` replaced.
fn rewrite_manifest(manifest: &str, name: Option<&str>, version: Option<&str>) -> String {
    let m = Manifest::parse(manifest).expect("bundled manifest parses");
    let mut text = manifest.to_string();
    if let Some(n) = name {
        let old = format!("name = \"{}\"", m.name);
        assert!(text.contains(&old), "manifest has no `{old}` line");
        text = text.replacen(&old, &format!("name = \"{n}\""), 1);
    }
    if let Some(v) = version {
        let old = format!("version = \"{}\"", m.version);
        assert!(text.contains(&old), "manifest has no `{old}` line");
        text = text.replacen(&old, &format!("version = \"{v}\""), 1);
    }
    text
}

/// One of the plugins of the 100-plugin scenarios.
struct BenchPlugin {
    name: String,
    manifest: String,
    bytes: Vec<u8>,
}

/// The `i`th plugin of the 100-plugin scenarios: cycling through the bundled
/// ones, each with its own name and its own digest (so each is compiled and
/// cached separately).
fn bench_plugin(i: usize) -> BenchPlugin {
    let bundled = capstan::bundled::BUNDLED;
    let b = &bundled[i % bundled.len()];
    let m = Manifest::parse(b.manifest).expect("bundled manifest parses");
    let name = format!("{}-{i:03}", m.name);
    BenchPlugin {
        manifest: rewrite_manifest(b.manifest, Some(&name), None),
        bytes: salted(b.component, &name),
        name,
    }
}

/// Names and roles of the first `n` bench plugins, without their bytes.
fn bench_names(n: usize) -> Vec<(String, Role)> {
    let bundled = capstan::bundled::BUNDLED;
    (0..n)
        .map(|i| {
            let m = Manifest::parse(bundled[i % bundled.len()].manifest)
                .expect("bundled manifest parses");
            (format!("{}-{i:03}", m.name), m.role)
        })
        .collect()
}

fn step_context() -> deploy_step::Context {
    deploy_step::Context {
        pipeline: "bench".into(),
        run_id: "run-1".into(),
        step: "render".into(),
        environment: "staging".into(),
        attempt: 1,
        inputs: vec![],
    }
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A call that suits `role` (the same inputs as the README's examples).
fn call_for(role: Role) -> Call {
    match role {
        Role::DeployStep => Call::Run {
            ctx: step_context(),
            params: PARAMS.into(),
        },
        Role::Provisioner => Call::Plan {
            spec: r#"{"name":"shop","team":"payments","environments":["dev","prod"]}"#.into(),
        },
        Role::MetricsSource => Call::Collect,
        Role::AlertHandler => {
            let labels = kv(&[
                ("alertname", "QueueTooDeep"),
                ("env", "test"),
                ("severity", "warning"),
            ]);
            let annotations = kv(&[
                ("runbook", "restart-worker"),
                ("summary", "Queue jobs depth is 42"),
            ]);
            Call::Handle {
                group: alert_handler::AlertGroup {
                    version: "4".into(),
                    group_key: "{}:{alertname=\"QueueTooDeep\"}".into(),
                    truncated_alerts: 0,
                    status: "firing".into(),
                    receiver: "capstan".into(),
                    group_labels: kv(&[("alertname", "QueueTooDeep")]),
                    common_labels: labels.clone(),
                    common_annotations: annotations.clone(),
                    external_url: "http://alertmanager:9093".into(),
                    alerts: vec![alert_handler::Alert {
                        status: "firing".into(),
                        labels,
                        annotations,
                        starts_at: "2026-11-27T08:50:20.84Z".into(),
                        ends_at: "0001-01-01T00:00:00Z".into(),
                        generator_url: "http://prometheus:9090/graph".into(),
                        fingerprint: "8773c714e2e6cf4d".into(),
                    }],
                },
            }
        }
    }
}

fn invoke_body() -> Vec<u8> {
    let params: Value = serde_json::from_str(PARAMS).expect("params are JSON");
    serde_json::to_vec(&json!({ "params": params })).expect("serialise")
}

fn registry_of(ts: &TestServer) -> Arc<Registry> {
    ts.server.as_ref().expect("server running").registry.clone()
}

// ---------------------------------------------------------------- bare wasmtime

/// wasmtime 48 has its own error type, which does not convert into anyhow's.
fn wt<T>(r: wasmtime::Result<T>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e:#}"))
}

/// Store data of the bare baseline: WASI only, plus the two Capstan host
/// functions `render-deployment` calls (`config.get`, `log.log`) as plain
/// lookups; every other Capstan import is a trap.
struct BareState {
    wasi: WasiCtx,
    table: ResourceTable,
    settings: Arc<Vec<(String, String)>>,
}

impl WasiView for BareState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit_config::Host for BareState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self
            .settings
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone()))
    }

    async fn all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self.settings.as_ref().clone())
    }
}

impl wit_log::Host for BareState {
    async fn log(
        &mut self,
        _level: wit_log::Level,
        _message: String,
        _fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        Ok(())
    }
}

/// Bare wasmtime running one deploy-step component.
struct Bare {
    engine: Engine,
    pre: InstancePre<BareState>,
    indices: deploy_step::GuestIndices,
    instrumented: bool,
    settings: Arc<Vec<(String, String)>>,
}

/// Which engine the bare baseline uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BareKind {
    /// The same settings as Capstan's engine: pooling with 2 MiB of memory
    /// and 256 KiB of tables kept resident per slot, epoch and fuel checks.
    Same,
    /// Pooling only: no epoch or fuel instrumentation in the compiled code.
    Plain,
    /// `Same` but with wasmtime's default reset (`madvise` every page back to
    /// the kernel after each instance), as Capstan did before keeping memory
    /// resident.
    DefaultReset,
}

/// The same pooling settings as Capstan's engine (`host/src/runtime/engine.rs`)
/// for `max_concurrent` 64, varied by `kind`.
fn bare_engine(kind: BareKind) -> wasmtime::Result<Engine> {
    let instrumented = kind != BareKind::Plain;
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(instrumented);
    config.consume_fuel(instrumented);
    config.max_wasm_stack(1 << 20);
    let mut pool = PoolingAllocationConfig::default();
    let n = 80;
    pool.total_component_instances(n);
    pool.total_core_instances(n * 8);
    pool.total_memories(n * 2);
    pool.total_tables(n * 4);
    pool.max_memory_size(512 << 20);
    pool.total_stacks(n);
    pool.max_core_instances_per_component(32);
    pool.max_memories_per_component(4);
    pool.max_tables_per_component(16);
    if kind != BareKind::DefaultReset {
        pool.linear_memory_keep_resident(2 << 20);
        pool.table_keep_resident(256 << 10);
        pool.pagemap_scan(wasmtime::Enabled::Auto);
    }
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// Every other Capstan import (kv, secrets, fs, kube) as a trap, and the
/// types-only interfaces as empty instances: what
/// `Linker::define_unknown_imports_as_traps` would do, limited to `capstan:*`.
/// (Called after `wasmtime_wasi::p2::add_to_linker_async`, that function
/// also stubs the `error` resource that `wasi:io/streams` re-exports, and
/// instantiation then fails with "mismatched resource types".)
fn stub_capstan_imports(
    linker: &mut Linker<BareState>,
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<()> {
    use wasmtime::component::types::ComponentItem;
    for (name, import) in component.component_type().imports(engine) {
        if !name.starts_with("capstan:") || name.contains("/config@") || name.contains("/log@") {
            continue;
        }
        let ComponentItem::ComponentInstance(instance) = import.ty else {
            continue;
        };
        let mut stub = linker.instance(name)?;
        for (func, export) in instance.exports(engine) {
            if let ComponentItem::ComponentFunc(_) = export.ty {
                let full = format!("{name}#{func}");
                stub.func_new(func, move |_, _, _, _| {
                    Err(wasmtime::format_err!(
                        "{full} is not provided by the baseline"
                    ))
                })?;
            }
        }
    }
    Ok(())
}

impl Bare {
    fn new(manifest: &str, bytes: &[u8], kind: BareKind) -> wasmtime::Result<Bare> {
        let engine = bare_engine(kind)?;
        let component = Component::new(&engine, bytes)?;
        let mut linker = Linker::<BareState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wit_config::add_to_linker::<BareState, HasSelf<BareState>>(&mut linker, |s| s)?;
        wit_log::add_to_linker::<BareState, HasSelf<BareState>>(&mut linker, |s| s)?;
        stub_capstan_imports(&mut linker, &engine, &component)?;
        let pre = linker.instantiate_pre(&component)?;
        let indices = deploy_step::GuestIndices::new(&pre)?;
        let settings = Manifest::parse(manifest)
            .map_err(|e| wasmtime::format_err!("{e}"))?
            .settings_as_strings();
        let settings = Arc::new(settings);
        Ok(Bare {
            engine,
            pre,
            indices,
            instrumented: kind != BareKind::Plain,
            settings,
        })
    }

    fn store(&self) -> wasmtime::Result<Store<BareState>> {
        let mut store = Store::new(
            &self.engine,
            BareState {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
                settings: self.settings.clone(),
            },
        );
        if self.instrumented {
            store.set_fuel(u64::MAX)?;
            store.set_epoch_deadline(u64::MAX / 2);
        }
        Ok(store)
    }

    /// Fresh store, instantiate, `run`.
    async fn run(
        &self,
        ctx: &deploy_step::Context,
        params: &str,
    ) -> wasmtime::Result<deploy_step::StepResult> {
        let mut store = self.store()?;
        let instance = self.pre.instantiate_async(&mut store).await?;
        let guest = self.indices.load(&mut store, &instance)?;
        match guest.call_run(&mut store, ctx, params).await? {
            Ok(r) => Ok(r),
            Err(e) => Err(wasmtime::format_err!("plugin error: {e:?}")),
        }
    }

    /// Fresh store and instantiate, no call.
    async fn instantiate(&self) -> wasmtime::Result<()> {
        let mut store = self.store()?;
        let instance = self.pre.instantiate_async(&mut store).await?;
        self.indices.load(&mut store, &instance)?;
        Ok(())
    }
}

// ---------------------------------------------------------------- 1. invoke

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Registry,
    Runtime,
    BareSame,
    BarePlain,
    BareInstantiate,
    BareResident,
}

impl Variant {
    const ALL: [Variant; 6] = [
        Variant::Registry,
        Variant::Runtime,
        Variant::BareSame,
        Variant::BarePlain,
        Variant::BareInstantiate,
        Variant::BareResident,
    ];

    fn label(self) -> &'static str {
        match self {
            Variant::Registry => "Capstan `Registry::invoke`",
            Variant::Runtime => "Capstan `Runtime::invoke` (no registry bookkeeping)",
            Variant::BareSame => "bare wasmtime, same engine settings (pooling, epoch, fuel)",
            Variant::BarePlain => "bare wasmtime, pooling only (no epoch/fuel checks)",
            Variant::BareInstantiate => "bare wasmtime, same settings, instantiate only (no call)",
            Variant::BareResident => {
                "bare wasmtime, same settings but memory reset after every call (wasmtime default)"
            }
        }
    }
}

async fn scenario_invoke(sizes: Sizes) -> anyhow::Result<Table> {
    let b = render_deployment();
    let ts = TestServer::start().await;
    let registry = registry_of(&ts);
    registry
        .install(b.manifest, b.component.to_vec(), Source::Api, true)
        .await?;
    let prepared = registry.get_slot(PLUGIN)?.active().context("active")?;
    let runtime = registry.runtime().clone();
    let bare_same = wt(Bare::new(b.manifest, b.component, BareKind::Same))?;
    let bare_plain = wt(Bare::new(b.manifest, b.component, BareKind::Plain))?;
    let bare_resident = wt(Bare::new(b.manifest, b.component, BareKind::DefaultReset))?;
    let ctx = step_context();

    // The baseline must do the same work: compare the results once.
    let (out, account, _) = registry
        .invoke(
            PLUGIN,
            Call::Run {
                ctx: ctx.clone(),
                params: PARAMS.into(),
            },
        )
        .await?;
    let capstan_msg = match out {
        capstan::runtime::Output::Step(s) => s.message,
        _ => bail!("unexpected output"),
    };
    let bare_msg = wt(bare_same.run(&ctx, PARAMS).await)?.message;
    if capstan_msg != bare_msg {
        bail!("results differ: capstan `{capstan_msg}`, bare `{bare_msg}`");
    }

    let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
    let mut samples: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut seq = 0u64;
    for (round, count) in std::iter::once((None, sizes.invoke_warmup))
        .chain((0..sizes.invoke_rounds).map(|r| (Some(r), sizes.invoke_per_round)))
    {
        // Variants interleave round by round so drift in background load
        // (other builds on the machine) hits each of them alike.
        for v in Variant::ALL {
            let out = samples.entry(v.label()).or_default();
            for _ in 0..count {
                let call = Call::Run {
                    ctx: ctx.clone(),
                    params: PARAMS.into(),
                };
                let started = Instant::now();
                let ok = match v {
                    Variant::Registry => registry.invoke(PLUGIN, call).await.is_ok(),
                    Variant::Runtime => {
                        seq += 1;
                        runtime
                            .invoke(&prepared, call, format!("bench-{seq}"))
                            .await
                            .0
                            .is_ok()
                    }
                    Variant::BareSame => bare_same.run(&ctx, PARAMS).await.is_ok(),
                    Variant::BarePlain => bare_plain.run(&ctx, PARAMS).await.is_ok(),
                    Variant::BareInstantiate => bare_same.instantiate().await.is_ok(),
                    Variant::BareResident => bare_resident.run(&ctx, PARAMS).await.is_ok(),
                };
                let us = started.elapsed().as_secs_f64() * 1e6;
                if !ok {
                    *errors.entry(v.label()).or_default() += 1;
                }
                if round.is_some() {
                    out.push(us);
                }
            }
        }
    }

    let mut t = Table::new(
        "1. In-process fresh-instance invoke of render-deployment (us per call)",
        &[
            "path", "calls", "p50", "p90", "p99", "mean", "min", "errors",
        ],
    );
    let bare_p50 = stats(&samples[Variant::BareSame.label()]).p50;
    let bare_p99 = stats(&samples[Variant::BareSame.label()]).p99;
    for v in Variant::ALL {
        let s = stats(&samples[v.label()]);
        t.row(vec![
            v.label().into(),
            s.n.to_string(),
            f1(s.p50),
            f1(s.p90),
            f1(s.p99),
            f1(s.mean),
            f1(s.min),
            errors.get(v.label()).copied().unwrap_or(0).to_string(),
        ]);
    }
    let reg = stats(&samples[Variant::Registry.label()]);
    let rt = stats(&samples[Variant::Runtime.label()]);
    t.note(format!(
        "Capstan overhead over bare wasmtime with the same engine settings: p50 {:+.1} us ({:+.0}%), p99 {:+.1} us; of which registry bookkeeping (metrics, recent list) p50 {:+.1} us",
        reg.p50 - bare_p50,
        (reg.p50 / bare_p50 - 1.0) * 100.0,
        reg.p99 - bare_p99,
        reg.p50 - rt.p50,
    ));
    t.note(format!(
        "{} warm-up calls per path, then {} rounds of {} calls per path, interleaved; results checked equal (`{capstan_msg}`); the call's peak linear memory is {} KiB",
        sizes.invoke_warmup,
        sizes.invoke_rounds,
        sizes.invoke_per_round,
        account.peak_memory / 1024
    ));
    t.note("Capstan's engine keeps 2 MiB of linear memory and 256 KiB of tables resident per pool slot (`linear_memory_keep_resident`, `table_keep_resident`, `pagemap_scan(Auto)`); the `reset after every call` row is wasmtime's default");
    ts.stop().await;
    Ok(t)
}

// ---------------------------------------------------------------- load generator

/// What a load run does.
#[derive(Clone)]
struct LoadSpec {
    addr: SocketAddr,
    method: hyper::Method,
    path: String,
    token: Option<String>,
    body: Bytes,
    concurrency: usize,
    warmup: Duration,
    /// Record the first time each `invocation.version` is seen in a response.
    track_versions: bool,
}

/// Shared between the workers and whoever stops them.
struct LoadShared {
    stop: AtomicBool,
    stopped_at: Mutex<Option<Instant>>,
    first_seen: Mutex<HashMap<String, Instant>>,
}

impl LoadShared {
    fn new() -> Arc<LoadShared> {
        Arc::new(LoadShared {
            stop: AtomicBool::new(false),
            stopped_at: Mutex::new(None),
            first_seen: Mutex::new(HashMap::new()),
        })
    }

    fn stop(&self) {
        *self.stopped_at.lock().unwrap() = Some(Instant::now());
        self.stop.store(true, Ordering::SeqCst);
    }

    fn seen(&self, version: &str) -> Option<Instant> {
        self.first_seen.lock().unwrap().get(version).copied()
    }
}

#[derive(Default)]
struct WorkerOut {
    /// (start, end, status; 0 for a transport error) of measured requests.
    requests: Vec<(Instant, Instant, u16)>,
    failures: Vec<String>,
}

/// What a load run measured.
struct LoadResult {
    window: Duration,
    latencies_ms: Vec<f64>,
    ok: usize,
    failed: usize,
    by_status: BTreeMap<u16, usize>,
    failure_samples: Vec<String>,
    /// CPU time of the whole process and of its non-load-generator threads
    /// during the window, seconds.
    cpu: Option<(f64, f64)>,
    /// CPU time of the audit writer thread during the window, seconds.
    audit_cpu: f64,
}

impl LoadResult {
    fn rps(&self) -> f64 {
        (self.ok + self.failed) as f64 / self.window.as_secs_f64()
    }
}

fn version_of(body: &[u8]) -> Option<String> {
    let key = br#""version":""#;
    let start = body.windows(key.len()).position(|w| w == key)? + key.len();
    let len = body[start..].iter().position(|&c| c == b'"')?;
    Some(String::from_utf8_lossy(&body[start..start + len]).into_owned())
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn worker(spec: Arc<LoadSpec>, shared: Arc<LoadShared>, measure_from: Instant) -> WorkerOut {
    let mut out = WorkerOut::default();
    let mut sender: Option<Sender> = None;
    let auth = spec.token.as_ref().map(|t| format!("Bearer {t}"));
    while !shared.stop.load(Ordering::Relaxed) {
        let s = match &mut sender {
            Some(s) => s,
            None => match connect(spec.addr).await {
                Ok(s) => sender.insert(s),
                Err(e) => {
                    out.failures.push(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let mut req = hyper::Request::builder()
            .method(spec.method.clone())
            .uri(spec.path.as_str())
            .header(hyper::header::HOST, "127.0.0.1");
        if let Some(a) = &auth {
            req = req.header(hyper::header::AUTHORIZATION, a.as_str());
        }
        if !spec.body.is_empty() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(spec.body.clone()))
            .expect("valid request");
        let started = Instant::now();
        let result = async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        }
        .await;
        let ended = Instant::now();
        let status = match result {
            Ok((status, body)) => {
                if status != 200 && out.failures.len() < 5 {
                    out.failures.push(format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    ));
                }
                if spec.track_versions
                    && status == 200
                    && let Some(v) = version_of(&body)
                {
                    shared.first_seen.lock().unwrap().entry(v).or_insert(ended);
                }
                status
            }
            Err(e) => {
                if out.failures.len() < 5 {
                    out.failures.push(format!("transport: {e:#}"));
                }
                sender = None;
                0
            }
        };
        if started >= measure_from {
            out.requests.push((started, ended, status));
        }
    }
    out
}

/// CPU time consumed so far: the whole process (exited threads included)
/// and each live thread that is not a load generator's, in clock ticks.
struct CpuSnap {
    total: u64,
    server: HashMap<u32, (String, u64)>,
}

/// `USER_HZ`, the unit of /proc's utime and stime (100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// `(comm, utime + stime)` from a /proc `stat` line.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    // After the comm: state (field 3) ... utime (14), stime (15).
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

impl CpuSnap {
    fn take() -> CpuSnap {
        let total = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s))
            .map_or(0, |(_, t)| t);
        let mut server = HashMap::new();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for t in tasks.flatten() {
                let Ok(tid) = t.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if let Some((comm, ticks)) = std::fs::read_to_string(t.path().join("stat"))
                    .ok()
                    .and_then(|s| parse_stat(&s))
                    && !comm.starts_with("loadgen")
                {
                    server.insert(tid, (comm, ticks));
                }
            }
        }
        CpuSnap { total, server }
    }

    /// (process, server threads) CPU seconds between `before` and `self`.
    fn since(&self, before: &CpuSnap) -> (f64, f64) {
        (
            self.total.saturating_sub(before.total) as f64 / TICKS_PER_SEC,
            self.threads_since(before, |_| true),
        )
    }

    /// CPU seconds of the server threads whose name passes `keep`.
    fn threads_since(&self, before: &CpuSnap, keep: impl Fn(&str) -> bool) -> f64 {
        let ticks: u64 = self
            .server
            .iter()
            .filter(|(_, (comm, _))| keep(comm))
            .map(|(tid, (_, t))| t.saturating_sub(before.server.get(tid).map_or(0, |b| b.1)))
            .sum();
        ticks as f64 / TICKS_PER_SEC
    }
}

/// Throughput counts what completed inside the window; latencies are of
/// every measured request.
fn aggregate(all: WorkerOut, measure_from: Instant, shared: &LoadShared) -> LoadResult {
    let stopped_at = shared
        .stopped_at
        .lock()
        .unwrap()
        .unwrap_or_else(Instant::now);
    let mut r = LoadResult {
        window: stopped_at.saturating_duration_since(measure_from),
        latencies_ms: Vec::new(),
        ok: 0,
        failed: 0,
        by_status: BTreeMap::new(),
        failure_samples: all.failures.into_iter().take(5).collect(),
        cpu: None,
        audit_cpu: 0.0,
    };
    for (_, end, status) in &all.requests {
        if *status != 200 {
            r.failed += 1;
        } else if *end <= stopped_at {
            r.ok += 1;
        }
        *r.by_status.entry(*status).or_default() += 1;
    }
    r.latencies_ms = all
        .requests
        .iter()
        .map(|(s, e, _)| ms(e.duration_since(*s)))
        .collect();
    r
}

/// `concurrency` tasks calling `Registry::invoke` in a loop on the server's
/// runtime: the same work as the HTTP route without HTTP.
/// What an in-process load task calls.
#[derive(Clone)]
enum Callee {
    Capstan(Arc<Registry>),
    Bare(Arc<Bare>),
}

impl Callee {
    async fn call(&self) -> Result<(), String> {
        match self {
            Callee::Capstan(registry) => registry
                .invoke(PLUGIN, call_for(Role::DeployStep))
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Callee::Bare(bare) => bare
                .run(&step_context(), PARAMS)
                .await
                .map(drop)
                .map_err(|e| format!("{e:#}")),
        }
    }
}

async fn inprocess_load(
    callee: Callee,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let shared = LoadShared::new();
    let measure_from = Instant::now() + warmup;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (callee, shared) = (callee.clone(), shared.clone());
            tokio::spawn(async move {
                let mut out = WorkerOut::default();
                while !shared.stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let r = callee.call().await;
                    let ended = Instant::now();
                    let status = match r {
                        Ok(()) => 200,
                        Err(e) => {
                            if out.failures.len() < 5 {
                                out.failures.push(e);
                            }
                            500
                        }
                    };
                    if started >= measure_from {
                        out.requests.push((started, ended, status));
                    }
                    // A call that never waits never returns to the scheduler
                    // (only epoch ticks make it yield); an HTTP connection
                    // would wait for its next request here.
                    tokio::task::yield_now().await;
                }
                out
            })
        })
        .collect();
    tokio::time::sleep(warmup).await;
    let before = CpuSnap::take();
    tokio::time::sleep(duration).await;
    let after = CpuSnap::take();
    shared.stop();
    let mut all = WorkerOut::default();
    for t in tasks {
        let o = t.await?;
        all.requests.extend(o.requests);
        all.failures.extend(o.failures);
    }
    let mut r = aggregate(all, measure_from, &shared);
    r.cpu = Some(after.since(&before));
    r.audit_cpu = after.threads_since(&before, |c| c == "capstan-audit");
    Ok(r)
}

/// Starts the load generator on its own 2-thread runtime (like a separate
/// `wrk -t2` process on the same cores); stop it with `shared.stop()`.
fn spawn_load(
    spec: LoadSpec,
    shared: Arc<LoadShared>,
) -> tokio::sync::oneshot::Receiver<LoadResult> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || {
            if pinned() {
                pin(1).expect("binding the load generator to CPU 1");
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("loadgen-worker")
                .enable_all()
                .build()
                .expect("load generator runtime");
            let result = rt.block_on(async move {
                let measure_from = Instant::now() + spec.warmup;
                let spec = Arc::new(spec);
                let workers: Vec<_> = (0..spec.concurrency)
                    .map(|_| tokio::spawn(worker(spec.clone(), shared.clone(), measure_from)))
                    .collect();
                let mut all = WorkerOut::default();
                for w in workers {
                    let o = w.await.expect("worker");
                    all.requests.extend(o.requests);
                    all.failures.extend(o.failures);
                }
                aggregate(all, measure_from, &shared)
            });
            let _ = tx.send(result);
        })
        .expect("spawn load generator");
    rx
}

/// Runs load for `warmup + duration`.
async fn run_load(spec: LoadSpec, duration: Duration) -> anyhow::Result<LoadResult> {
    let shared = LoadShared::new();
    let warmup = spec.warmup;
    let rx = spawn_load(spec, shared.clone());
    tokio::time::sleep(warmup).await;
    let before = CpuSnap::take();
    tokio::time::sleep(duration).await;
    let after = CpuSnap::take();
    shared.stop();
    let mut r = rx.await?;
    r.cpu = Some(after.since(&before));
    r.audit_cpu = after.threads_since(&before, |c| c == "capstan-audit");
    Ok(r)
}

/// What a load generator child process reports.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChildLoad {
    window_secs: f64,
    ok: usize,
    failed: usize,
    latencies_ms: Vec<f64>,
    failure_samples: Vec<String>,
    cpu_secs: f64,
}

/// The load generator as its own process (like `wrk`), so that it shares no
/// address space with the server: `--loadgen-child <addr> <method> <path>
/// <token|-> <concurrency> <warmup secs> <secs> <body|->`.
fn loadgen_child(args: &[String]) -> anyhow::Result<()> {
    let [addr, method, path, token, concurrency, warmup, secs, body] = args else {
        bail!(
            "usage: --loadgen-child <addr> <method> <path> <token|-> <concurrency> <warmup> <secs> <body|->"
        );
    };
    let spec = LoadSpec {
        addr: addr.parse()?,
        method: method.parse()?,
        path: path.clone(),
        token: (token != "-").then(|| token.clone()),
        body: if body == "-" {
            Bytes::new()
        } else {
            Bytes::from(body.clone().into_bytes())
        },
        concurrency: concurrency.parse()?,
        warmup: Duration::from_secs_f64(warmup.parse()?),
        track_versions: false,
    };
    let secs = Duration::from_secs_f64(secs.parse()?);
    if std::env::var_os("CAPSTAN_BENCH_PIN").is_some() {
        PINNED.store(true, Ordering::Relaxed);
    }
    let shared = LoadShared::new();
    let warmup = spec.warmup;
    let rx = spawn_load(spec, shared.clone());
    std::thread::sleep(warmup);
    let before = CpuSnap::take();
    std::thread::sleep(secs);
    let after = CpuSnap::take();
    shared.stop();
    let r = rx.blocking_recv()?;
    let out = ChildLoad {
        window_secs: r.window.as_secs_f64(),
        ok: r.ok,
        failed: r.failed,
        latencies_ms: r.latencies_ms,
        failure_samples: r.failure_samples,
        cpu_secs: after.since(&before).0,
    };
    println!("LOAD-JSON {}", serde_json::to_string(&out)?);
    Ok(())
}

/// Runs [`loadgen_child`] in a new process and measures this process's CPU
/// (all of it is the server's then) over the same window.
async fn run_load_child(spec: LoadSpec, duration: Duration) -> anyhow::Result<LoadResult> {
    let body = if spec.body.is_empty() {
        "-".to_string()
    } else {
        String::from_utf8(spec.body.to_vec())?
    };
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.arg("--loadgen-child")
        .arg(spec.addr.to_string())
        .arg(spec.method.as_str())
        .arg(&spec.path)
        .arg(spec.token.as_deref().unwrap_or("-"))
        .arg(spec.concurrency.to_string())
        .arg(spec.warmup.as_secs_f64().to_string())
        .arg(duration.as_secs_f64().to_string())
        .arg(body)
        .stdout(std::process::Stdio::piped());
    if pinned() {
        cmd.env("CAPSTAN_BENCH_PIN", "1");
    }
    let child = cmd.spawn()?;
    tokio::time::sleep(spec.warmup).await;
    let before = CpuSnap::take();
    tokio::time::sleep(duration).await;
    let after = CpuSnap::take();
    let out = child.wait_with_output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("LOAD-JSON "))
        .with_context(|| format!("load generator child ({}) printed no figures", out.status))?;
    let c: ChildLoad = serde_json::from_str(line)?;
    let (total, _) = after.since(&before);
    Ok(LoadResult {
        window: Duration::from_secs_f64(c.window_secs),
        latencies_ms: c.latencies_ms,
        ok: c.ok,
        failed: c.failed,
        by_status: BTreeMap::new(),
        failure_samples: c.failure_samples,
        cpu: Some((total + c.cpu_secs, total)),
        audit_cpu: after.threads_since(&before, |c| c == "capstan-audit"),
    })
}

// ---------------------------------------------------------------- 2. http

async fn ceiling_handler(
    axum::extract::State(canned): axum::extract::State<Arc<Value>>,
    body: Bytes,
) -> Result<axum::Json<Value>, http::StatusCode> {
    // Parse the request as the real handler does, answer a real response body.
    let _request: Value =
        serde_json::from_slice(&body).map_err(|_| http::StatusCode::BAD_REQUEST)?;
    Ok(axum::Json(canned.as_ref().clone()))
}

enum Target {
    Http(LoadSpec),
    /// The load generator in a separate process.
    HttpChild(LoadSpec),
    /// In-process calls by this many tasks.
    InProcess(Callee, usize),
}

/// Indices in `scenario_http`'s target list of the HTTP invokes and the
/// in-process `Registry::invoke` each is compared with (same concurrency).
const RATIO_PAIRS: [(usize, usize); 3] = [(0, 5), (3, 5), (4, 6)];

async fn scenario_http(sizes: Sizes, perf: Option<PathBuf>) -> anyhow::Result<Vec<Table>> {
    let b = render_deployment();
    let ts = TestServer::start().await;
    ts.install(b.manifest, b.component).await;
    let (status, canned) = ts
        .invoke(PLUGIN, serde_json::from_slice(&invoke_body())?)
        .await;
    if status != 200 {
        bail!("invoke failed: {status} {canned}");
    }
    let response_bytes = serde_json::to_vec(&canned)?.len();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ceiling_addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            &format!("/v1/plugins/{PLUGIN}/invoke"),
            axum::routing::post(ceiling_handler),
        )
        .with_state(Arc::new(canned));
    let ceiling = tokio::spawn(async move { axum::serve(listener, app).await });

    let capstan_addr = ts.server.as_ref().context("server")?.addr;
    let invoke = LoadSpec {
        addr: capstan_addr,
        method: hyper::Method::POST,
        path: format!("/v1/plugins/{PLUGIN}/invoke"),
        token: ts.token.clone(),
        body: Bytes::from(invoke_body()),
        concurrency: sizes.http_concurrency,
        warmup: sizes.http_warmup,
        track_versions: false,
    };
    let registry = registry_of(&ts);
    let c = sizes.http_concurrency;
    let targets: Vec<(String, Target)> = vec![
        (
            format!("Capstan POST /v1/plugins/{PLUGIN}/invoke, {c} connections"),
            Target::Http(invoke.clone()),
        ),
        (
            format!("plain axum handler, same JSON in and out, no Wasm (ceiling), {c} connections"),
            Target::Http(LoadSpec {
                addr: ceiling_addr,
                token: None,
                ..invoke.clone()
            }),
        ),
        (
            format!(
                "Capstan GET /healthz (router + middleware, no auth, no Wasm), {c} connections"
            ),
            Target::Http(LoadSpec {
                method: hyper::Method::GET,
                path: "/healthz".into(),
                token: None,
                body: Bytes::new(),
                ..invoke.clone()
            }),
        ),
        (
            format!(
                "Capstan POST .../invoke, {c} connections, load generator in a separate process"
            ),
            Target::HttpChild(invoke.clone()),
        ),
        (
            "Capstan POST .../invoke, 1 connection".to_string(),
            Target::Http(LoadSpec {
                concurrency: 1,
                ..invoke.clone()
            }),
        ),
        (
            format!("in-process `Registry::invoke`, {c} tasks on the server runtime, no HTTP"),
            Target::InProcess(Callee::Capstan(registry.clone()), c),
        ),
        (
            "in-process `Registry::invoke`, 1 task".to_string(),
            Target::InProcess(Callee::Capstan(registry.clone()), 1),
        ),
        (
            format!("in-process bare wasmtime, same engine settings, {c} tasks"),
            Target::InProcess(
                Callee::Bare(Arc::new(wt(Bare::new(
                    b.manifest,
                    b.component,
                    BareKind::Same,
                ))?)),
                c,
            ),
        ),
        (
            format!("in-process bare wasmtime, memory reset after every call, {c} tasks"),
            Target::InProcess(
                Callee::Bare(Arc::new(wt(Bare::new(
                    b.manifest,
                    b.component,
                    BareKind::DefaultReset,
                ))?)),
                c,
            ),
        ),
    ];
    let mut results: Vec<Vec<LoadResult>> = targets.iter().map(|_| Vec::new()).collect();
    // (target index, perf data, requests and server CPU of that round)
    let mut profiles = Vec::new();
    for round in 0..sizes.http_rounds {
        for (i, (_, target)) in targets.iter().enumerate() {
            // The first round of each target is profiled, its measured window only.
            let recording = perf.clone().filter(|_| round == 0).map(|dir| {
                let (warmup, secs) = (sizes.http_warmup, sizes.http_round.as_secs_f64());
                tokio::spawn(async move {
                    tokio::time::sleep(warmup).await;
                    profile::record(&dir, &format!("http-{i}"), secs)
                })
            });
            let r = match target {
                Target::Http(spec) => run_load(spec.clone(), sizes.http_round).await?,
                Target::HttpChild(spec) => run_load_child(spec.clone(), sizes.http_round).await?,
                Target::InProcess(callee, n) => {
                    inprocess_load(callee.clone(), *n, sizes.http_warmup, sizes.http_round).await?
                }
            };
            if let Some(recording) = recording {
                let data = recording.await??.finish()?;
                let server_cpu = r.cpu.map_or(0.0, |c| c.1);
                profiles.push((i, data, r.ok + r.failed, server_cpu));
            }
            results[i].push(r);
        }
    }

    let mut t = Table::new(
        &format!(
            "2. HTTP loopback, keep-alive connections, {} x {} s per target, interleaved",
            sizes.http_rounds,
            sizes.http_round.as_secs_f64()
        ),
        &[
            "target",
            "req/s",
            "req/s per round",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "non-200",
            "CPU cores server + loadgen",
            "server CPU us/req",
            "of which audit writer",
            "CPU vs in-process",
        ],
    );
    let mut rps = Vec::new();
    let mut cpu_per_req = Vec::new();
    for (i, (label, _)) in targets.iter().enumerate() {
        let rs = &results[i];
        let total: usize = rs.iter().map(|r| r.ok + r.failed).sum();
        let window: f64 = rs.iter().map(|r| r.window.as_secs_f64()).sum();
        let lat: Vec<f64> = rs
            .iter()
            .flat_map(|r| r.latencies_ms.iter().copied())
            .collect();
        let s = stats(&lat);
        let failed: usize = rs.iter().map(|r| r.failed).sum();
        let cpu_total: f64 = rs.iter().filter_map(|r| r.cpu).map(|c| c.0).sum();
        let cpu_server: f64 = rs.iter().filter_map(|r| r.cpu).map(|c| c.1).sum();
        let cpu_audit: f64 = rs.iter().map(|r| r.audit_cpu).sum();
        rps.push(total as f64 / window);
        cpu_per_req.push(cpu_server / total as f64 * 1e6);
        t.row(vec![
            label.clone(),
            format!("{:.0}", total as f64 / window),
            rs.iter()
                .map(|r| format!("{:.0}", r.rps()))
                .collect::<Vec<_>>()
                .join(" / "),
            f2(s.p50),
            f2(s.p90),
            f2(s.p99),
            f2(s.max),
            failed.to_string(),
            format!(
                "{:.2} + {:.2}",
                cpu_server / window,
                (cpu_total - cpu_server).max(0.0) / window
            ),
            format!("{:.0}", cpu_server / total as f64 * 1e6),
            format!("{:.0}", cpu_audit / total as f64 * 1e6),
            String::new(),
        ]);
        for r in rs {
            for f in &r.failure_samples {
                t.note(format!("{label}: {f}"));
            }
        }
    }
    for (http, inproc) in RATIO_PAIRS {
        let ratio = cpu_per_req[http] / cpu_per_req[inproc];
        t.rows[http][11] = format!("{ratio:.2}x");
        t.note(format!(
            "hot-path ratio, server CPU per HTTP invoke / per in-process `Registry::invoke`: {:.0} / {:.0} us = **{ratio:.2}x** ({} vs {})",
            cpu_per_req[http], cpu_per_req[inproc], targets[http].0, targets[inproc].0
        ));
    }
    t.note(format!(
        "Capstan invoke over HTTP reaches {:.0}% of the no-Wasm ceiling and {:.0}% of the same calls made in-process; response body {response_bytes} bytes; {}",
        rps[0] / rps[1] * 100.0,
        rps[0] / rps[5] * 100.0,
        if pinned() {
            "`--pin`: the server on CPU 0 (1 runtime worker), the load generator (2 threads) on CPU 1"
        } else {
            "the load generator (2 threads) shares the 2 cores with the server"
        }
    ));
    t.note("CPU from /proc/self/task/*/stat (10 ms ticks) over the measured window: `server` is every thread of this process but the load generator's (the ceiling's axum server runs on the same runtime); for the separate-process row the load generator's CPU is the child's; CPU cores well under 2 mean other processes on the machine took the rest");
    if perf.is_some() {
        t.note("profiled with `--perf`: the first round of each target ran under `perf record`, so these figures include its cost; take the ratio from a run without `--perf`");
    }
    ceiling.abort();
    ts.stop().await;
    let mut tables = vec![t];
    if !profiles.is_empty() {
        tables.extend(profile_tables(&targets, &profiles)?);
    }
    Ok(tables)
}

/// `--perf-report DATA...`: the buckets and top self time of recordings
/// made with `--perf` (shares of the server threads' samples).
fn perf_report(files: &[String]) -> anyhow::Result<()> {
    // `cargo bench` appends `--bench`.
    for f in files.iter().filter(|f| !f.starts_with("--")) {
        let s = profile::summarise(Path::new(f), 30)?;
        let mut t = Table::new(
            &format!("{f}: {} server samples", s.samples),
            &["bucket / leaf symbol", "share"],
        );
        for (b, share) in s
            .buckets
            .iter()
            .map(|(b, x)| (b.to_string(), x))
            .chain(s.top_self.iter().map(|(b, x)| (format!("self: {b}"), x)))
        {
            t.row(vec![b, format!("{:.1}%", share * 100.0)]);
        }
        t.print_plain();
    }
    Ok(())
}

/// The `--perf` summaries: server CPU per request by bucket for every
/// profiled target, and the top self-time symbols of the HTTP invoke and
/// the in-process invoke.
fn profile_tables(
    targets: &[(String, Target)],
    profiles: &[(usize, PathBuf, usize, f64)],
) -> anyhow::Result<Vec<Table>> {
    let mut summaries = Vec::new();
    for (i, data, requests, cpu) in profiles {
        let s = profile::summarise(data, 25)?;
        summaries.push((*i, s, *cpu / (*requests).max(1) as f64 * 1e6));
    }
    let mut headers = vec!["bucket (server threads; us per request)".to_string()];
    headers.extend(summaries.iter().map(|(i, _, _)| format!("target {i}")));
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut buckets = Table::new(
        "2b. Where the server's CPU goes (perf, first round)",
        &headers,
    );
    let names: Vec<&str> = summaries[0].1.buckets.iter().map(|(b, _)| *b).collect();
    for (k, name) in names.iter().enumerate() {
        let mut row = vec![name.to_string()];
        for (_, s, us) in &summaries {
            let share = s.buckets[k].1;
            row.push(format!("{:.1} ({:.0}%)", share * us, share * 100.0));
        }
        buckets.row(row);
    }
    let mut total = vec!["total (server CPU us/req in that round)".to_string()];
    total.extend(
        summaries
            .iter()
            .map(|(_, s, us)| format!("{us:.1} ({} samples)", s.samples)),
    );
    buckets.row(total);
    for (i, data, _, _) in profiles {
        buckets.note(format!(
            "target {i}: {} ({})",
            targets[*i].0,
            data.display()
        ));
    }
    let mut tables = vec![buckets];
    for (i, s, _) in summaries.iter().filter(|(i, _, _)| [0, 5].contains(i)) {
        let mut top = Table::new(
            &format!("2c. Top self time, target {i}: {}", targets[*i].0),
            &["symbol (leaf frame)", "share of server samples"],
        );
        for (sym, share) in &s.top_self {
            top.row(vec![sym.clone(), format!("{:.1}%", share * 100.0)]);
        }
        tables.push(top);
    }
    Ok(tables)
}

// ---------------------------------------------------------------- 3. reload

async fn wait_seen(shared: &LoadShared, version: &str, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = shared.seen(version) {
            return Some(t);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn scenario_reload(sizes: Sizes) -> anyhow::Result<Table> {
    let b = render_deployment();
    let ts = TestServer::start().await;
    ts.install(b.manifest, b.component).await;
    let plugins_dir = ts.dir.path().join("plugins");
    let shared = LoadShared::new();
    let spec = LoadSpec {
        addr: ts.server.as_ref().context("server")?.addr,
        method: hyper::Method::POST,
        path: format!("/v1/plugins/{PLUGIN}/invoke"),
        token: ts.token.clone(),
        body: Bytes::from(invoke_body()),
        concurrency: sizes.reload_concurrency,
        warmup: Duration::ZERO,
        track_versions: true,
    };
    let rx = spawn_load(spec, shared.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let timeout = Duration::from_secs(60);

    // Through the watched directory: component first, then the manifest
    // naming it, each written atomically (temporary file + rename).
    let mut dir_ms = Vec::new();
    let mut dir_missed = Vec::new();
    for k in 1..=sizes.reload_k {
        let version = format!("1.1.{k}");
        let manifest = rewrite_manifest(b.manifest, None, Some(&version));
        let bytes = salted(b.component, &version);
        let t0 = Instant::now();
        capstan::store::write_atomic(&plugins_dir.join(format!("{PLUGIN}.wasm")), &bytes)?;
        capstan::store::write_atomic(
            &plugins_dir.join(format!("{PLUGIN}.toml")),
            manifest.as_bytes(),
        )?;
        match wait_seen(&shared, &version, timeout).await {
            Some(seen) => dir_ms.push(ms(seen.saturating_duration_since(t0))),
            None => dir_missed.push(version),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Through the upload API.
    let mut upload_resp_ms = Vec::new();
    let mut upload_ms = Vec::new();
    let mut upload_missed = Vec::new();
    let mut upload_status = BTreeMap::new();
    for k in 1..=sizes.reload_k {
        let version = format!("1.2.{k}");
        let manifest = rewrite_manifest(b.manifest, None, Some(&version));
        let bytes = salted(b.component, &version);
        let t0 = Instant::now();
        let (status, _) = ts.upload(&manifest, &bytes).await;
        upload_resp_ms.push(ms(t0.elapsed()));
        *upload_status.entry(status).or_insert(0usize) += 1;
        match wait_seen(&shared, &version, timeout).await {
            Some(seen) => upload_ms.push(ms(seen.saturating_duration_since(t0))),
            None => upload_missed.push(version),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.stop();
    let load = rx.await?;
    let (_, detail) = ts.get(&format!("/v1/plugins/{PLUGIN}")).await;
    let final_active = detail["active_version"].as_str().unwrap_or("?").to_string();

    let k = sizes.reload_k;
    let mut t = Table::new(
        &format!(
            "3. Hot reload under load ({} connections invoking render-deployment; {k} new versions per path, each a distinct component that must be compiled)",
            sizes.reload_concurrency
        ),
        &["path", "swaps served", "p50 ms", "max ms", "min ms"],
    );
    let d = stats(&dir_ms);
    t.row(vec![
        "plugins directory: file write -> new version serving".into(),
        format!("{}/{k}", dir_ms.len()),
        f1(d.p50),
        f1(d.max),
        f1(d.min),
    ]);
    let ur = stats(&upload_resp_ms);
    t.row(vec![
        "upload API: request -> 201 response".into(),
        format!("{}/{k}", upload_status.get(&201).copied().unwrap_or(0)),
        f1(ur.p50),
        f1(ur.max),
        f1(ur.min),
    ]);
    let u = stats(&upload_ms);
    t.row(vec![
        "upload API: request -> new version serving".into(),
        format!("{}/{k}", upload_ms.len()),
        f1(u.p50),
        f1(u.max),
        f1(u.min),
    ]);
    let lat = stats(&load.latencies_ms);
    t.note(format!(
        "calls during the run: {} ok, {} failed (by status: {:?}; 0 = transport error); {:.0} req/s; latency p50 {} ms, p99 {} ms, max {} ms",
        load.ok,
        load.failed,
        load.by_status,
        load.rps(),
        f2(lat.p50),
        f2(lat.p99),
        f2(lat.max)
    ));
    t.note(format!(
        "upload statuses {upload_status:?}; active version at the end: {final_active} (expected 1.2.{k}); never seen serving: {:?}",
        dir_missed.iter().chain(&upload_missed).collect::<Vec<_>>()
    ));
    for f in &load.failure_samples {
        t.note(format!("failure: {f}"));
    }
    t.note("directory changes are debounced for 250 ms (`DEBOUNCE` in host/src/registry/watch.rs) before the rescan");
    ts.stop().await;
    Ok(t)
}

// ---------------------------------------------------------------- 4. restart

fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

struct StartTimes {
    healthz: Option<Duration>,
    readyz: Duration,
    returned: Duration,
    loaded: usize,
}

/// Starts a server on `dir` and measures when it answers `/healthz`, when
/// `/readyz` turns 200, and when `Server::start` returns.
async fn timed_start(dir: tempfile::TempDir) -> anyhow::Result<(TestServer, StartTimes)> {
    let addr = free_addr()?;
    let t0 = Instant::now();
    let start = tokio::spawn(async move {
        let ts = TestServer::start_in(dir, |c| c.listen = addr).await;
        (ts, t0.elapsed())
    });
    let client = capstan_tests::client();
    let (mut healthz, mut readyz) = (None, None);
    while readyz.is_none() {
        if healthz.is_none()
            && let Ok(r) = client.get(format!("http://{addr}/healthz")).send().await
            && r.status() == 200
        {
            healthz = Some(t0.elapsed());
        }
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await
            && r.status() == 200
        {
            readyz = Some(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("server not ready after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (ts, returned) = start.await?;
    let registry = registry_of(&ts);
    let loaded = registry
        .names()
        .iter()
        .filter(|n| registry.get_slot(n).is_ok_and(|s| s.active().is_some()))
        .count();
    Ok((
        ts,
        StartTimes {
            healthz,
            readyz: readyz.expect("ready"),
            returned,
            loaded,
        },
    ))
}

async fn scenario_restart(sizes: Sizes) -> anyhow::Result<Table> {
    let n = sizes.restart_plugins;
    let plugins: Vec<BenchPlugin> = (0..n).map(bench_plugin).collect();
    let mut t = Table::new(
        &format!(
            "4. Restart with {n} plugins ({} distinct components, cycling through the bundled ones)",
            n
        ),
        &[
            "start",
            "runs",
            "/healthz ms",
            "/readyz ms",
            "Server::start ms",
            "plugins loaded",
        ],
    );

    // Reference: an empty data directory.
    let (ts, empty) = timed_start(tempfile::tempdir()?).await?;
    ts.stop().await;

    let ts = TestServer::start().await;
    let registry = registry_of(&ts);
    let t0 = Instant::now();
    for p in &plugins {
        registry
            .install(&p.manifest, p.bytes.clone(), Source::Api, true)
            .await
            .with_context(|| format!("installing {}", p.name))?;
    }
    let install = t0.elapsed();
    let mut dir = ts.stop().await;
    let artifacts = dir.path().join("artifacts");
    let artifact_bytes: u64 = std::fs::read_dir(&artifacts)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();

    let row = |label: &str, runs: &[StartTimes]| -> Vec<String> {
        let h: Vec<f64> = runs.iter().filter_map(|r| r.healthz).map(ms).collect();
        let fmt = |v: Vec<f64>| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        vec![
            label.into(),
            runs.len().to_string(),
            fmt(h),
            fmt(runs.iter().map(|r| ms(r.readyz)).collect()),
            fmt(runs.iter().map(|r| ms(r.returned)).collect()),
            runs.iter()
                .map(|r| r.loaded.to_string())
                .collect::<Vec<_>>()
                .join(" / "),
        ]
    };
    t.row(row(
        "empty data dir (reference)",
        std::slice::from_ref(&empty),
    ));

    let mut cold = Vec::new();
    for _ in 0..sizes.restart_cold_runs {
        std::fs::remove_dir_all(&artifacts)?;
        let (ts, times) = timed_start(dir).await?;
        cold.push(times);
        dir = ts.stop().await;
    }
    t.row(row("cold: artifacts removed", &cold));
    let mut warm = Vec::new();
    for _ in 0..sizes.restart_warm_runs {
        let (ts, times) = timed_start(dir).await?;
        warm.push(times);
        dir = ts.stop().await;
    }
    t.row(row("warm: artifacts present", &warm));
    let per = |runs: &[StartTimes]| {
        stats(&runs.iter().map(|r| ms(r.readyz)).collect::<Vec<_>>()).p50 / n as f64
    };
    t.note(format!(
        "installing the {n} plugins over `Registry::install` (compile, store, activate) took {:.1} s ({:.0} ms each); artifacts on disk: {:.1} MiB",
        install.as_secs_f64(),
        ms(install) / n as f64,
        artifact_bytes as f64 / 1048576.0
    ));
    t.note(format!(
        "per plugin at startup (median /readyz / {n}): cold {:.1} ms, warm {:.2} ms; values are per run, in run order",
        per(&cold),
        per(&warm)
    ));
    drop(dir);
    Ok(t)
}

// ---------------------------------------------------------------- 5. rss

#[derive(serde::Serialize, serde::Deserialize)]
struct MemSnap {
    stage: String,
    vm_rss_kb: u64,
    vm_hwm_kb: u64,
    rss_anon_kb: u64,
    rss_file_kb: u64,
    vm_size_kb: u64,
}

fn mem_snap(stage: &str) -> MemSnap {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    MemSnap {
        stage: stage.into(),
        vm_rss_kb: field("VmRSS:"),
        vm_hwm_kb: field("VmHWM:"),
        rss_anon_kb: field("RssAnon:"),
        rss_file_kb: field("RssFile:"),
        vm_size_kb: field("VmSize:"),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RssChildOut {
    snaps: Vec<MemSnap>,
    ok: usize,
    errors: BTreeMap<String, usize>,
}

/// The child process of the rss scenario: `--rss-child <install|warm> <dir> <plugins> <calls>`.
fn rss_child(args: &[String]) -> anyhow::Result<()> {
    let [mode, dir, n, calls] = args else {
        bail!("usage: --rss-child <install|warm> <dir> <plugins> <calls>");
    };
    let (n, calls): (usize, usize) = (n.parse()?, calls.parse()?);
    let dir = PathBuf::from(dir);
    let mut snaps = vec![mem_snap("process start")];
    let rt = server_runtime()?;
    let (ok, errors) = rt.block_on(async {
        let server = Server::start(test_config(&dir)).await?;
        let registry = server.registry.clone();
        match mode.as_str() {
            "install" => {
                snaps.push(mem_snap("server started, no plugins"));
                for i in 0..n {
                    // Built one at a time so the process holds no copies.
                    let p = bench_plugin(i);
                    registry
                        .install(&p.manifest, p.bytes, Source::Api, true)
                        .await?;
                }
                snaps.push(mem_snap(&format!(
                    "{n} plugins installed (each compiled here)"
                )));
            }
            _ => snaps.push(mem_snap(&format!(
                "server started, {n} plugins loaded from precompiled artifacts"
            ))),
        }
        let (ok, errors) = spread_calls(&registry, &bench_names(n), calls, 16).await;
        snaps.push(mem_snap(&format!(
            "after {calls} invocations over the {n} plugins (16 at a time)"
        )));
        server.shutdown().await?;
        anyhow::Ok((ok, errors))
    })?;
    let out = RssChildOut { snaps, ok, errors };
    println!("RSS-JSON {}", serde_json::to_string(&out)?);
    Ok(())
}

/// `calls` invocations round-robin over `plugins`, `concurrency` at a time.
async fn spread_calls(
    registry: &Arc<Registry>,
    plugins: &[(String, Role)],
    calls: usize,
    concurrency: usize,
) -> (usize, BTreeMap<String, usize>) {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..calls {
        let (name, role) = &plugins[i % plugins.len()];
        let (registry, name, call) = (registry.clone(), name.clone(), call_for(*role));
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        set.spawn(async move {
            let r = registry.invoke(&name, call).await;
            drop(permit);
            r.map(drop).map_err(|e| {
                let kind = match &e {
                    capstan::registry::RegistryError::Invoke(i) => i.kind().to_string(),
                    other => format!("{other}"),
                };
                format!("{}: {kind}", name.rsplit_once('-').map_or(&*name, |x| x.0))
            })
        });
    }
    let (mut ok, mut errors) = (0, BTreeMap::new());
    while let Some(r) = set.join_next().await {
        match r.expect("call task") {
            Ok(()) => ok += 1,
            Err(e) => *errors.entry(e).or_insert(0) += 1,
        }
    }
    (ok, errors)
}

fn run_rss_child(mode: &str, dir: &Path, sizes: Sizes) -> anyhow::Result<RssChildOut> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("--rss-child")
        .arg(mode)
        .arg(dir)
        .arg(sizes.rss_plugins.to_string())
        .arg(sizes.rss_calls.to_string())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RSS-JSON "))
        .with_context(|| {
            format!(
                "rss child ({}) printed no figures; stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    Ok(serde_json::from_str(line)?)
}

fn scenario_rss(sizes: Sizes) -> anyhow::Result<Table> {
    let dir = tempfile::tempdir()?;
    let install = run_rss_child("install", dir.path(), sizes)?;
    let warm = run_rss_child("warm", dir.path(), sizes)?;
    let mb = |kb: u64| format!("{:.1}", kb as f64 / 1024.0);
    let mut t = Table::new(
        &format!(
            "5. Memory of a fresh process with {} plugins (MiB, from /proc/self/status)",
            sizes.rss_plugins
        ),
        &["stage", "VmRSS", "VmHWM", "RssAnon", "RssFile", "VmSize"],
    );
    for (label, out) in [("install", &install), ("restart", &warm)] {
        for s in &out.snaps {
            t.row(vec![
                format!("{label}: {}", s.stage),
                mb(s.vm_rss_kb),
                mb(s.vm_hwm_kb),
                mb(s.rss_anon_kb),
                mb(s.rss_file_kb),
                mb(s.vm_size_kb),
            ]);
        }
        t.note(format!(
            "{label}: invocations ok {}, errors {:?}",
            out.ok, out.errors
        ));
    }
    t.note("each stage in its own child process, so VmHWM is that process's own peak; VmSize includes the pooling allocator's reserved (not resident) address space");
    Ok(t)
}

// ---------------------------------------------------------------- 6. noisy

/// The server's invoke slots in `noisy`, and the connections driving each
/// spinning plugin (enough to take every slot if nothing stops them).
const NOISY_SLOTS: usize = 16;

/// A well-behaved plugin's HTTP invoke while two others spin until their
/// 1 s deadline: alone, with a per-plugin limit of 1, with the default share
/// (a quarter of the slots), and with no per-plugin limit (every slot).
async fn scenario_noisy(sizes: Sizes) -> anyhow::Result<Table> {
    let window = sizes.http_round * sizes.http_rounds as u32;
    let mut t = Table::new(
        &format!(
            "6. POST /v1/plugins/{PLUGIN}/invoke, 1 connection, {} s, while 2 plugins spin ({NOISY_SLOTS} connections each, server max_concurrent {NOISY_SLOTS})",
            window.as_secs_f64()
        ),
        &[
            "variant",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "answers",
            "spinners' answers",
        ],
    );
    let share = default_share_of(NOISY_SLOTS);
    let variants = [
        ("no plugin spinning".to_string(), false, None),
        ("spinning, per-plugin limit 1".to_string(), true, Some(1)),
        (
            format!("spinning, per-plugin limit {share} (default share)"),
            true,
            None,
        ),
        (
            format!("spinning, no per-plugin limit ({NOISY_SLOTS})"),
            true,
            Some(NOISY_SLOTS),
        ),
    ];
    for (label, spin, per_plugin) in variants {
        let (r, spinners) = noisy_run(sizes, window, spin, per_plugin).await?;
        let s = stats(&r.latencies_ms);
        let by = |m: &BTreeMap<u16, usize>| format!("{m:?}");
        t.row(vec![
            label.clone(),
            format!("{:.0}", r.rps()),
            f2(s.p50),
            f2(s.p90),
            f2(s.p99),
            f2(s.max),
            by(&r.by_status),
            by(&spinners),
        ]);
        for f in r.failure_samples.iter().take(2) {
            t.note(format!("{label}: {f}"));
        }
    }
    t.note("answers by HTTP status: the spinners' 504 are calls admitted and stopped at their deadline, 503 calls refused after the 200 ms queue wait");
    if cfg!(debug_assertions) {
        t.note("built with debug assertions (dev profile): host code unoptimised, absolute latencies are not release figures");
    }
    Ok(t)
}

fn default_share_of(slots: usize) -> usize {
    capstan::runtime::default_share(slots)
}

/// One `noisy` variant on its own server: the spinners' load (if any) in the
/// background, then the measured load; returns it and the spinners' statuses.
async fn noisy_run(
    sizes: Sizes,
    window: Duration,
    spin: bool,
    per_plugin: Option<usize>,
) -> anyhow::Result<(LoadResult, BTreeMap<u16, usize>)> {
    let ts = TestServer::start_with(|c| {
        c.limits.max_concurrent = NOISY_SLOTS;
        c.limits.max_concurrent_per_plugin = per_plugin;
    })
    .await;
    let b = render_deployment();
    ts.install(b.manifest, b.component).await;
    let addr = ts.server.as_ref().context("server")?.addr;
    let spec = |name: &str, body: Vec<u8>, concurrency| LoadSpec {
        addr,
        method: hyper::Method::POST,
        path: format!("/v1/plugins/{name}/invoke"),
        token: ts.token.clone(),
        body: Bytes::from(body),
        concurrency,
        warmup: sizes.http_warmup,
        track_versions: false,
    };
    let mut spinners = Vec::new();
    for name in ["spin-a", "spin-b"].into_iter().filter(|_| spin) {
        let limits = "[limits]\ndeadline_ms = 1000";
        let m = capstan_tests::manifest(name, "1.0.0", "deploy-step", limits);
        let wasm = capstan_tests::guest(capstan_tests::guests::FAULT_STEP);
        ts.install(&m, &wasm).await;
        let body = br#"{"params":{"fault":"loop"}}"#.to_vec();
        let shared = LoadShared::new();
        let rx = spawn_load(spec(name, body, NOISY_SLOTS), shared.clone());
        spinners.push((shared, rx));
    }
    let r = run_load(spec(PLUGIN, invoke_body(), 1), window).await?;
    let mut statuses = BTreeMap::new();
    for (shared, rx) in spinners {
        shared.stop();
        for (status, n) in rx.await?.by_status {
            *statuses.entry(status).or_default() += n;
        }
    }
    ts.stop().await;
    Ok((r, statuses))
}

// ---------------------------------------------------------------- main

/// Set by `--pin` (and in a load generator child by its environment).
static PINNED: AtomicBool = AtomicBool::new(false);

fn pinned() -> bool {
    PINNED.load(Ordering::Relaxed)
}

/// Binds the calling thread, and the threads it starts from now on, to one
/// CPU. With `--pin` the server runs on CPU 0 and the load generator on
/// CPU 1, as a server and its clients would on separate machines: neither
/// evicts the other's caches nor waits for the other's time slice. Without
/// it both share both CPUs, as in every figure before 2026-12-03.
#[allow(unsafe_code)]
fn pin(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed `cpu_set_t` is a valid empty set; `CPU_SET` writes
    // within it, and `sched_setaffinity` only reads `size_of` bytes of it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn server_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if pinned() { 1 } else { 2 })
        .enable_all()
        .build()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(pos) = args.iter().position(|a| a == "--rss-child") {
        return rss_child(&args[pos + 1..]);
    }
    if let Some(pos) = args.iter().position(|a| a == "--loadgen-child") {
        return loadgen_child(&args[pos + 1..]);
    }
    if let Some(pos) = args.iter().position(|a| a == "--perf-report") {
        return perf_report(&args[pos + 1..]);
    }
    let opts = parse_args(&args);
    if !opts.bench && !opts.quick {
        println!(
            "capstan bench: nothing measured outside `cargo bench` (run `cargo bench -p capstan-tests --bench capstan`)"
        );
        return Ok(());
    }
    for f in &opts.filters {
        if !SCENARIOS.iter().any(|s| s.contains(f.as_str())) {
            bail!(
                "no scenario matches `{f}`; scenarios: {}",
                SCENARIOS.join(", ")
            );
        }
    }
    let mut sizes = Sizes::new(opts.quick);
    if let Some(secs) = opts.secs {
        sizes.http_round = Duration::from_secs_f64(secs);
    }
    if opts.pin {
        pin(0).context("--pin: binding the server to CPU 0")?;
        PINNED.store(true, Ordering::Relaxed);
    }
    let started = Instant::now();
    let mut tables = vec![machine_table("Machine (at start)")];
    tables[0].print_plain();
    let rt = server_runtime()?;
    for scenario in SCENARIOS {
        if !opts.wants(scenario) {
            continue;
        }
        let t0 = Instant::now();
        eprintln!("running `{scenario}` (loadavg {})...", loadavg());
        let result = match scenario {
            "invoke" => rt.block_on(scenario_invoke(sizes)).map(|t| vec![t]),
            "http" => rt.block_on(scenario_http(sizes, opts.perf.clone())),
            "reload" => rt.block_on(scenario_reload(sizes)).map(|t| vec![t]),
            "restart" => rt.block_on(scenario_restart(sizes)).map(|t| vec![t]),
            "rss" => scenario_rss(sizes).map(|t| vec![t]),
            "noisy" => rt.block_on(scenario_noisy(sizes)).map(|t| vec![t]),
            "pipelines" => rt.block_on(pipelines::scenario(opts.quick, opts.perf.clone())),
            _ => unreachable!(),
        };
        match result {
            Ok(mut ts) => {
                ts[0].note(format!(
                    "scenario took {:.1} s; loadavg after: {}",
                    t0.elapsed().as_secs_f64(),
                    loadavg()
                ));
                for t in ts {
                    t.print_plain();
                    tables.push(t);
                }
            }
            Err(e) => {
                let mut t = Table::new(&format!("{scenario}: FAILED"), &["error"]);
                t.row(vec![format!("{e:#}")]);
                t.print_plain();
                tables.push(t);
            }
        }
    }
    println!(
        "\nbench run took {:.1} s{}",
        started.elapsed().as_secs_f64(),
        if opts.quick { " (--quick sizes)" } else { "" }
    );
    if opts.markdown {
        println!("\n---- Markdown ----");
        for t in &tables {
            t.print_markdown();
        }
    }
    Ok(())
}
