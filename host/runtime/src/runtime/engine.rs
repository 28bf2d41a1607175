//! Engine and linker setup, shared by every plugin.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::CapstanHost;
use super::state::HostState;
use crate::capabilities::CapabilityEnv;

/// How often the epoch advances; deadlines are accurate to about this much.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Runtime settings, with the server's defaults for limits a manifest leaves unset.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Memory cap per invocation when the manifest sets none, in MiB.
    pub default_memory_mb: u64,
    /// Deadline per invocation when the manifest sets none, in ms.
    pub default_deadline_ms: u64,
    /// Largest result a plugin may return, in bytes (measured on its strings).
    pub max_result_bytes: usize,
    /// Instances the pooling allocator reserves room for (concurrent calls).
    pub pool_instances: u32,
    /// Largest linear memory any plugin may have, in MiB (pool slot size).
    pub max_memory_mb: u64,
    /// Invocations that may run at once; more wait up to `queue_wait_ms`.
    pub max_concurrent: usize,
    /// Invocations of one plugin that may run at once when its manifest sets
    /// no `[limits] max_concurrent`; at most `max_concurrent`.
    pub max_concurrent_per_plugin: usize,
    /// How long a call waits for a free slot before it is refused as overloaded.
    pub queue_wait_ms: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            default_memory_mb: 64,
            default_deadline_ms: 5_000,
            max_result_bytes: 4 * 1024 * 1024,
            pool_instances: 256,
            max_memory_mb: 512,
            max_concurrent: 64,
            max_concurrent_per_plugin: default_share(64),
            queue_wait_ms: 200,
        }
    }
}

/// The default per-plugin limit: a quarter of the server's slots, at least one.
pub fn default_share(max_concurrent: usize) -> usize {
    (max_concurrent / 4).max(1)
}

/// The shared engine, linker and epoch ticker.
pub struct Runtime {
    pub(super) engine: Engine,
    pub(super) linker: Linker<HostState>,
    pub(super) config: RuntimeConfig,
    pub(super) permits: tokio::sync::Semaphore,
    pub(super) env: Arc<CapabilityEnv>,
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    /// Builds the engine (pooling allocator, epochs, fuel) and the linker with
    /// WASI and every Capstan host interface.
    pub fn new(config: RuntimeConfig, env: Arc<CapabilityEnv>) -> wasmtime::Result<Runtime> {
        let engine = Engine::new(&engine_config(&config))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        CapstanHost::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), ticker_stop.clone());
        Ok(Runtime {
            engine,
            linker,
            permits: tokio::sync::Semaphore::new(config.max_concurrent),
            env,
            config,
            ticker_stop,
        })
    }

    /// The engine, e.g. for benchmarks that compare against bare wasmtime.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The capabilities' shared state.
    pub fn env(&self) -> &Arc<CapabilityEnv> {
        &self.env
    }

    /// The runtime's settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// How many calls of `m`'s plugin may run at once: its manifest's
    /// `[limits] max_concurrent` or the server's default share, never more
    /// than the server's `max_concurrent` (a version stored under a larger
    /// server limit still loads after a restart with a smaller one).
    pub fn plugin_limit(&self, m: &crate::manifest::Manifest) -> usize {
        m.limits
            .max_concurrent
            .unwrap_or(self.config.max_concurrent_per_plugin)
            .clamp(1, self.config.max_concurrent.max(1))
    }

    /// Refuses a new version whose `[limits] max_concurrent` is above the
    /// server's `max_concurrent`.
    pub fn check_limits(
        &self,
        m: &crate::manifest::Manifest,
    ) -> Result<(), crate::manifest::ManifestError> {
        match m.limits.max_concurrent {
            Some(n) if n > self.config.max_concurrent => {
                Err(crate::manifest::ManifestError::Field {
                    field: "limits.max_concurrent",
                    reason: format!(
                        "{n} is above the server's [limits] max_concurrent of {}",
                        self.config.max_concurrent
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// A short hex string that changes whenever compiled artifacts become
    /// incompatible (wasmtime version, target, engine settings).
    pub fn compatibility_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn engine_config(rc: &RuntimeConfig) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.consume_fuel(true);
    config.max_wasm_stack(1 << 20);
    let mut pool = PoolingAllocationConfig::default();
    let n = rc.pool_instances;
    pool.total_component_instances(n);
    // A Rust wasip2 component holds a handful of core instances and up to two memories.
    pool.total_core_instances(n * 8);
    pool.total_memories(n * 2);
    pool.total_tables(n * 4);
    pool.max_memory_size((rc.max_memory_mb as usize) << 20);
    pool.total_stacks(n);
    pool.max_core_instances_per_component(32);
    pool.max_memories_per_component(4);
    pool.max_tables_per_component(16);
    // Keep a slot's first pages resident instead of returning them to the
    // kernel after every call: on this VM the madvise, page faults and TLB
    // shootdowns of a full reset dominate a concurrent invoke (BENCHMARKS.md).
    // Typical plugins touch ~1 MiB; this bounds what an idle warm slot keeps.
    pool.linear_memory_keep_resident(2 << 20);
    pool.table_keep_resident(256 << 10);
    pool.pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// One thread for the whole engine, not one per call.
fn spawn_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("capstan-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .expect("spawn epoch ticker");
}
