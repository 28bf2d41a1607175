//! `[grants.http]` compiled: allow patterns, private ranges and limits, and the
//! matching of a request's target against them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;

use super::address::{AddrClass, classify};
use super::{
    DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_TIMEOUT_MS, HttpGrant, MAX_RESPONSE_BYTES_CAP,
    MAX_TIMEOUT_MS,
};

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
    pub(super) fn authorize(&self, target: &Target) -> Result<Explicit, String> {
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
    pub(super) fn check_addrs(
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

/// Whether everything the allow pattern `inner` admits is admitted by the
/// pattern `outer` (for grant ceilings). Both must parse.
pub fn pattern_covers(outer: &str, inner: &str) -> Result<bool, String> {
    let o = Pattern::parse(outer).map_err(|e| format!("pattern `{outer}`: {e}"))?;
    let i = Pattern::parse(inner).map_err(|e| format!("pattern `{inner}`: {e}"))?;
    let port = o.port.is_none() || o.port == i.port;
    let host = match (&o.host, &i.host) {
        (HostPattern::Any, _) => true,
        (HostPattern::Subdomains(s), HostPattern::Subdomains(t)) => {
            t == s || HostPattern::Subdomains(s.clone()).matches(&Host::Name(t.clone()))
        }
        (o, HostPattern::Name(n)) => o.matches(&Host::Name(n.clone())),
        (o, HostPattern::Ip(ip)) => o.matches(&Host::Ip(*ip)),
        _ => false,
    };
    Ok(o.https == i.https && port && host)
}

/// Whether the `private_networks` entry `inner` lies inside `outer`.
pub fn network_covers(outer: &str, inner: &str) -> Result<bool, String> {
    let o = parse_network(outer).map_err(|e| format!("network `{outer}`: {e}"))?;
    let i = parse_network(inner).map_err(|e| format!("network `{inner}`: {e}"))?;
    Ok(o.contains(&i))
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
pub(super) struct Explicit {
    /// IP literals named in the patterns.
    ips: Vec<IpAddr>,
    /// A pattern names `localhost`: loopback addresses are fine.
    loopback: bool,
}

/// A request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Host {
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
pub(super) struct Target {
    pub(super) https: bool,
    pub(super) host: Host,
    pub(super) port: u16,
}

impl Target {
    pub(super) fn from_uri(uri: &http::Uri) -> Result<Target, String> {
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
pub(super) fn audit_target(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("https");
    let host = uri.host().unwrap_or_default();
    let port = uri.port().map(|p| format!(":{p}")).unwrap_or_default();
    let path = match uri.path() {
        "" => "/",
        p => p,
    };
    format!("{scheme}://{host}{port}{path}")
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
}
