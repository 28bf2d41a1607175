//! Probes TCP services through the `tcp` capability (`[grants.tcp]`). For
//! each target in the `targets` setting:
//!
//! - `redis://host:port`: sends `PING`, expects `+PONG`;
//! - `mysql://host:port`: reads the server's handshake packet, expects
//!   protocol version 10 and reports the server version (MySQL and MariaDB);
//! - `tcp://host:port`: the connect alone.
//!
//! Families, labelled by `target`: `probe_success`, `probe_duration_seconds`
//! (the whole probe), `probe_tcp_duration_seconds{phase}` (`resolve`,
//! `connect`, `exchange`), and `probe_server_info{version}` (1, where the
//! protocol tells the version). A target outside the grant is denied by the
//! host (and audited) and reported as `probe_success 0`.

use std::time::{Duration, Instant};

use capstan_sdk::metrics_source::{MetricFamily, MetricType, MetricsSource, Sample};
use capstan_sdk::tcp::{self, Timings};
use capstan_sdk::{Error, config, log};

struct TcpProbe;

/// A parsed target.
#[derive(Debug, PartialEq)]
struct Target<'a> {
    kind: &'a str,
    host: &'a str,
    port: u16,
}

fn parse_target(t: &str) -> Result<Target<'_>, Error> {
    let bad = |why: &str| Error::InvalidInput(format!("target `{t}`: {why}"));
    let (kind, rest) = t
        .split_once("://")
        .ok_or_else(|| bad("expected kind://host:port"))?;
    if !["redis", "mysql", "tcp"].contains(&kind) {
        return Err(bad("kind must be redis, mysql or tcp"));
    }
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port = port.parse().map_err(|_| bad("bad port"))?;
    Ok(Target { kind, host, port })
}

/// What one probe found: timings, the server version if told, or the error.
struct Found {
    timings: Timings,
    exchange: Duration,
    version: Option<String>,
}

fn probe(t: &Target<'_>, timeout: Duration) -> Result<Found, Error> {
    let mut conn = tcp::connect(t.host, t.port, timeout)?;
    let timings = conn.timings();
    let started = Instant::now();
    let version = match t.kind {
        "redis" => {
            conn.write_all(b"PING\r\n")?;
            let reply = conn.read_until(|b| b.ends_with(b"\r\n"), 512)?;
            if reply != b"+PONG\r\n" {
                return Err(Error::Failed(format!(
                    "redis answered {:?}",
                    String::from_utf8_lossy(&reply).trim_end()
                )));
            }
            None
        }
        "mysql" => Some(mysql_handshake(
            &conn.read_until(packet_complete, 1 << 16)?,
        )?),
        _ => None,
    };
    Ok(Found {
        timings,
        exchange: started.elapsed(),
        version,
    })
}

/// Whether `b` holds a whole MySQL packet (3-byte length, sequence, payload).
fn packet_complete(b: &[u8]) -> bool {
    b.len() >= 4
        && b.len() >= 4 + (usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16)
}

/// The server version of an initial handshake packet (protocol 10).
fn mysql_handshake(packet: &[u8]) -> Result<String, Error> {
    if !packet_complete(packet) {
        return Err(Error::Failed(
            "mysql: connection closed before the handshake".into(),
        ));
    }
    let payload = &packet[4..];
    match payload.first() {
        Some(10) => {
            let end = payload[1..]
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(payload.len() - 1);
            Ok(String::from_utf8_lossy(&payload[1..1 + end]).into_owned())
        }
        Some(0xff) => {
            let msg = payload.get(3..).unwrap_or_default();
            Err(Error::Failed(format!(
                "mysql refused: {}",
                String::from_utf8_lossy(msg)
            )))
        }
        other => Err(Error::Failed(format!(
            "mysql: unexpected protocol version {other:?}"
        ))),
    }
}

fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
    Sample {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        value,
    }
}

fn gauge(name: &str, help: &str, samples: Vec<Sample>) -> MetricFamily {
    MetricFamily {
        name: name.into(),
        help: help.into(),
        kind: MetricType::Gauge,
        samples,
    }
}

impl MetricsSource for TcpProbe {
    fn collect() -> Result<Vec<MetricFamily>, Error> {
        let targets = config::get_or("targets", "");
        let timeout = config::get_or("timeout_ms", "2000")
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| Error::InvalidInput("timeout_ms must be a number".into()))?;
        let (mut success, mut total, mut phases, mut info) = (vec![], vec![], vec![], vec![]);
        for text in targets.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let target = parse_target(text)?;
            let started = Instant::now();
            let result = probe(&target, timeout);
            let l = [("target", text)];
            total.push(sample(&l, started.elapsed().as_secs_f64()));
            match result {
                Ok(f) => {
                    success.push(sample(&l, 1.0));
                    for (phase, d) in [
                        ("resolve", f.timings.resolve),
                        ("connect", f.timings.connect),
                        ("exchange", f.exchange),
                    ] {
                        phases.push(sample(
                            &[("target", text), ("phase", phase)],
                            d.as_secs_f64(),
                        ));
                    }
                    if let Some(v) = f.version {
                        info.push(sample(&[("target", text), ("version", &v)], 1.0));
                    }
                }
                Err(e) => {
                    log::warn(&format!("probe of {text} failed: {e:?}"));
                    success.push(sample(&l, 0.0));
                }
            }
        }
        Ok(vec![
            gauge("probe_success", "Whether the probe succeeded", success),
            gauge("probe_duration_seconds", "How long the probe took", total),
            gauge(
                "probe_tcp_duration_seconds",
                "Duration of the probe by phase",
                phases,
            ),
            gauge(
                "probe_server_info",
                "The server's version, as its handshake tells it",
                info,
            ),
        ])
    }
}

capstan_sdk::export_metrics_source!(TcpProbe);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            parse_target("redis://127.0.0.1:6379").unwrap(),
            Target {
                kind: "redis",
                host: "127.0.0.1",
                port: 6379
            }
        );
        assert!(parse_target("ftp://x:1").is_err());
        assert!(parse_target("redis://x").is_err());
    }

    #[test]
    fn mysql_handshakes_are_read() {
        let mut p = vec![0, 0, 0, 0, 10];
        p.extend(b"11.8.3-MariaDB\0rest");
        p[0] = (p.len() - 4) as u8;
        assert_eq!(mysql_handshake(&p).unwrap(), "11.8.3-MariaDB");
        let mut e = vec![0, 0, 0, 0, 0xff, 0x6a, 0x04];
        e.extend(b"Host is not allowed");
        e[0] = (e.len() - 4) as u8;
        let err = format!("{:?}", mysql_handshake(&e).unwrap_err());
        assert!(err.contains("not allowed"), "{err}");
        assert!(mysql_handshake(&[1, 0]).is_err());
    }
}
