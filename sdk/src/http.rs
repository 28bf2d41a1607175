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
}

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
/// turns into a GET without body). A host denial comes back as [`Error::Denied`].
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, Error> {
    let mut url = url.to_string();
    let mut method = method.to_string();
    let mut body = body.to_vec();
    for _ in 0..=MAX_REDIRECTS {
        let response = send_once(&method, &url, headers, &body)?;
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

fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    let authority = rest.split('/').next().unwrap_or_default();
    format!(
        "{scheme}://{authority}/{}",
        location.trim_start_matches('/')
    )
}

fn send_once(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, Error> {
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
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(Error::Failed(format!(
                    "reading response body: {}",
                    e.to_debug_string()
                )));
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn http_error(e: ErrorCode) -> Error {
    match e {
        ErrorCode::HttpRequestDenied => {
            Error::Denied("the host denied this request (not in [grants.http])".into())
        }
        ErrorCode::DestinationIpProhibited => {
            Error::Denied("the destination address is not allowed".into())
        }
        ErrorCode::HttpResponseBodySize(n) => {
            Error::Failed(format!("response body too large ({n:?} bytes)"))
        }
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::HttpResponseTimeout => Error::Retryable(format!("timed out: {e:?}")),
        other => Error::Failed(format!("http error: {other:?}")),
    }
}
