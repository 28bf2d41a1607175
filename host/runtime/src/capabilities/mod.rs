//! Host capabilities: everything a plugin can reach outside its sandbox.
//!
//! Each capability lives in its own module and follows the same shape:
//! its grant (`[grants.<name>]` in the manifest) is validated once when a
//! plugin version loads and turned into a policy; per-invocation state is
//! prepared for each call; every host function checks the policy first
//! (deny by default), records the use in the audit log, and only then acts.

pub mod audit;
pub mod config;
pub mod fs;
pub mod http;
pub mod kube;
pub mod kv;
pub mod log;
pub mod secrets;
pub mod tcp;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::runtime::bindings::WitError;
use crate::runtime::state::HostState;
use crate::store::Store;
pub use audit::{Audit, AuditRecord};

/// At most `max` bytes of a guest-chosen string, cut at a character
/// boundary (slicing `&s[..max]` would panic inside a UTF-8 character).
pub(crate) fn clip(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

/// Everything a manifest grants. The default grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Outbound HTTP through `wasi:http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<http::HttpGrant>,
    /// Directories, each mounted at a guest path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<fs::FsGrant>,
    /// Private key-value state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<kv::KvGrant>,
    /// Named secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<secrets::SecretsGrant>,
    /// Kubernetes access, one entry per cluster/scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kube: Vec<kube::KubeGrant>,
    /// Outbound TCP through `wasi:sockets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<tcp::TcpGrant>,
}

impl Grants {
    /// Checks what can be checked without the server's environment
    /// (patterns parse, paths are absolute, verbs exist).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(h) = &self.http {
            h.validate().map_err(|e| format!("http: {e}"))?;
        }
        fs::validate(&self.fs).map_err(|e| format!("fs: {e}"))?;
        if let Some(k) = &self.kv {
            k.validate().map_err(|e| format!("kv: {e}"))?;
        }
        for k in &self.kube {
            k.validate().map_err(|e| format!("kube: {e}"))?;
        }
        if let Some(t) = &self.tcp {
            t.validate().map_err(|e| format!("tcp: {e}"))?;
        }
        Ok(())
    }
}

/// Server-wide state the capabilities share.
pub struct CapabilityEnv {
    /// The database (kv, secrets, audit).
    pub store: Arc<Store>,
    /// The audit log.
    pub audit: Audit,
    /// Decrypts stored secrets.
    pub secrets: secrets::SecretBox,
    /// Configured Kubernetes clusters.
    pub kube: kube::Clusters,
    /// What plugins' https requests trust (public roots, plus a private CA).
    pub tls: http::TlsTrust,
}

/// A plugin version's grants, checked against the environment once at load.
#[derive(Debug, Default)]
pub struct Policies {
    /// HTTP allowlist, if granted.
    pub http: Option<Arc<http::HttpPolicy>>,
    /// Opened directories.
    pub fs: fs::FsPolicy,
    /// KV limits, if granted.
    pub kv: Option<kv::KvGrant>,
    /// Granted secret names.
    pub secrets: Vec<String>,
    /// Kubernetes scopes.
    pub kube: kube::KubePolicy,
    /// TCP connect allowlist, if granted.
    pub tcp: Option<Arc<tcp::TcpPolicy>>,
}

impl Policies {
    /// Turns grants into policies: opens granted directories, checks that
    /// kube clusters exist, parses patterns. Fails with a precise reason.
    pub fn prepare(grants: &Grants, env: &CapabilityEnv) -> Result<Policies, String> {
        Ok(Policies {
            http: grants
                .http
                .as_ref()
                .map(|g| http::HttpPolicy::new(g).map(Arc::new))
                .transpose()
                .map_err(|e| format!("http: {e}"))?,
            fs: fs::FsPolicy::open(&grants.fs).map_err(|e| format!("fs: {e}"))?,
            kv: grants.kv.clone(),
            secrets: grants
                .secrets
                .as_ref()
                .map(|s| s.names.clone())
                .unwrap_or_default(),
            kube: kube::KubePolicy::new(&grants.kube, &env.kube)
                .map_err(|e| format!("kube: {e}"))?,
            tcp: grants
                .tcp
                .as_ref()
                .map(|g| tcp::TcpPolicy::new(g).map(Arc::new))
                .transpose()
                .map_err(|e| format!("tcp: {e}"))?,
        })
    }
}

/// The capability part of one invocation's state.
pub struct CallCaps {
    /// Server-wide state.
    pub env: Arc<CapabilityEnv>,
    /// This version's policies.
    pub policies: Arc<Policies>,
    /// Secret values handed to the guest in this call, to redact from its output.
    pub revealed: secrets::Revealed,
}

impl HostState {
    /// Records a capability use in the audit log.
    pub(crate) fn audit(
        &self,
        capability: &str,
        verb: &str,
        target: &str,
        allowed: bool,
        outcome: &str,
    ) {
        let call = &self.call;
        self.caps.env.audit.record(AuditRecord {
            id: 0,
            at_ms: 0,
            actor: format!("plugin:{}", call.plugin),
            plugin: Some(call.plugin.to_string()),
            version: Some(call.version.to_string()),
            invocation: Some(call.invocation.to_string()),
            capability: capability.into(),
            target: target.into(),
            verb: verb.into(),
            allowed,
            outcome: self.redact(outcome).into_owned(),
            detail: serde_json::Value::Null,
        });
    }

    /// Audits a denial and returns the guest-facing error.
    pub(crate) fn deny(&self, capability: &str, verb: &str, target: &str, why: &str) -> WitError {
        self.audit(capability, verb, target, false, why);
        WitError::Denied(format!("{capability} {verb} {target}: {why}"))
    }

    /// Audits the outcome of an allowed use and passes the result through.
    pub(crate) fn audited<T>(
        &self,
        capability: &str,
        verb: &str,
        target: &str,
        result: Result<T, WitError>,
    ) -> Result<T, WitError> {
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error: {e:?}"),
        };
        self.audit(capability, verb, target, true, &outcome);
        result
    }

    /// Replaces every secret value revealed in this call with `[REDACTED]`.
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        self.caps.revealed.redact(text)
    }
}
