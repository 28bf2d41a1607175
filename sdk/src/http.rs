//! A small blocking HTTP client over `wasi:http`. Every request, including
//! each redirect hop, is checked by the host against `[grants.http]`.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

use crate::Error;

/// How many redirects [`request`] follows.
pub const MAX_REDIRECTS: usize = 5;

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers (names lowercase).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// For an https response: the earliest expiry (`notAfter`, Unix
    /// seconds) among the certificates the server presented. The host
    /// reads them during its TLS handshake and says so in the
    /// [`TLS_EXPIRY_HEADER`] header (a server cannot set it).
    pub fn tls_earliest_cert_expiry(&self) -> Option<u64> {
        self.header(TLS_EXPIRY_HEADER)?.parse().ok()
    }
}

/// The response header in which the host gives the earliest certificate
/// expiry of an https server (see [`Response::tls_earliest_cert_expiry`]).
pub const TLS_EXPIRY_HEADER: &str = "capstan-tls-earliest-cert-expiry";

/// `GET url`, following redirects.
pub fn get(url: &str) -> Result<Response, Error> {
    request("GET", url, &[], &[])
}

/// `POST url` with a JSON body.
pub fn post_json(url: &str, body: &serde_json::Value) -> Result<Response, Error> {
    request(
        "POST",
        url,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// Sends a request and follows up to [`MAX_REDIRECTS`] redirects (a 303
/// turns into a GET without body). Every hop is checked by the host against
/// `[grants.http]`, so a redirect to a target outside the grant fails with
/// [`Error::Denied`]. Credentials (`authorization`, `cookie`) are not sent
/// to another origin than the one they were given for.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, Error> {
    let origin = origin_of(url);
    let mut url = url.to_string();
    let mut method = method.to_string();
    let mut body = body.to_vec();
    for _ in 0..=MAX_REDIRECTS {
        let same_origin = origin_of(&url) == origin;
        let hop_headers: Vec<(&str, &str)> = headers
            .iter()
            .copied()
            .filter(|(k, _)| same_origin || !is_credential(k))
            .collect();
        let response = send_once(&method, &url, &hop_headers, &body)?;
        let location = response.header("location").map(str::to_string);
        match (response.status, location) {
            (301 | 302 | 303 | 307 | 308, Some(next)) => {
                url = resolve(&url, &next);
                if response.status == 303 {
                    method = "GET".into();
                    body.clear();
                }
            }
            _ => return Ok(response),
        }
    }
    Err(Error::Failed(format!(
        "more than {MAX_REDIRECTS} redirects"
    )))
}

fn is_credential(header: &str) -> bool {
    ["authorization", "cookie", "proxy-authorization"]
        .iter()
        .any(|c| c.eq_ignore_ascii_case(header))
}

/// `scheme://authority` of an absolute URL (lowercase).
fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    format!("{}://{}", scheme, authority).to_ascii_lowercase()
}

/// Resolves a `location` header against the URL it came from.
fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    if let Some(network_path) = location.strip_prefix("//") {
        return format!("{scheme}://{network_path}");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    // Relative to the base path's directory.
    let path = rest[authority.len()..]
        .split(['?', '#'])
        .next()
        .unwrap_or_default();
    let dir = match path.rfind('/') {
        Some(i) => &path[..=i],
        None => "/",
    };
    format!("{scheme}://{authority}{dir}{location}")
}

fn send_once(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, Error> {
    send_timed(method, url, headers, body).map(|(r, _)| r)
}

/// How long the parts of one request took, as the guest sees them: the
/// host resolves, connects and negotiates TLS inside `wasi:http`, so those
/// phases are within `processing`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// From sending the request to the response headers (resolve, connect,
    /// TLS and the server's processing).
    pub processing: std::time::Duration,
    /// Reading the response body.
    pub transfer: std::time::Duration,
}

/// Sends one request, without following redirects, and says how long its
/// parts took (for probes).
pub fn send_timed(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(Response, Timings), Error> {
    let started = std::time::Instant::now();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::InvalidInput(format!("`{url}` is not an absolute URL")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let fields = Fields::new();
    for (k, v) in headers {
        fields
            .append(k, v.as_bytes())
            .map_err(|e| Error::InvalidInput(format!("header {k}: {e:?}")))?;
    }
    let req = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_string()),
    };
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    let bad = |what: &str| Error::InvalidInput(format!("invalid {what} in `{url}`"));
    req.set_method(&method).map_err(|()| bad("method"))?;
    req.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
    req.set_authority(Some(authority))
        .map_err(|()| bad("authority"))?;
    req.set_path_with_query(Some(path))
        .map_err(|()| bad("path"))?;
    let outgoing = req
        .body()
        .map_err(|()| Error::Failed("request body unavailable".into()))?;
    if !body.is_empty() {
        let stream = outgoing
            .write()
            .map_err(|()| Error::Failed("request body stream".into()))?;
        for chunk in body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| Error::Failed(format!("writing body: {e:?}")))?;
        }
    }
    let future = outgoing_handler::handle(req, None).map_err(http_error)?;
    OutgoingBody::finish(outgoing, None).map_err(http_error)?;
    future.subscribe().block();
    let processing = started.elapsed();
    let response = future
        .get()
        .ok_or_else(|| Error::Failed("response not ready".into()))?
        .map_err(|()| Error::Failed("response already taken".into()))?
        .map_err(http_error)?;
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let incoming = response
        .consume()
        .map_err(|()| Error::Failed("response body unavailable".into()))?;
    let stream = incoming
        .stream()
        .map_err(|()| Error::Failed("response body stream".into()))?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => return Err(body_error(&e)),
        }
    }
    let transfer = started.elapsed() - processing;
    Ok((
        Response {
            status,
            headers,
            body,
        },
        Timings {
            processing,
            transfer,
        },
    ))
}

fn http_error(e: ErrorCode) -> Error {
    match e {
        ErrorCode::HttpRequestDenied => Error::Denied(
            "the host denied this request: its target is not in [grants.http] (the audit log says why)"
                .into(),
        ),
        ErrorCode::DestinationIpProhibited => Error::Denied(
            "the host denied this request: the destination address is private, loopback, link-local or metadata and not granted (see [grants.http] private_networks)"
                .into(),
        ),
        ErrorCode::HttpResponseBodySize(n) => Error::Failed(format!(
            "response body too large ({} bytes; see [grants.http] max_response_bytes)",
            n.map_or_else(|| "?".to_string(), |n| n.to_string())
        )),
        ErrorCode::TlsCertificateError => Error::Failed(
            "the server's TLS certificate is not trusted or not valid for this host".into(),
        ),
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::HttpResponseTimeout
        | ErrorCode::DnsTimeout => Error::Retryable(format!("timed out: {e:?}")),
        ErrorCode::ConnectionRefused
        | ErrorCode::ConnectionTerminated
        | ErrorCode::DestinationUnavailable => Error::Retryable(format!("http error: {e:?}")),
        other => Error::Failed(format!("http error: {other:?}")),
    }
}

/// An error while reading a response body. The host reports body errors
/// without a `wasi:http` error code attached (so `http-error-code` often
/// has nothing); fall back to its description.
fn body_error(e: &wasip2::io::error::Error) -> Error {
    if let Some(code) = wasip2::http::types::http_error_code(e) {
        return http_error(code);
    }
    let text = e.to_debug_string();
    if text.contains("body size exceeds limit") {
        Error::Failed(format!(
            "response body too large ({text}; see [grants.http] max_response_bytes)"
        ))
    } else if text.contains("timeout") || text.contains("timed out") {
        Error::Retryable(format!("timed out reading response body: {text}"))
    } else {
        Error::Failed(format!("reading response body: {text}"))
    }
}
