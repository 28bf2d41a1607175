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

use std::fmt;
use std::future::{Future, poll_fn};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

use crate::capabilities::{Audit, AuditRecord, CallCaps};
use crate::runtime::state::CallInfo;

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

/// A compiled `[grants.http]`.
#[derive(Debug)]
pub struct HttpPolicy {
    allow: Vec<Pattern>,
    private_networks: Vec<IpNet>,
    max_response_bytes: u64,
    timeout: Duration,
}

impl HttpPolicy {
    /// Compiles a grant; fails with the first invalid entry and why.
    pub fn new(grant: &HttpGrant) -> Result<HttpPolicy, String> {
        if grant.allow.is_empty() {
            return Err("`allow` is empty: list the `scheme://host[:port]` patterns the plugin may call, or drop [grants.http]".into());
        }
        let allow = grant
            .allow
            .iter()
            .map(|p| Pattern::parse(p).map_err(|e| format!("allow pattern `{p}`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let private_networks = grant
            .private_networks
            .iter()
            .map(|c| parse_network(c).map_err(|e| format!("private_networks entry `{c}`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let max_response_bytes = match grant.max_response_bytes {
            None => DEFAULT_MAX_RESPONSE_BYTES,
            Some(0) => return Err("max_response_bytes must be at least 1".into()),
            Some(n) if n > MAX_RESPONSE_BYTES_CAP => {
                return Err(format!(
                    "max_response_bytes = {n} exceeds the hard cap of {MAX_RESPONSE_BYTES_CAP} (64 MiB)"
                ));
            }
            Some(n) => n,
        };
        let timeout_ms = match grant.timeout_ms {
            None => DEFAULT_TIMEOUT_MS,
            Some(ms) if !(1..=MAX_TIMEOUT_MS).contains(&ms) => {
                return Err(format!("timeout_ms = {ms} is outside 1..={MAX_TIMEOUT_MS}"));
            }
            Some(ms) => ms,
        };
        Ok(HttpPolicy {
            allow,
            private_networks,
            max_response_bytes,
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    /// Largest response body accepted.
    pub fn max_response_bytes(&self) -> u64 {
        self.max_response_bytes
    }

    /// Deadline of one request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the allowlist admits `target`; on success, what the matching
    /// patterns grant beyond public addresses. On failure, why not.
    fn authorize(&self, target: &Target) -> Result<Explicit, String> {
        let by_host: Vec<&Pattern> = self
            .allow
            .iter()
            .filter(|p| p.host.matches(&target.host))
            .collect();
        if by_host.is_empty() {
            return Err("host not in allowlist".into());
        }
        let listed = |ps: &[&Pattern]| {
            ps.iter()
                .map(|p| p.text.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let by_scheme: Vec<&Pattern> = by_host
            .iter()
            .copied()
            .filter(|p| p.https == target.https)
            .collect();
        if by_scheme.is_empty() {
            return Err(format!(
                "scheme {} not allowed for this host (granted: {})",
                target.scheme(),
                listed(&by_host)
            ));
        }
        let full: Vec<&Pattern> = by_scheme
            .iter()
            .copied()
            .filter(|p| p.port.is_none_or(|port| port == target.port))
            .collect();
        if full.is_empty() {
            return Err(format!(
                "port {} not allowed for this host (granted: {})",
                target.port,
                listed(&by_scheme)
            ));
        }
        let mut explicit = Explicit::default();
        for p in full {
            match &p.host {
                HostPattern::Ip(ip) => explicit.ips.push(*ip),
                HostPattern::Name(n) if n == "localhost" => explicit.loopback = true,
                _ => {}
            }
        }
        Ok(explicit)
    }

    /// Checks every resolved address; the first refused one and its class.
    fn check_addrs(
        &self,
        explicit: &Explicit,
        addrs: &[IpAddr],
    ) -> Result<(), (IpAddr, AddrClass)> {
        for &ip in addrs {
            let ip = ip.to_canonical();
            let Some(class) = classify(ip) else { continue };
            let granted = explicit.ips.contains(&ip)
                || (explicit.loopback && class == AddrClass::Loopback)
                || (class != AddrClass::CloudMetadata
                    && self.private_networks.iter().any(|n| n.contains(&ip)));
            if !granted {
                return Err((ip, class));
            }
        }
        Ok(())
    }
}

/// Parses a `private_networks` entry: a CIDR in network form, or one address.
fn parse_network(text: &str) -> Result<IpNet, String> {
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip.to_canonical()),
            Err(_) => return Err("not a CIDR range like `10.0.0.0/8` or `fd00::/8`".into()),
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "has host bits set; did you mean `{}`?",
            net.trunc()
        ));
    }
    let min = match net {
        IpNet::V4(_) => 8,
        IpNet::V6(_) => 7,
    };
    if net.prefix_len() < min {
        return Err(format!(
            "is too broad (prefix shorter than /{min}); list the private ranges the plugin needs"
        ));
    }
    Ok(net)
}

/// One allow pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// As written, for messages.
    text: String,
    https: bool,
    host: HostPattern,
    /// `None` for `:*`.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `*`: any host.
    Any,
    /// An exact DNS name (lowercase, no trailing dot).
    Name(String),
    /// `*.suffix`: strict subdomains of `suffix`.
    Subdomains(String),
    /// An IP literal (canonical: IPv4-mapped IPv6 becomes IPv4).
    Ip(IpAddr),
}

impl HostPattern {
    fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (HostPattern::Any, _) => true,
            (HostPattern::Name(n), Host::Name(h)) => n == h,
            (HostPattern::Subdomains(s), Host::Name(h)) => {
                h.len() > s.len() + 1
                    && h.ends_with(s.as_str())
                    && h.as_bytes()[h.len() - s.len() - 1] == b'.'
            }
            (HostPattern::Ip(a), Host::Ip(b)) => a == b,
            _ => false,
        }
    }
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("empty pattern".into());
        }
        if text.chars().any(char::is_whitespace) {
            return Err("contains whitespace".into());
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!(
                "missing scheme: write `https://{text}` or `http://{text}`"
            ));
        };
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            "" => return Err("missing scheme before `://`".into()),
            other => {
                return Err(format!(
                    "scheme `{other}` is not supported (use http or https)"
                ));
            }
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if let Some(i) = authority.find(['/', '?', '#']) {
            return Err(format!(
                "has a path, query or fragment (`{}`); a pattern names only scheme://host[:port]",
                &authority[i..]
            ));
        }
        if authority.contains('@') {
            return Err("user info (`user@`) is not allowed".into());
        }
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            None => Some(if https { 443 } else { 80 }),
            Some("*") => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
                _ => {
                    return Err(format!("port `{p}` is not a number in 1..=65535 or `*`"));
                }
            },
        };
        Ok(Pattern {
            text: text.to_string(),
            https,
            host: parse_host_pattern(host)?,
            port,
        })
    }
}

/// Splits `host[:port]` / `[v6][:port]`; the IPv6 host keeps its brackets.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or("unclosed `[` in an IPv6 address")?;
        let host = &authority[..inside.len() + 2];
        if after.is_empty() {
            return Ok((host, None));
        }
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("unexpected `{after}` after the IPv6 address"))?;
        return Ok((host, Some(port)));
    }
    match authority.split_once(':') {
        Some((_, p)) if p.contains(':') => {
            Err("IPv6 addresses go in brackets, e.g. `http://[fd00::1]:8080`".into())
        }
        Some((h, p)) => Ok((h, Some(p))),
        None => Ok((authority, None)),
    }
}

fn parse_host_pattern(host: &str) -> Result<HostPattern, String> {
    if host.is_empty() {
        return Err("missing host".into());
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip: Ipv6Addr = v6
            .parse()
            .map_err(|_| format!("`{v6}` is not an IPv6 address"))?;
        return ip_pattern(IpAddr::V6(ip));
    }
    let lower = host.to_ascii_lowercase();
    let host = lower.strip_suffix('.').unwrap_or(&lower);
    if host == "*" {
        return Ok(HostPattern::Any);
    }
    if let Some(suffix) = host.strip_prefix("*.") {
        if suffix.contains('*') {
            return Err(wildcard_error());
        }
        if suffix.parse::<Ipv4Addr>().is_ok() {
            return Err("a wildcard covers DNS names, not IP addresses".into());
        }
        validate_name(suffix)?;
        return Ok(HostPattern::Subdomains(suffix.to_string()));
    }
    if host.contains('*') {
        return Err(wildcard_error());
    }
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return ip_pattern(IpAddr::V4(v4));
    }
    validate_name(host)?;
    Ok(HostPattern::Name(host.to_string()))
}

fn wildcard_error() -> String {
    "`*` may only be the whole host (`*`) or its first label (`*.example.com`)".into()
}

fn ip_pattern(ip: IpAddr) -> Result<HostPattern, String> {
    let ip = ip.to_canonical();
    if ip.is_unspecified() {
        return Err(format!("`{ip}` (unspecified) is not a destination"));
    }
    Ok(HostPattern::Ip(ip))
}

fn validate_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!("host `{name}` is longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("host `{name}` has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("label `{label}` is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "host `{name}` has invalid characters (letters, digits, `-` and `_` only; write internationalised names in punycode)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label `{label}` starts or ends with `-`"));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "host `{name}` is neither a dotted IPv4 address nor a DNS name (its last label is numeric)"
        ));
    }
    Ok(())
}

/// What the matching allow patterns grant beyond public addresses.
#[derive(Debug, Default, PartialEq, Eq)]
struct Explicit {
    /// IP literals named in the patterns.
    ips: Vec<IpAddr>,
    /// A pattern names `localhost`: loopback addresses are fine.
    loopback: bool,
}

/// A request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// Lowercase, without a trailing dot.
    Name(String),
    /// Canonical.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    https: bool,
    host: Host,
    port: u16,
}

impl Target {
    fn from_uri(uri: &http::Uri) -> Result<Target, String> {
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            Some(s) => return Err(format!("scheme {s} is not supported")),
            None => return Err("the URL has no scheme".into()),
        };
        let raw = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or("the URL has no host")?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if port == 0 {
            return Err("port 0 is not a destination".into());
        }
        let host = if let Some(v6) = raw.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let ip: Ipv6Addr = v6
                .parse()
                .map_err(|_| format!("`{v6}` is not an IPv6 address"))?;
            Host::Ip(IpAddr::V6(ip).to_canonical())
        } else if let Ok(v4) = raw.parse::<Ipv4Addr>() {
            Host::Ip(IpAddr::V4(v4))
        } else {
            let lower = raw.to_ascii_lowercase();
            let name = lower.strip_suffix('.').unwrap_or(&lower);
            if name.is_empty() {
                return Err("the URL has no host".into());
            }
            Host::Name(name.to_string())
        };
        Ok(Target { https, host, port })
    }

    fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }
}

/// The audit target of a request: the URL without user info, query or fragment.
fn audit_target(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("https");
    let host = uri.host().unwrap_or_default();
    let port = uri.port().map(|p| format!(":{p}")).unwrap_or_default();
    let path = match uri.path() {
        "" => "/",
        p => p,
    };
    format!("{scheme}://{host}{port}{path}")
}

/// Why an address is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918, fc00::/7 (ULA), fec0::/10 (site-local).
    Private,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 169.254.169.254, fd00:ec2::254.
    CloudMetadata,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 100.64.0.0/10.
    CarrierGradeNat,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 240.0.0.0/4, 192.0.0.0/24, 198.18.0.0/15, documentation ranges.
    Reserved,
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private",
            AddrClass::LinkLocal => "link-local",
            AddrClass::CloudMetadata => "cloud metadata",
            AddrClass::Unspecified => "unspecified",
            AddrClass::CarrierGradeNat => "carrier-grade NAT",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Reserved => "reserved",
        })
    }
}

/// The class of a non-public address; `None` for a public one.
pub fn classify(ip: IpAddr) -> Option<AddrClass> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddrClass> {
    use AddrClass::*;
    let class = if ip == Ipv4Addr::new(169, 254, 169, 254) {
        CloudMetadata
    } else if in_v4(ip, [0, 0, 0, 0], 8) {
        Unspecified
    } else if ip.is_loopback() {
        Loopback
    } else if ip.is_private() {
        Private
    } else if ip.is_link_local() {
        LinkLocal
    } else if in_v4(ip, [100, 64, 0, 0], 10) {
        CarrierGradeNat
    } else if ip.is_broadcast() {
        Broadcast
    } else if ip.is_multicast() {
        Multicast
    } else if in_v4(ip, [240, 0, 0, 0], 4)
        || in_v4(ip, [192, 0, 0, 0], 24)
        || in_v4(ip, [198, 18, 0, 0], 15)
        || ip.is_documentation()
    {
        Reserved
    } else {
        return None;
    };
    Some(class)
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddrClass> {
    use AddrClass::*;
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    let class = if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        CloudMetadata
    } else if ip.is_unspecified() {
        Unspecified
    } else if ip.is_loopback() {
        Loopback
    } else if s[..6] == [0; 6] {
        // IPv4-compatible (deprecated): judge the embedded address, never public.
        return Some(classify_v4(embedded(s[6], s[7])).unwrap_or(Reserved));
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 well-known prefix: as the embedded IPv4 address.
        return classify_v4(embedded(s[6], s[7]));
    } else if s[0] == 0x2002 {
        // 6to4: as the embedded IPv4 address.
        return classify_v4(embedded(s[1], s[2]));
    } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        Private
    } else if s[0] & 0xffc0 == 0xfe80 {
        LinkLocal
    } else if s[0] & 0xff00 == 0xff00 {
        Multicast
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Reserved
    } else {
        return None;
    };
    Some(class)
}

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
            target: audit_target(request.uri()),
            verb: request.method().to_string(),
        };
        Box::new(send(self.policy.clone(), ticket, request, options))
    }
}

/// The one audit record a request leaves, written when its outcome is known.
struct AuditTicket {
    audit: Audit,
    call: CallInfo,
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
            target: self.target,
            verb: self.verb,
            allowed,
            outcome: outcome.into(),
        });
    }
}

/// Per-request timeouts: the grant's deadline caps whatever the guest asks for.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    total: Duration,
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
}

impl Timeouts {
    fn new(total: Duration, options: Option<RequestOptions>) -> Timeouts {
        let opts = options.unwrap_or_default();
        let cap = |asked: Option<Duration>| asked.map_or(total, |d| d.min(total));
        Timeouts {
            total,
            connect: cap(opts.connect_timeout),
            first_byte: cap(opts.first_byte_timeout),
            between_bytes: cap(opts.between_bytes_timeout),
        }
    }
}

/// A failed step: the code for the guest and the reason for the audit log.
struct Failure {
    code: HttpError,
    why: String,
}

impl Failure {
    fn new(code: HttpError, why: impl Into<String>) -> Failure {
        Failure {
            code,
            why: why.into(),
        }
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tracing::instrument(
    name = "plugin.http.send",
    skip_all,
    fields(
        plugin = %ticket.call.plugin,
        invocation = %ticket.call.invocation,
        method = %ticket.verb,
        url = %ticket.target,
        outcome = tracing::field::Empty,
    )
)]
async fn send(
    policy: Option<Arc<HttpPolicy>>,
    ticket: AuditTicket,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> SendResult {
    let Some(policy) = policy else {
        ticket.record(false, "the manifest grants no http");
        return Err(HttpError::HttpRequestDenied);
    };
    let target = match Target::from_uri(request.uri()) {
        Ok(t) => t,
        Err(why) => {
            ticket.record(false, &why);
            return Err(HttpError::HttpRequestUriInvalid);
        }
    };
    let explicit = match policy.authorize(&target) {
        Ok(e) => e,
        Err(why) => {
            ticket.record(false, &why);
            return Err(HttpError::HttpRequestDenied);
        }
    };
    let timeouts = Timeouts::new(policy.timeout, options);
    let deadline = Instant::now() + timeouts.total;
    let addrs = match resolve(&target, timeouts.connect).await {
        Ok(a) => a,
        Err(f) => {
            ticket.record(true, &format!("error: {}", f.why));
            return Err(f.code);
        }
    };
    if let Err((ip, class)) = policy.check_addrs(&explicit, &addrs) {
        let why = match (&target.host, class) {
            (Host::Name(_), _) => format!("resolves to {class} address {ip}"),
            (Host::Ip(_), AddrClass::CloudMetadata) => format!(
                "{class} address {ip} is reachable only through an allow pattern naming it literally"
            ),
            (Host::Ip(_), _) => format!(
                "{class} address {ip} is not granted (name it literally in allow, or list it in private_networks)"
            ),
        };
        ticket.record(false, &why);
        return Err(HttpError::DestinationIpProhibited);
    }
    let head = request.method() == http::Method::HEAD;
    let work = async {
        let stream = connect(&target, &addrs, timeouts.connect).await?;
        exchange(stream, request, timeouts).await
    };
    let (response, io) = match tokio::time::timeout_at(deadline, work).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(f)) => {
            ticket.record(true, &format!("error: {}", f.why));
            return Err(f.code);
        }
        Err(_) => {
            ticket.record(
                true,
                &format!("error: timed out after {} ms", ms(timeouts.total)),
            );
            return Err(HttpError::HttpResponseTimeout);
        }
    };
    let (parts, incoming) = response.into_parts();
    let status = parts.status;
    let limit = policy.max_response_bytes;
    let announced = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let has_body = !head
        && !status.is_informational()
        && status != http::StatusCode::NO_CONTENT
        && status != http::StatusCode::NOT_MODIFIED;
    if let Some(len) = announced.filter(|&len| has_body && len > limit) {
        ticket.record(
            true,
            &format!(
                "error: {} response announces a body of {len} bytes, over the limit of {limit} bytes",
                status.as_u16()
            ),
        );
        return Err(HttpError::HttpResponseBodySize(Some(len)));
    }
    let body = LimitedBody {
        inner: incoming,
        status: status.as_u16(),
        limit,
        seen: 0,
        deadline: Box::pin(tokio::time::sleep_until(deadline)),
        idle: Box::pin(tokio::time::sleep(timeouts.between_bytes)),
        timeouts,
        ticket: Some(ticket),
    };
    Ok((http::Response::from_parts(parts, body.boxed_unsync()), io))
}

/// Resolves the target's host once; IP literals are taken as they are.
async fn resolve(target: &Target, timeout: Duration) -> Result<Vec<IpAddr>, Failure> {
    let name = match &target.host {
        Host::Ip(ip) => return Ok(vec![*ip]),
        Host::Name(name) => name,
    };
    let lookup = tokio::net::lookup_host((name.as_str(), target.port));
    match tokio::time::timeout(timeout, lookup).await {
        Err(_) => Err(Failure::new(
            HttpError::DnsTimeout,
            format!("resolving {name} timed out after {} ms", ms(timeout)),
        )),
        Ok(Err(e)) => Err(Failure::new(
            HttpError::DnsError {
                rcode: Some(e.to_string()),
                info_code: None,
            },
            format!("resolving {name}: {e}"),
        )),
        Ok(Ok(addrs)) => {
            let mut ips: Vec<IpAddr> = Vec::new();
            for a in addrs {
                let ip = a.ip().to_canonical();
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
            if ips.is_empty() {
                return Err(Failure::new(
                    HttpError::DestinationNotFound,
                    format!("{name} has no addresses"),
                ));
            }
            Ok(ips)
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T> Io for T where T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}

/// Connects to one of the checked addresses, then TLS on the host name.
async fn connect(
    target: &Target,
    addrs: &[IpAddr],
    timeout: Duration,
) -> Result<Box<dyn Io>, Failure> {
    let tcp = async {
        let mut last = None;
        for &ip in addrs {
            let addr = SocketAddr::new(ip, target.port);
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some((addr, e)),
            }
        }
        Err(last)
    };
    let tcp = match tokio::time::timeout(timeout, tcp).await {
        Ok(Ok(s)) => s,
        Ok(Err(Some((addr, e)))) => {
            let why = format!("connecting to {addr}: {e}");
            let code = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
                std::io::ErrorKind::TimedOut => HttpError::ConnectionTimeout,
                _ => HttpError::Connect(e),
            };
            return Err(Failure::new(code, why));
        }
        Ok(Err(None)) => {
            return Err(Failure::new(
                HttpError::DestinationNotFound,
                "no address to connect to",
            ));
        }
        Err(_) => {
            return Err(Failure::new(
                HttpError::ConnectionTimeout,
                format!("connecting timed out after {} ms", ms(timeout)),
            ));
        }
    };
    if !target.https {
        return Ok(Box::new(tcp));
    }
    let name = match &target.host {
        Host::Ip(ip) => rustls::pki_types::ServerName::from(*ip),
        Host::Name(n) => rustls::pki_types::ServerName::try_from(n.clone()).map_err(|e| {
            Failure::new(
                HttpError::InvalidDnsNameError(e),
                format!("`{n}` is not a valid TLS server name"),
            )
        })?,
    };
    match tokio::time::timeout(timeout, tls_connector().connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(Box::new(s)),
        Ok(Err(e)) => {
            let why = format!("TLS with {}: {e}", target.host);
            let certificate = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
            let code = if certificate {
                HttpError::TlsCertificateError
            } else {
                HttpError::Tls(e)
            };
            Err(Failure::new(code, why))
        }
        Err(_) => Err(Failure::new(
            HttpError::ConnectionTimeout,
            format!("TLS handshake timed out after {} ms", ms(timeout)),
        )),
    }
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    });
    tokio_rustls::TlsConnector::from(config.clone())
}

/// HTTP/1.1 over the connected stream: sends the request and waits for the
/// response head while driving the connection. Returns the response and the
/// connection's remaining I/O.
async fn exchange(
    stream: Box<dyn Io>,
    mut request: http::Request<WasiBody>,
    timeouts: Timeouts,
) -> Result<(http::Response<Incoming>, IoFuture), Failure> {
    let handshake = hyper::client::conn::http1::Builder::new()
        .handshake(wasmtime_wasi_http::io::TokioIo::new(stream));
    let (mut sender, conn) = match tokio::time::timeout(timeouts.connect, handshake).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            let why = format!("HTTP handshake: {e}");
            return Err(Failure::new(HttpError::Hyper(e), why));
        }
        Err(_) => {
            return Err(Failure::new(
                HttpError::ConnectionTimeout,
                format!("HTTP handshake timed out after {} ms", ms(timeouts.connect)),
            ));
        }
    };
    // The request line carries only the path: scheme and authority were for
    // us (the Host header is already set).
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|e| Failure::new(HttpError::HttpRequestUriInvalid, e.to_string()))?;

    let first_byte = timeouts.first_byte;
    let mut send = pin!(async move {
        match tokio::time::timeout(first_byte, sender.send_request(request)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                let why = format!("sending the request: {e}");
                Err(Failure::new(HttpError::Hyper(e), why))
            }
            Err(_) => Err(Failure::new(
                HttpError::ConnectionReadTimeout,
                format!("no response within {} ms", ms(first_byte)),
            )),
        }
    });
    let mut conn = Some(conn);
    let response = poll_fn(|cx: &mut Context<'_>| match send.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(r),
        Poll::Pending => {
            let Some(c) = conn.as_mut() else {
                return Poll::Pending;
            };
            let done = ready!(Pin::new(c).poll(cx));
            conn = None;
            match done {
                Ok(()) => send.as_mut().poll(cx),
                Err(e) => {
                    let why = format!("connection: {e}");
                    Poll::Ready(Err(Failure::new(HttpError::Hyper(e), why)))
                }
            }
        }
    })
    .await?;
    let io: IoFuture = Box::new(async move {
        let Some(conn) = conn else { return Ok(()) };
        conn.await.map_err(|e| {
            if e.is_timeout() {
                HttpError::HttpResponseTimeout
            } else {
                HttpError::Hyper(e)
            }
        })
    });
    Ok((response, io))
}

/// The response body as the guest reads it: counts bytes against the limit,
/// enforces the deadline and the between-bytes timeout, and writes the
/// request's audit record once the outcome is known.
struct LimitedBody {
    inner: Incoming,
    status: u16,
    limit: u64,
    seen: u64,
    deadline: Pin<Box<Sleep>>,
    idle: Pin<Box<Sleep>>,
    timeouts: Timeouts,
    /// Present until the record is written.
    ticket: Option<AuditTicket>,
}

impl LimitedBody {
    fn finish(&mut self, allowed: bool, outcome: String) {
        if let Some(t) = self.ticket.take() {
            t.record(allowed, &outcome);
        }
    }

    fn fail(
        &mut self,
        code: HttpError,
        why: String,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let outcome = format!("error: {} response: {why}", self.status);
        self.finish(true, outcome);
        Poll::Ready(Some(Err(code)))
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        if this.ticket.is_none() {
            // Finished (or failed): nothing more comes.
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        let why = format!(
                            "body exceeds the limit of {} bytes (max_response_bytes)",
                            this.limit
                        );
                        return this.fail(HttpError::HttpResponseBodySize(Some(this.seen)), why);
                    }
                }
                let next = Instant::now() + this.timeouts.between_bytes;
                this.idle.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let why = format!("reading the body after {} bytes: {e}", this.seen);
                let code = if e.is_timeout() {
                    HttpError::HttpResponseTimeout
                } else {
                    HttpError::Hyper(e)
                };
                this.fail(code, why)
            }
            Poll::Ready(None) => {
                let outcome = format!("ok: {}, {} bytes", this.status, this.seen);
                this.finish(true, outcome);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    let why = format!(
                        "timed out after {} ms ({} bytes read)",
                        ms(this.timeouts.total),
                        this.seen
                    );
                    return this.fail(HttpError::HttpResponseTimeout, why);
                }
                if this.idle.as_mut().poll(cx).is_ready() {
                    let why = format!(
                        "no body data for {} ms ({} bytes read)",
                        ms(this.timeouts.between_bytes),
                        this.seen
                    );
                    return this.fail(HttpError::ConnectionReadTimeout, why);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ticket.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LimitedBody {
    fn drop(&mut self) {
        let outcome = if self.inner.is_end_stream() {
            format!("ok: {}, {} bytes", self.status, self.seen)
        } else {
            format!(
                "ok: {}, {} bytes read before the plugin dropped the body",
                self.status, self.seen
            )
        };
        self.finish(true, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(allow: &[&str]) -> HttpGrant {
        HttpGrant {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            private_networks: vec![],
            max_response_bytes: None,
            timeout_ms: None,
        }
    }

    fn policy(allow: &[&str]) -> HttpPolicy {
        HttpPolicy::new(&grant(allow)).unwrap()
    }

    fn target(url: &str) -> Target {
        Target::from_uri(&url.parse().unwrap()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn patterns_parse() {
        let p = Pattern::parse("https://api.slack.com").unwrap();
        assert_eq!(
            (p.https, &p.host, p.port),
            (true, &HostPattern::Name("api.slack.com".into()), Some(443))
        );
        let p = Pattern::parse("HTTP://API.Example.COM./").unwrap();
        assert_eq!(
            (p.https, &p.host, p.port),
            (
                false,
                &HostPattern::Name("api.example.com".into()),
                Some(80)
            )
        );
        let p = Pattern::parse("https://*.example.com:8443").unwrap();
        assert_eq!(
            (&p.host, p.port),
            (&HostPattern::Subdomains("example.com".into()), Some(8443))
        );
        let p = Pattern::parse("http://127.0.0.1:*").unwrap();
        assert_eq!((&p.host, p.port), (&HostPattern::Ip(ip("127.0.0.1")), None));
        let p = Pattern::parse("http://[::1]:8080").unwrap();
        assert_eq!((&p.host, p.port), (&HostPattern::Ip(ip("::1")), Some(8080)));
        // IPv4-mapped literals are the IPv4 address.
        let p = Pattern::parse("http://[::ffff:10.0.0.1]").unwrap();
        assert_eq!(p.host, HostPattern::Ip(ip("10.0.0.1")));
        assert_eq!(Pattern::parse("https://*").unwrap().host, HostPattern::Any);
        assert_eq!(
            Pattern::parse("http://localhost:*").unwrap().host,
            HostPattern::Name("localhost".into())
        );
    }

    #[test]
    fn bad_patterns_say_why() {
        let cases = [
            ("", "empty pattern"),
            (
                "api.slack.com",
                "missing scheme: write `https://api.slack.com`",
            ),
            ("ftp://files.example.com", "scheme `ftp` is not supported"),
            ("://x.com", "missing scheme"),
            (
                "https://api.example.com/v1",
                "has a path, query or fragment (`/v1`)",
            ),
            (
                "https://api.example.com?x=1",
                "has a path, query or fragment",
            ),
            ("https://user@api.example.com", "user info"),
            ("https://api.example.com:0", "port `0` is not a number"),
            ("https://api.example.com:99999", "port `99999`"),
            ("https://api.example.com:", "port `` is not a number"),
            ("https://api.example.com:+80", "port `+80`"),
            ("https://api.*.com", "`*` may only be the whole host"),
            ("https://*example.com", "`*` may only be the whole host"),
            ("https://*.*.example.com", "`*` may only be the whole host"),
            ("https://*.10.0.0.1", "a wildcard covers DNS names"),
            ("https://", "missing host"),
            ("https://:443", "missing host"),
            ("http://::1", "IPv6 addresses go in brackets"),
            ("http://[::1", "unclosed `[`"),
            ("http://[::1]x", "unexpected `x`"),
            ("http://[nope]", "`nope` is not an IPv6 address"),
            ("http://0.0.0.0", "unspecified"),
            ("http://[::]:80", "unspecified"),
            ("http://127.1", "its last label is numeric"),
            ("http://2130706433", "its last label is numeric"),
            ("http://exa mple.com", "whitespace"),
            ("http://ex!ample.com", "invalid characters"),
            ("http://-bad.example.com", "starts or ends with `-`"),
            ("http://a..b", "empty label"),
        ];
        for (text, expected) in cases {
            let err = Pattern::parse(text).expect_err(text);
            assert!(
                err.contains(expected),
                "`{text}`: `{err}` lacks `{expected}`"
            );
        }
    }

    #[test]
    fn grants_are_validated_precisely() {
        let err = |g: HttpGrant| g.validate().unwrap_err();
        assert!(err(grant(&[])).contains("`allow` is empty"));
        assert_eq!(
            err(grant(&["https://ok.example.com", "gopher://x"])),
            "allow pattern `gopher://x`: scheme `gopher` is not supported (use http or https)"
        );
        let mut g = grant(&["https://ok.example.com"]);
        g.private_networks = vec!["10.1.2.3/8".into()];
        assert_eq!(
            err(g.clone()),
            "private_networks entry `10.1.2.3/8`: has host bits set; did you mean `10.0.0.0/8`?"
        );
        g.private_networks = vec!["0.0.0.0/0".into()];
        assert!(err(g.clone()).contains("too broad"));
        g.private_networks = vec!["::/0".into()];
        assert!(err(g.clone()).contains("too broad"));
        g.private_networks = vec!["ten".into()];
        assert!(err(g.clone()).contains("not a CIDR range"));
        g.private_networks = vec!["10.0.0.0/8".into(), "fc00::/7".into(), "192.168.1.7".into()];
        g.validate().unwrap();

        let mut g = grant(&["https://ok.example.com"]);
        g.max_response_bytes = Some(64 * 1024 * 1024 + 1);
        assert!(err(g.clone()).contains("exceeds the hard cap of 67108864"));
        g.max_response_bytes = Some(0);
        assert!(err(g.clone()).contains("at least 1"));
        g.max_response_bytes = Some(64 * 1024 * 1024);
        g.timeout_ms = Some(0);
        assert!(err(g.clone()).contains("timeout_ms = 0 is outside"));
        g.timeout_ms = Some(1000);
        let p = HttpPolicy::new(&g).unwrap();
        assert_eq!(p.max_response_bytes(), MAX_RESPONSE_BYTES_CAP);
        assert_eq!(p.timeout(), Duration::from_secs(1));
        let p = policy(&["https://ok.example.com"]);
        assert_eq!(p.max_response_bytes(), DEFAULT_MAX_RESPONSE_BYTES);
        assert_eq!(p.timeout(), Duration::from_millis(DEFAULT_TIMEOUT_MS));
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

    #[test]
    fn allowlist_matching() {
        let p = policy(&[
            "https://api.slack.com",
            "https://*.example.com:8443",
            "http://127.0.0.1:*",
            "http://[::1]:9000",
        ]);
        let ok = |url: &str| p.authorize(&target(url)).is_ok();
        assert!(ok("https://api.slack.com/api/chat.postMessage?x=1"));
        assert!(ok("https://API.Slack.com./"));
        assert!(ok("https://api.slack.com:443/"));
        assert!(ok("https://a.example.com:8443/"));
        assert!(ok("https://a.b.example.com:8443/"));
        assert!(ok("http://127.0.0.1:1/"));
        assert!(ok("http://127.0.0.1:65535/"));
        assert!(ok("http://[::1]:9000/"));
        assert!(
            ok("http://[::ffff:127.0.0.1]:80/"),
            "mapped literal is the IPv4 address"
        );

        let why = |url: &str| p.authorize(&target(url)).unwrap_err();
        assert_eq!(why("https://slack.com/"), "host not in allowlist");
        assert_eq!(why("https://evil-api.slack.com/"), "host not in allowlist");
        assert_eq!(
            why("https://example.com:8443/"),
            "host not in allowlist",
            "`*.` is subdomains only"
        );
        assert_eq!(why("https://badexample.com:8443/"), "host not in allowlist");
        assert_eq!(why("https://127.0.0.2/"), "host not in allowlist");
        assert_eq!(
            why("http://api.slack.com/"),
            "scheme http not allowed for this host (granted: https://api.slack.com)"
        );
        assert_eq!(
            why("https://api.slack.com:8443/"),
            "port 8443 not allowed for this host (granted: https://api.slack.com)"
        );
        assert_eq!(
            why("https://a.example.com/"),
            "port 443 not allowed for this host (granted: https://*.example.com:8443)"
        );
        assert_eq!(
            why("https://127.0.0.1:80/"),
            "scheme https not allowed for this host (granted: http://127.0.0.1:*)"
        );
        assert_eq!(
            why("http://[::1]:9001/"),
            "port 9001 not allowed for this host (granted: http://[::1]:9000)"
        );

        let any = policy(&["https://*"]);
        assert!(any.authorize(&target("https://anything.example/")).is_ok());
        assert!(any.authorize(&target("https://10.0.0.1/")).is_ok());
        assert!(any.authorize(&target("http://anything.example/")).is_err());
    }

    #[test]
    fn targets_and_audit_targets() {
        assert_eq!(
            target("http://[::ffff:169.254.169.254]:8080/x"),
            Target {
                https: false,
                host: Host::Ip(ip("169.254.169.254")),
                port: 8080
            }
        );
        assert_eq!(
            target("https://Example.COM./").host,
            Host::Name("example.com".into())
        );
        assert_eq!(target("https://example.com").port, 443);
        assert!(Target::from_uri(&"/relative".parse().unwrap()).is_err());
        assert!(Target::from_uri(&"http://example.com:0/".parse().unwrap()).is_err());
        let at = |u: &str| audit_target(&u.parse().unwrap());
        assert_eq!(
            at("https://user:pw@hooks.example.com:8443/services/x?token=secret"),
            "https://hooks.example.com:8443/services/x"
        );
        assert_eq!(at("http://127.0.0.1"), "http://127.0.0.1/");
    }

    #[test]
    fn addresses_are_classified() {
        use AddrClass::*;
        let cases: &[(&str, Option<AddrClass>)] = &[
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("2606:4700::1111", None),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("10.1.2.3", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("192.168.1.1", Some(Private)),
            ("fc00::1", Some(Private)),
            ("fd12:3456::1", Some(Private)),
            ("fec0::1", Some(Private)),
            ("169.254.1.1", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("169.254.169.254", Some(CloudMetadata)),
            ("fd00:ec2::254", Some(CloudMetadata)),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("::", Some(Unspecified)),
            ("100.64.0.1", Some(CarrierGradeNat)),
            ("100.127.255.255", Some(CarrierGradeNat)),
            ("224.0.0.1", Some(Multicast)),
            ("ff02::1", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("240.0.0.1", Some(Reserved)),
            ("198.18.0.1", Some(Reserved)),
            ("192.0.2.1", Some(Reserved)),
            ("2001:db8::1", Some(Reserved)),
            // IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms.
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.0.0.1", Some(Private)),
            ("::ffff:169.254.169.254", Some(CloudMetadata)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Loopback)),
            ("::8.8.8.8", Some(Reserved)),
            ("64:ff9b::10.0.0.1", Some(Private)),
            ("64:ff9b::8.8.8.8", None),
            ("2002:a9fe:a9fe::1", Some(CloudMetadata)),
            ("2002:0a00:0001::1", Some(Private)),
            ("2002:0808:0808::1", None),
        ];
        for (addr, expected) in cases {
            assert_eq!(classify(ip(addr)), *expected, "{addr}");
        }
    }

    #[test]
    fn private_addresses_need_an_explicit_grant() {
        let check = |p: &HttpPolicy, url: &str, addrs: &[&str]| {
            let t = target(url);
            let explicit = p.authorize(&t).unwrap();
            let addrs: Vec<IpAddr> = addrs.iter().map(|a| ip(a)).collect();
            p.check_addrs(&explicit, &addrs)
                .map_err(|(ip, class)| format!("{class} {ip}"))
        };
        // A name resolving to a public address is fine; to a private one not.
        let p = policy(&["https://*.example.com", "https://*", "http://localhost:*"]);
        assert_eq!(
            check(&p, "https://api.example.com/", &["93.184.216.34"]),
            Ok(())
        );
        assert_eq!(
            check(&p, "https://api.example.com/", &["10.1.2.3"]),
            Err("private 10.1.2.3".into())
        );
        assert_eq!(
            check(
                &p,
                "https://api.example.com/",
                &["93.184.216.34", "127.0.0.1"]
            ),
            Err("loopback 127.0.0.1".into()),
            "one bad address refuses the request"
        );
        assert_eq!(
            check(&p, "https://api.example.com/", &["::ffff:169.254.169.254"]),
            Err("cloud metadata 169.254.169.254".into())
        );
        // Literal IPs matched only by `*` are not explicit.
        assert_eq!(
            check(&p, "https://127.0.0.1/", &["127.0.0.1"]),
            Err("loopback 127.0.0.1".into())
        );
        // `localhost` named explicitly grants loopback, nothing else.
        assert_eq!(
            check(&p, "http://localhost:8080/", &["127.0.0.1", "::1"]),
            Ok(())
        );
        assert_eq!(
            check(&p, "http://localhost:8080/", &["10.0.0.5"]),
            Err("private 10.0.0.5".into())
        );
        // ... and only for the name `localhost` (another name that resolves
        // to loopback is not covered).
        assert_eq!(
            check(&p, "https://sneaky.example.com/", &["127.0.0.1"]),
            Err("loopback 127.0.0.1".into())
        );

        // A literal IP pattern grants exactly that address.
        let p = policy(&[
            "http://127.0.0.1:*",
            "http://169.254.169.254",
            "http://[fd00::10]:8080",
        ]);
        assert_eq!(check(&p, "http://127.0.0.1:9/", &["127.0.0.1"]), Ok(()));
        assert_eq!(
            check(&p, "http://[::ffff:127.0.0.1]:9/", &["127.0.0.1"]),
            Ok(())
        );
        assert_eq!(
            check(&p, "http://169.254.169.254/", &["169.254.169.254"]),
            Ok(())
        );
        assert_eq!(check(&p, "http://[fd00::10]:8080/", &["fd00::10"]), Ok(()));

        // private_networks lets names resolve into those ranges, never to metadata.
        let mut g = grant(&["https://*.corp.example", "http://*:*"]);
        g.private_networks = vec![
            "10.0.0.0/8".into(),
            "169.254.0.0/16".into(),
            "fd00::/8".into(),
        ];
        let p = HttpPolicy::new(&g).unwrap();
        assert_eq!(
            check(&p, "https://git.corp.example/", &["10.20.30.40"]),
            Ok(())
        );
        assert_eq!(
            check(&p, "https://git.corp.example/", &["::ffff:10.20.30.40"]),
            Ok(())
        );
        assert_eq!(check(&p, "https://git.corp.example/", &["fd00::1"]), Ok(()));
        assert_eq!(
            check(&p, "https://git.corp.example/", &["192.168.0.1"]),
            Err("private 192.168.0.1".into())
        );
        assert_eq!(
            check(&p, "https://git.corp.example/", &["169.254.3.4"]),
            Ok(())
        );
        assert_eq!(
            check(&p, "https://git.corp.example/", &["169.254.169.254"]),
            Err("cloud metadata 169.254.169.254".into())
        );
        assert_eq!(
            check(&p, "http://[fd00:ec2::254]/", &["fd00:ec2::254"]),
            Err("cloud metadata fd00:ec2::254".into())
        );
        assert_eq!(check(&p, "http://10.9.9.9:81/", &["10.9.9.9"]), Ok(()));
    }

    #[test]
    fn guest_timeouts_are_capped_by_the_grant() {
        let total = Duration::from_secs(2);
        let t = Timeouts::new(total, None);
        assert_eq!(
            (t.connect, t.first_byte, t.between_bytes),
            (total, total, total)
        );
        let t = Timeouts::new(
            total,
            Some(RequestOptions {
                connect_timeout: Some(Duration::from_millis(100)),
                first_byte_timeout: Some(Duration::from_secs(600)),
                between_bytes_timeout: None,
            }),
        );
        assert_eq!(t.connect, Duration::from_millis(100));
        assert_eq!(t.first_byte, total);
        assert_eq!(t.between_bytes, total);
    }
}
