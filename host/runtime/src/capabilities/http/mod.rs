//! Outbound HTTP through `wasi:http`, checked against `[grants.http]`.
//!
//! A plugin reaches the network only through `wasi:http` (its sockets are off),
//! and every outgoing request passes through [`HttpHooks`]: no grant, no
//! request. Each request, allowed or denied, leaves one audit record
//! (capability `http`, the method as verb, the URL without query string as
//! target, and an outcome naming the status or the reason for a denial).
//!
//! # The grant
//!
//! ```toml
//! [grants.http]
//! # Origins the plugin may call, as `scheme://host[:port]` patterns.
//! allow = [
//!     "https://api.slack.com",          # https, port 443 only
//!     "https://*.example.com:8443",     # any subdomain of example.com (not example.com itself), port 8443
//!     "http://127.0.0.1:*",             # loopback literal: granted explicitly, any port
//!     "http://localhost:9090",          # `localhost` named: its loopback addresses are granted
//!     "http://[fd00::10]:8080",         # IPv6 literal in brackets
//! ]
//! # Optional: private ranges that allowed *names* may resolve into.
//! private_networks = ["10.0.0.0/8", "fd12:3456::/32"]
//! # Optional: response body cap (default 1 MiB, at most 64 MiB).
//! max_response_bytes = 1048576
//! # Optional: whole-request deadline: connect, response and body
//! # (default 10 s); also caps the timeouts the guest asks for.
//! timeout_ms = 10000
//! ```
//!
//! Pattern rules:
//! - The scheme is `http` or `https` and must match exactly (no upgrade or
//!   downgrade). The port defaults to the scheme's (80/443); `:*` allows any.
//! - The host is a DNS name (matched case-insensitively, a trailing dot
//!   ignored), `*.name` (strict subdomains of `name`, at any depth), `*`
//!   (any host), an IPv4 literal or a bracketed IPv6 literal.
//! - No path, query, fragment or user info: a pattern names an origin.
//!
//! # Addresses
//!
//! A name is resolved once by the host and every resolved address is checked
//! before connecting; the connection then goes to that checked address (no
//! second lookup, so no DNS-rebinding window), while TLS still verifies the
//! certificate against the host name. Loopback, private (RFC 1918, ULA),
//! link-local, cloud-metadata, unspecified, carrier-grade NAT, multicast and
//! reserved addresses (also IPv4-mapped/compatible, NAT64 and 6to4 forms of
//! them) are refused unless the grant names them:
//! - an allow pattern whose host is that literal IP grants that address;
//! - an allow pattern whose host is `localhost` grants loopback addresses
//!   to requests for `localhost` (not to other names that resolve there);
//! - `private_networks` grants any address in those ranges, except the cloud
//!   metadata endpoints (`169.254.169.254`, `fd00:ec2::254`), which only a
//!   literal allow pattern reaches.
//!
//! If any resolved address is refused the whole request is refused.
//!
//! # Errors the guest sees
//!
//! A request outside the allowlist fails with `HTTP-request-denied`, a refused
//! address with `destination-IP-prohibited` (the SDK maps both to
//! `Error::Denied`). A body over the limit fails with
//! `HTTP-response-body-size` (before the body when `content-length` announces
//! it, otherwise while streaming); timeouts fail with `connection-timeout`,
//! `connection-read-timeout` or `HTTP-response-timeout`. `wasi:http` does not
//! follow redirects: the SDK client does, so every hop comes back here.

pub mod address;
mod policy;
pub use policy::{network_covers, pattern_covers};
mod send;

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

use crate::capabilities::secrets::Revealed;
use crate::capabilities::{Audit, AuditRecord, CallCaps};
use crate::runtime::state::CallInfo;

pub use address::{AddrClass, classify};
pub use policy::HttpPolicy;

use policy::audit_target;

/// Response body limit when the grant sets none.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 1 << 20;
/// The most `max_response_bytes` may be.
pub const MAX_RESPONSE_BYTES_CAP: u64 = 64 << 20;
/// Per-request deadline when the grant sets none.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The most `timeout_ms` may be (the longest invocation deadline).
pub const MAX_TIMEOUT_MS: u64 = crate::manifest::MAX_DEADLINE_MS;

/// `[grants.http]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// Allowed `scheme://host[:port]` patterns, e.g. `https://api.slack.com`,
    /// `https://*.example.com:8443`, `http://127.0.0.1:*`.
    pub allow: Vec<String>,
    /// CIDR ranges (e.g. `10.0.0.0/8`) that allowed names may resolve into;
    /// other private, loopback and link-local addresses are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private_networks: Vec<String>,
    /// Largest response body accepted, in bytes (default 1 MiB, at most 64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<u64>,
    /// Deadline of one request, from connect to the end of the body, in
    /// milliseconds (default 10 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl HttpGrant {
    /// Checks the patterns, ranges and limits.
    pub fn validate(&self) -> Result<(), String> {
        HttpPolicy::new(self).map(|_| ())
    }
}

pub use send::TLS_EXPIRY_HEADER;

/// What plugins' https requests trust: the public roots (`webpki-roots`) and,
/// if the server names one (`[http] ca_file`), a PEM file of extra CA
/// certificates, e.g. a company's private CA.
#[derive(Clone)]
pub struct TlsTrust(tokio_rustls::TlsConnector);

impl TlsTrust {
    /// The public roots only.
    pub fn public() -> TlsTrust {
        TlsTrust::with_extra(Vec::new())
    }

    /// The public roots and every certificate in the PEM file at `path`.
    pub fn with_ca_file(path: &std::path::Path) -> Result<TlsTrust, String> {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("reading CA certificates from {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
        let mut roots = rustls::RootCertStore::empty();
        let (_, unusable) = roots.add_parsable_certificates(certs.clone());
        if unusable > 0 {
            return Err(format!(
                "{}: {unusable} of {} certificates cannot be trust anchors",
                path.display(),
                certs.len()
            ));
        }
        Ok(TlsTrust::with_extra(certs))
    }

    fn with_extra(extra: Vec<rustls::pki_types::CertificateDer<'static>>) -> TlsTrust {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        roots.add_parsable_certificates(extra);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsTrust(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

impl Default for TlsTrust {
    fn default() -> Self {
        TlsTrust::public()
    }
}

impl std::fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsTrust")
    }
}

/// Per-invocation `wasi:http` hooks: every outgoing request is checked
/// against the plugin's policy (deny by default) and audited.
pub struct HttpHooks {
    tls: TlsTrust,
    policy: Option<Arc<HttpPolicy>>,
    audit: Audit,
    call: CallInfo,
    revealed: Revealed,
}

impl HttpHooks {
    /// Hooks for one invocation.
    pub fn new(call: &CallInfo, caps: &CallCaps) -> HttpHooks {
        HttpHooks {
            tls: caps.env.tls.clone(),
            policy: caps.policies.http.clone(),
            audit: caps.env.audit.clone(),
            call: call.clone(),
            revealed: caps.revealed.clone(),
        }
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendResult = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>;

impl wasmtime_wasi_http::WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let ticket = AuditTicket {
            audit: self.audit.clone(),
            call: self.call.clone(),
            revealed: self.revealed.clone(),
            target: audit_target(request.uri()),
            verb: request.method().to_string(),
        };
        Box::new(send::send(
            self.tls.0.clone(),
            self.policy.clone(),
            ticket,
            request,
            options,
        ))
    }
}

/// The one audit record a request leaves, written when its outcome is known.
struct AuditTicket {
    audit: Audit,
    call: CallInfo,
    revealed: Revealed,
    target: String,
    verb: String,
}

impl AuditTicket {
    fn record(self, allowed: bool, outcome: &str) {
        tracing::Span::current().record("outcome", outcome);
        self.audit.record(AuditRecord {
            id: 0,
            at_ms: 0,
            actor: format!("plugin:{}", self.call.plugin),
            plugin: Some(self.call.plugin.to_string()),
            version: Some(self.call.version.to_string()),
            invocation: Some(self.call.invocation.to_string()),
            capability: "http".into(),
            // A secret in a URL (webhook tokens are) never reaches the audit log.
            target: self.revealed.redact(&self.target).into_owned(),
            verb: self.verb,
            allowed,
            outcome: self.revealed.redact(outcome).into_owned(),
            detail: serde_json::Value::Null,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_usable_certificates_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = TlsTrust::with_ca_file(&missing).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
        let empty = dir.path().join("key.pem");
        std::fs::write(
            &empty,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = TlsTrust::with_ca_file(&empty).unwrap_err();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = TlsTrust::with_ca_file(&junk).unwrap_err();
        assert!(
            e.contains("1 of 1 certificates cannot be trust anchors"),
            "{e}"
        );
    }

    #[test]
    fn grants_deserialize_from_toml() {
        let g: HttpGrant = toml::from_str(
            "allow = [\"https://api.slack.com\"]\nprivate_networks = [\"10.0.0.0/8\"]\nmax_response_bytes = 2048\ntimeout_ms = 500\n",
        )
        .unwrap();
        assert_eq!(g.private_networks, ["10.0.0.0/8"]);
        assert_eq!(
            (g.max_response_bytes, g.timeout_ms),
            (Some(2048), Some(500))
        );
        let e = toml::from_str::<HttpGrant>("allow = []\nallowed = []\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `allowed`"), "{e}");
    }
}
