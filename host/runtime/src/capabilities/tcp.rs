//! Outbound TCP through `wasi:sockets`, checked against `[grants.tcp]`.
//!
//! ```toml
//! [grants.tcp]
//! connect = [
//!     "redis.internal:6379",   # a name: the host resolves it and checks each address
//!     "10.0.0.0/8:3306",       # a CIDR range (explicit, so private addresses are fine)
//!     "127.0.0.1:6379",        # an address literal ([::1]:6379 for IPv6)
//!     "localhost:*",           # `localhost`: loopback addresses, any port
//! ]
//! private_networks = ["10.20.0.0/16"]   # private ranges that *names* may resolve into
//! ```
//!
//! Without the grant a plugin has no sockets at all. With it, the guest may
//! resolve names (`wasi:sockets/ip-name-lookup`) and open TCP connections;
//! binding other than the implicit bind of a connect, listening, accepting
//! and UDP stay refused. The guest connects to an IP address, so each
//! connect is checked by address, deny first:
//! - an entry whose host is that literal address, or a range holding it,
//!   with a matching port, allows it (cloud-metadata addresses only by a
//!   literal entry, never by a range);
//! - an entry naming a host is resolved by the host at connect time; the
//!   address must be one of its addresses and, as for HTTP, public, or
//!   loopback for `localhost`, or inside `private_networks` (never metadata).
//!
//! Every connect, allowed or denied, leaves an audit record (capability
//! `tcp`, verb `connect`, target `ip:port`). Every socket operation runs
//! inside the invocation and so ends at its deadline at the latest.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use wasmtime_wasi::sockets::SocketAddrUse;

use super::http::address::{AddrClass, classify};

/// `[grants.tcp]`: where the plugin may connect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpGrant {
    /// `host:port` entries: a name, an address literal or a CIDR range, and
    /// a port or `*`.
    #[serde(default)]
    pub connect: Vec<String>,
    /// Private ranges that granted names may resolve into.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private_networks: Vec<String>,
}

impl TcpGrant {
    /// Checks every entry parses.
    pub fn validate(&self) -> Result<(), String> {
        TcpPolicy::new(self).map(|_| ())
    }
}

/// The host part of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Name(String),
    Ip(IpAddr),
    Net(IpNet),
}

/// One parsed `connect` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    target: Target,
    /// `None` for `*`.
    port: Option<u16>,
}

impl Entry {
    /// Parses `host:port`, `[v6]:port`, `a.b.c.d/n:port`, `[v6/n]:port`.
    pub fn parse(text: &str) -> Result<Entry, String> {
        let err = |why: &str| format!("`{text}`: {why}");
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| err("expected host:port (port a number or `*`)"))?;
        let port = match port {
            "*" => None,
            p => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| err("port must be 1-65535 or `*`"))?,
            ),
        };
        let host = match host.strip_prefix('[') {
            Some(h) => h.strip_suffix(']').ok_or_else(|| err("unclosed `[`"))?,
            None if host.contains(':') => return Err(err("write IPv6 addresses in brackets")),
            None => host,
        };
        let target = if host.contains('/') {
            let net: IpNet = host.parse().map_err(|_| err("not a CIDR range"))?;
            if net.trunc() != net {
                return Err(err(&format!(
                    "has host bits set; did you mean `{}`?",
                    net.trunc()
                )));
            }
            let min = if matches!(net, IpNet::V4(_)) { 8 } else { 16 };
            if net.prefix_len() < min {
                return Err(err(&format!("range broader than /{min}")));
            }
            Target::Net(net)
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            Target::Ip(ip.to_canonical())
        } else {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            let ok = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                return Err(err("not a host name, address or range (no wildcards)"));
            }
            Target::Name(name)
        };
        Ok(Entry { target, port })
    }

    fn port_matches(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }
}

/// Whether the grant entry `outer` admits everything `inner` does (for
/// grant ceilings). Both must parse.
pub fn entry_covers(outer: &str, inner: &str) -> Result<bool, String> {
    let o = Entry::parse(outer)?;
    let i = Entry::parse(inner)?;
    let port = o.port.is_none() || o.port == i.port;
    let host = match (&o.target, &i.target) {
        (Target::Net(n), Target::Net(m)) => n.contains(m),
        (Target::Net(n), Target::Ip(ip)) => n.contains(ip),
        (a, b) => a == b,
    };
    Ok(port && host)
}

/// A validated grant.
#[derive(Debug)]
pub struct TcpPolicy {
    entries: Vec<Entry>,
    private_networks: Vec<IpNet>,
}

impl TcpPolicy {
    /// Parses a grant.
    pub fn new(grant: &TcpGrant) -> Result<TcpPolicy, String> {
        if grant.connect.is_empty() {
            return Err("connect lists no host:port".into());
        }
        let entries = grant
            .connect
            .iter()
            .map(|e| Entry::parse(e))
            .collect::<Result<_, _>>()?;
        let private_networks = grant
            .private_networks
            .iter()
            .map(|n| {
                n.parse::<IpNet>()
                    .map_err(|_| format!("private network `{n}` is not a CIDR range"))
            })
            .collect::<Result<_, _>>()?;
        Ok(TcpPolicy {
            entries,
            private_networks,
        })
    }

    /// Checks a connect to `addr`: `Ok` or the reason for the refusal.
    pub async fn check(&self, addr: SocketAddr) -> Result<(), String> {
        let ip = addr.ip().to_canonical();
        let port = addr.port();
        let class = classify(ip);
        for e in self.entries.iter().filter(|e| e.port_matches(port)) {
            match &e.target {
                Target::Ip(granted) if *granted == ip => return Ok(()),
                Target::Net(net)
                    if net.contains(&ip) && class != Some(AddrClass::CloudMetadata) =>
                {
                    return Ok(());
                }
                _ => {}
            }
        }
        let mut named = false;
        for e in self.entries.iter().filter(|e| e.port_matches(port)) {
            let Target::Name(name) = &e.target else {
                continue;
            };
            let resolved = match tokio::net::lookup_host((name.as_str(), port)).await {
                Ok(addrs) => addrs.map(|a| a.ip().to_canonical()).collect::<Vec<_>>(),
                Err(_) => continue,
            };
            if !resolved.contains(&ip) {
                continue;
            }
            named = true;
            let allowed = match class {
                None => true,
                Some(AddrClass::Loopback) => name == "localhost",
                Some(AddrClass::CloudMetadata) => false,
                Some(_) => self.private_networks.iter().any(|n| n.contains(&ip)),
            };
            if allowed {
                return Ok(());
            }
        }
        Err(match (named, class) {
            (true, Some(c)) => {
                format!("{c} address is not granted (add it to private_networks or name it)")
            }
            _ => "not in [grants.tcp] connect".into(),
        })
    }
}

/// Configures a call's WASI context: sockets only with a tcp grant, and
/// then only connects the policy allows, each audited.
pub fn configure(
    builder: &mut wasmtime_wasi::WasiCtxBuilder,
    policy: Option<Arc<TcpPolicy>>,
    audit: impl Fn(&str, bool, &str) + Send + Sync + 'static,
) {
    let Some(policy) = policy else {
        builder
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        return;
    };
    let audit = Arc::new(audit);
    builder
        .allow_tcp(true)
        .allow_udp(false)
        .allow_ip_name_lookup(true)
        .socket_addr_check(move |addr, usage| {
            let policy = policy.clone();
            let audit = audit.clone();
            Box::pin(async move {
                match usage {
                    // The implicit bind of a connect (wildcard address, any port).
                    SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    SocketAddrUse::TcpConnect => match policy.check(addr).await {
                        Ok(()) => {
                            audit(&addr.to_string(), true, "allowed");
                            true
                        }
                        Err(why) => {
                            audit(&addr.to_string(), false, &why);
                            false
                        }
                    },
                    _ => false,
                }
            })
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(connect: &[&str], private: &[&str]) -> TcpPolicy {
        TcpPolicy::new(&TcpGrant {
            connect: connect.iter().map(|s| s.to_string()).collect(),
            private_networks: private.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn entries_parse_or_say_why_not() {
        for ok in [
            "redis.internal:6379",
            "10.0.0.0/8:3306",
            "127.0.0.1:*",
            "[::1]:5432",
            "[fd00::/16]:22",
            "localhost:6379",
        ] {
            Entry::parse(ok).unwrap();
        }
        for bad in [
            "redis.internal",
            "*.example.com:80",
            "0.0.0.0/0:22",
            "10.0.0.1/8:22",
            "::1:22",
            "host:0",
            "host:70000",
            ":80",
        ] {
            assert!(Entry::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn connects_are_checked_by_address() {
        let p = policy(
            &["10.0.0.0/8:3306", "127.0.0.1:6379", "localhost:7000"],
            &[],
        );
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(p.check(a("10.1.2.3:3306")).await.is_ok());
        assert!(p.check(a("10.1.2.3:3307")).await.is_err());
        assert!(p.check(a("127.0.0.1:6379")).await.is_ok());
        assert!(p.check(a("127.0.0.1:6380")).await.is_err());
        assert!(p.check(a("[::ffff:127.0.0.1]:6379")).await.is_ok());
        assert!(
            p.check(a("127.0.0.1:7000")).await.is_ok(),
            "localhost named"
        );
        assert!(p.check(a("192.168.1.1:3306")).await.is_err());
        assert!(p.check(a("169.254.169.254:80")).await.is_err());
        let meta = policy(&["169.254.0.0/16:80"], &[]);
        assert!(
            meta.check(a("169.254.169.254:80")).await.is_err(),
            "metadata needs a literal"
        );
        assert!(meta.check(a("169.254.1.1:80")).await.is_ok());
    }

    #[test]
    fn ceilings_cover_entries() {
        assert!(entry_covers("10.0.0.0/8:*", "10.1.0.0/16:3306").unwrap());
        assert!(entry_covers("10.0.0.0/8:3306", "10.1.2.3:3306").unwrap());
        assert!(!entry_covers("10.0.0.0/8:3306", "10.1.2.3:3307").unwrap());
        assert!(entry_covers("redis.internal:*", "redis.internal:6379").unwrap());
        assert!(!entry_covers("redis.internal:6379", "other.internal:6379").unwrap());
    }
}
