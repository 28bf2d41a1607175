//! The `log` host interface: levelled, structured records attributed to the
//! plugin, its version and the invocation that emitted them.

use super::clip;
use crate::runtime::bindings::capstan::plugin::log::{Host, Level};
use crate::runtime::state::{CapturedLog, HostState, MAX_CAPTURED_LOGS};

/// Longest message kept; longer ones are cut so one plugin cannot flood the log.
const MAX_MESSAGE: usize = 8 * 1024;
/// Most fields kept per record.
const MAX_FIELDS: usize = 32;

impl Host for HostState {
    async fn log(
        &mut self,
        level: Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        let call = &self.call;
        // A secret the plugin read in this call never reaches the log.
        let message = self.redact(clip(&message, MAX_MESSAGE));
        let fields: Vec<String> = fields
            .iter()
            .take(MAX_FIELDS)
            .map(|(k, v)| format!("{}={}", clip(k, 64), clip(v, 1024)))
            .collect();
        let fields = fields.join(" ");
        let fields = self.redact(&fields);
        macro_rules! emit {
            ($lvl:ident) => {
                tracing::$lvl!(
                    target: "capstan::plugin",
                    plugin = %call.plugin,
                    version = %call.version,
                    invocation = %call.invocation,
                    fields = %fields,
                    "{message}"
                )
            };
        }
        let name = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        if self.logs.len() < MAX_CAPTURED_LOGS {
            let text = if fields.is_empty() {
                message.to_string()
            } else {
                format!("{message} {fields}")
            };
            self.logs.push(CapturedLog {
                level: name,
                message: text,
                at_ms: capstan_store::unix_millis(),
            });
        } else {
            self.logs_dropped += 1;
        }
        match level {
            Level::Trace => emit!(trace),
            Level::Debug => emit!(debug),
            Level::Info => emit!(info),
            Level::Warn => emit!(warn),
            Level::Error => emit!(error),
        }
        Ok(())
    }
}
