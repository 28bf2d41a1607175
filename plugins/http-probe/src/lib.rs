//! A blackbox-style HTTP prober: for each URL in its `targets` setting it
//! sends one request (redirects are not followed) and reports, labelled by
//! `target`, as blackbox_exporter does:
//!
//! - `probe_success`: 1 if the request completed, the status is valid
//!   (`valid_status`, default `2xx`) and the body matches `body_regex` (if set);
//! - `probe_http_status_code` (0 when no response came);
//! - `probe_duration_seconds`: the whole probe;
//! - `probe_http_duration_seconds{phase}`: `processing` (request sent to
//!   response headers: resolving, connecting and TLS happen inside the
//!   host's `wasi:http`, so they are part of it and cannot be told apart by
//!   the guest) and `transfer` (reading the body);
//! - `probe_http_content_length` (body bytes read), `probe_http_ssl` (1 when
//!   an https request completed), `probe_failed_due_to_regex`.
//!
//! - `probe_ssl_earliest_cert_expiry` (https only): the earliest `notAfter`
//!   (Unix seconds) among the certificates the server presented, which the
//!   host reads in its TLS handshake (`Response::tls_earliest_cert_expiry`).
//!
//! Each target needs `[grants.http]`; a target outside it fails (and the host
//! audits the denial), which is reported as `probe_success 0`.

use std::time::Instant;

use capstan_sdk::metrics_source::{MetricFamily, MetricType, MetricsSource, Sample};
use capstan_sdk::{Error, config, http, log};

struct HttpProbe;

/// What one probe found.
struct Outcome {
    success: bool,
    status: u16,
    total: f64,
    phases: Option<http::Timings>,
    length: usize,
    ssl: bool,
    cert_expiry: Option<u64>,
    regex_failed: bool,
}

fn probe(
    url: &str,
    method: &str,
    valid: &[(u16, u16)],
    body_regex: Option<&regex::Regex>,
) -> Outcome {
    let started = Instant::now();
    let result = http::send_timed(method, url, &[("user-agent", "capstan-http-probe")], &[]);
    let total = started.elapsed().as_secs_f64();
    match result {
        Ok((r, t)) => {
            let status_ok = valid.iter().any(|(lo, hi)| (*lo..=*hi).contains(&r.status));
            let regex_failed = body_regex.is_some_and(|re| !re.is_match(&r.text()));
            Outcome {
                success: status_ok && !regex_failed,
                status: r.status,
                total,
                phases: Some(t),
                length: r.body.len(),
                ssl: url.starts_with("https://"),
                cert_expiry: r.tls_earliest_cert_expiry(),
                regex_failed,
            }
        }
        Err(e) => {
            log::warn(&format!("probe of {url} failed: {e:?}"));
            Outcome {
                success: false,
                status: 0,
                total,
                phases: None,
                length: 0,
                ssl: false,
                cert_expiry: None,
                regex_failed: false,
            }
        }
    }
}

/// `2xx,404` or `200-299` into inclusive ranges.
fn parse_valid(text: &str) -> Result<Vec<(u16, u16)>, Error> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let bad =
                || Error::InvalidInput(format!("valid_status: `{s}` is not a code, range or Nxx"));
            if let Some(c) = s.strip_suffix("xx") {
                let c: u16 = c.parse().map_err(|_| bad())?;
                Ok((c * 100, c * 100 + 99))
            } else if let Some((a, b)) = s.split_once('-') {
                Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
            } else {
                let c = s.parse().map_err(|_| bad())?;
                Ok((c, c))
            }
        })
        .collect()
}

fn gauge(name: &str, help: &str, samples: Vec<Sample>) -> MetricFamily {
    MetricFamily {
        name: name.into(),
        help: help.into(),
        kind: MetricType::Gauge,
        samples,
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

impl MetricsSource for HttpProbe {
    fn collect() -> Result<Vec<MetricFamily>, Error> {
        let targets = config::get_or("targets", "");
        let targets: Vec<&str> = targets
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        let method = config::get_or("method", "GET");
        let valid = parse_valid(&config::get_or("valid_status", "2xx"))?;
        let regex = match config::get_or("body_regex", "").as_str() {
            "" => None,
            re => Some(
                regex::Regex::new(re)
                    .map_err(|e| Error::InvalidInput(format!("body_regex: {e}")))?,
            ),
        };
        let (mut success, mut status, mut total, mut phases, mut length, mut ssl, mut regex_failed) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut expiry = vec![];
        for t in &targets {
            let o = probe(t, &method, &valid, regex.as_ref());
            let l = [("target", *t)];
            success.push(sample(&l, f64::from(u8::from(o.success))));
            status.push(sample(&l, f64::from(o.status)));
            total.push(sample(&l, o.total));
            if let Some(p) = o.phases {
                phases.push(sample(
                    &[("target", t), ("phase", "processing")],
                    p.processing.as_secs_f64(),
                ));
                phases.push(sample(
                    &[("target", t), ("phase", "transfer")],
                    p.transfer.as_secs_f64(),
                ));
            }
            length.push(sample(&l, o.length as f64));
            ssl.push(sample(&l, f64::from(u8::from(o.ssl))));
            if let Some(at) = o.cert_expiry {
                expiry.push(sample(&l, at as f64));
            }
            regex_failed.push(sample(&l, f64::from(u8::from(o.regex_failed))));
        }
        Ok(vec![
            gauge(
                "targets",
                "Number of configured probe targets",
                vec![sample(&[], targets.len() as f64)],
            ),
            gauge("probe_success", "Whether the probe succeeded", success),
            gauge(
                "probe_http_status_code",
                "Response status code (0: no response)",
                status,
            ),
            gauge("probe_duration_seconds", "How long the probe took", total),
            gauge(
                "probe_http_duration_seconds",
                "Duration of the request by phase (processing includes resolve, connect and TLS, done by the host)",
                phases,
            ),
            gauge("probe_http_content_length", "Body bytes read", length),
            gauge(
                "probe_http_ssl",
                "Whether the completed request used TLS",
                ssl,
            ),
            gauge(
                "probe_ssl_earliest_cert_expiry",
                "Earliest expiry (Unix seconds) among the certificates the https server presented",
                expiry,
            ),
            gauge(
                "probe_failed_due_to_regex",
                "Whether the body did not match body_regex",
                regex_failed,
            ),
        ])
    }
}

capstan_sdk::export_metrics_source!(HttpProbe);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_status_parses() {
        assert_eq!(
            parse_valid("2xx, 404").unwrap(),
            vec![(200, 299), (404, 404)]
        );
        assert_eq!(parse_valid("200-204").unwrap(), vec![(200, 204)]);
        assert!(parse_valid("abc").is_err());
    }
}
