//! Sending a checked request: resolve once, check every address, connect (TLS
//! on the host name), exchange over HTTP/1.1, and a size- and time-limited body.

use std::future::{Future, poll_fn};
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

use super::address::AddrClass;
use super::policy::{Host, HttpPolicy, Target};
use super::{AuditTicket, IoFuture, SendResult};

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

/// The response header through which the host tells the guest the
/// earliest `notAfter` (Unix seconds) among the certificates an https
/// server presented, for probes (blackbox's `probe_ssl_earliest_cert_expiry`).
/// A server's own header of that name never reaches the guest.
pub const TLS_EXPIRY_HEADER: &str = "capstan-tls-earliest-cert-expiry";

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
pub(super) async fn send(
    tls: tokio_rustls::TlsConnector,
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
    let timeouts = Timeouts::new(policy.timeout(), options);
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
        let (stream, expiry) = connect(&tls, &target, &addrs, timeouts.connect).await?;
        let (response, io) = exchange(stream, request, timeouts).await?;
        Ok::<_, Failure>((response, io, expiry))
    };
    let (response, io, expiry) = match tokio::time::timeout_at(deadline, work).await {
        Ok(Ok(done)) => done,
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
    let (mut parts, incoming) = response.into_parts();
    parts.headers.remove(TLS_EXPIRY_HEADER);
    if let Some(not_after) = expiry {
        parts
            .headers
            .insert(TLS_EXPIRY_HEADER, http::HeaderValue::from(not_after));
    }
    let status = parts.status;
    let limit = policy.max_response_bytes();
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

/// Connects to the first checked address that answers, then speaks TLS on
/// the host name for https; also answers the earliest `notAfter` of the
/// server's certificates.
async fn connect(
    tls: &tokio_rustls::TlsConnector,
    target: &Target,
    addrs: &[IpAddr],
    timeout: Duration,
) -> Result<(Box<dyn Io>, Option<u64>), Failure> {
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
        return Ok((Box::new(tcp), None));
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
    match tokio::time::timeout(timeout, tls.connect(name, tcp)).await {
        Ok(Ok(s)) => {
            let expiry = earliest_not_after(s.get_ref().1.peer_certificates());
            Ok((Box::new(s), expiry))
        }
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

/// The earliest `notAfter` (Unix seconds) among `certs`; certificates
/// that do not parse are skipped.
fn earliest_not_after(certs: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> Option<u64> {
    use x509_cert::der::Decode;
    certs?
        .iter()
        .filter_map(|c| x509_cert::Certificate::from_der(c.as_ref()).ok())
        .map(|c| {
            c.tbs_certificate
                .validity
                .not_after
                .to_unix_duration()
                .as_secs()
        })
        .min()
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
