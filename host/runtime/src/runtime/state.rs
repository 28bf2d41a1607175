//! Per-invocation state: what a fresh `Store` holds for one call.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limits::Limiter;
use crate::capabilities::CallCaps;

/// Bytes of guest stdout/stderr kept per call (panic messages land here).
pub const OUTPUT_CAPTURE_BYTES: usize = 64 * 1024;

/// Who is calling: attributed to every log line and capability use.
#[derive(Debug, Clone)]
pub struct CallInfo {
    /// Plugin name.
    pub plugin: Arc<str>,
    /// Plugin version.
    pub version: Arc<str>,
    /// Unique id of this invocation.
    pub invocation: Arc<str>,
    /// The plugin's settings, from its manifest.
    pub settings: Arc<Vec<(String, String)>>,
}

/// Log lines kept per call for its caller (a pipeline step's log); the
/// rest are counted, not kept.
pub const MAX_CAPTURED_LOGS: usize = 256;

/// A log line a plugin wrote during one call, secrets already masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedLog {
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// The message, then its fields as `key=value`.
    pub message: String,
    /// When it was written, Unix milliseconds.
    pub at_ms: i64,
}

/// The data of one invocation's `Store`.
pub struct HostState {
    /// Attribution for this call.
    pub call: CallInfo,
    /// Memory and table accounting and caps.
    pub limiter: Limiter,
    /// Capability policies and per-call capability state.
    pub caps: CallCaps,
    /// Outbound HTTP hooks (the grant check lives there).
    pub http_hooks: crate::capabilities::http::HttpHooks,
    /// Log lines of this call, at most [`MAX_CAPTURED_LOGS`].
    pub logs: Vec<CapturedLog>,
    /// Log lines beyond [`MAX_CAPTURED_LOGS`].
    pub logs_dropped: usize,
    http: wasmtime_wasi_http::WasiHttpCtx,
    wasi: WasiCtx,
    table: ResourceTable,
    stderr: MemoryOutputPipe,
}

impl HostState {
    /// Prepares a fresh state: no environment, no arguments, no preopens, no
    /// sockets unless `[grants.tcp]` allows connects; stdout and stderr go to a bounded in-memory buffer.
    pub fn new(call: CallInfo, limiter: Limiter, caps: CallCaps) -> Self {
        let stderr = MemoryOutputPipe::new(OUTPUT_CAPTURE_BYTES);
        let mut wasi = wasmtime_wasi::WasiCtxBuilder::new();
        wasi.stdout(stderr.clone()).stderr(stderr.clone());
        let (audit, who) = (caps.env.audit.clone(), call.clone());
        crate::capabilities::tcp::configure(
            &mut wasi,
            caps.policies.tcp.clone(),
            move |target, allowed, outcome| {
                audit.record(crate::capabilities::AuditRecord {
                    id: 0,
                    at_ms: 0,
                    actor: format!("plugin:{}", who.plugin),
                    plugin: Some(who.plugin.to_string()),
                    version: Some(who.version.to_string()),
                    invocation: Some(who.invocation.to_string()),
                    capability: "tcp".into(),
                    target: target.into(),
                    verb: "connect".into(),
                    allowed,
                    outcome: outcome.into(),
                    detail: serde_json::Value::Null,
                })
            },
        );
        let wasi = wasi.build();
        let http_hooks = crate::capabilities::http::HttpHooks::new(&call, &caps);
        HostState {
            call,
            limiter,
            caps,
            http_hooks,
            logs: Vec::new(),
            logs_dropped: 0,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            wasi,
            table: ResourceTable::new(),
            stderr,
        }
    }

    /// What the guest wrote to stdout/stderr so far (lossy UTF-8, last 2 KiB).
    pub fn output_tail(&self) -> String {
        let bytes = self.stderr.contents();
        let start = bytes.len().saturating_sub(2048);
        let text = String::from_utf8_lossy(&bytes[start..]);
        self.redact(text.trim()).into_owned()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl super::bindings::capstan::plugin::types::Host for HostState {}
