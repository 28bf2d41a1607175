//! Load limits at the HTTP edge: a token bucket per API token (and per client
//! address for failed authentication), a cap on requests in flight that
//! answers 503 instead of queueing, and a request timeout that answers 408.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::error::ApiError;

/// Whom a bucket belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// An authenticated token, by name.
    Token(String),
    /// Requests without a valid token, by client address.
    Anonymous(Option<IpAddr>),
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets: `per_sec` requests per second on average, bursts of
/// `burst`. A rate of 0 disables limiting.
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<RateKey, Bucket>>,
}

/// Buckets kept before idle (full) ones are dropped.
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    /// A limiter of `per_sec` requests per second with bursts of `burst`
    /// (at least 1).
    pub fn new(per_sec: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket, or says in how many seconds
    /// (rounded up, at least 1) one will be available.
    pub fn check(&self, key: RateKey) -> Result<(), u64> {
        if self.per_sec <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.last).as_secs_f64() * per_sec < burst
            });
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let refill = now.duration_since(bucket.last).as_secs_f64() * self.per_sec;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.per_sec;
            Err((wait.ceil() as u64).max(1))
        }
    }
}

/// Requests in flight, shared by every connection. `None`: unlimited.
#[derive(Clone)]
pub struct InFlight(pub Option<Arc<Semaphore>>);

impl InFlight {
    /// A cap of `max` requests at once; 0 means no cap.
    pub fn new(max: usize) -> InFlight {
        InFlight((max > 0).then(|| Arc::new(Semaphore::new(max))))
    }
}

/// The middleware: over the cap, 503 with `Retry-After` at once (probes
/// are exempt so an overloaded server is not restarted for it).
pub async fn in_flight(State(limit): State<InFlight>, req: Request, next: Next) -> Response {
    let Some(semaphore) = limit.0 else {
        return next.run(req).await;
    };
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    match semaphore.try_acquire_owned() {
        Ok(permit) => {
            let response = next.run(req).await;
            drop(permit);
            response
        }
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in flight; retry shortly",
        )
        .retry_after(1)
        .into_response(),
    }
}

/// Routes without the request timeout: an invocation is bounded by the
/// plugin's deadline, an upload (up to `max_upload_bytes`, then compiled)
/// may take longer than other calls.
fn no_request_timeout(method: &Method, path: &str) -> bool {
    if method != Method::POST {
        return false;
    }
    let invoke = path
        .strip_prefix("/v1/plugins/")
        .and_then(|rest| rest.strip_suffix("/invoke"))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'));
    invoke || path.trim_end_matches('/') == "/v1/plugins"
}

/// The middleware: a request (reading its body included) that is not
/// answered within `timeout` gets 408 and its connection is closed. A zero
/// timeout disables it.
pub async fn request_timeout(
    State(timeout): State<Duration>,
    req: Request,
    next: Next,
) -> Response {
    if timeout.is_zero() || no_request_timeout(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request was not complete within {} ms",
                    timeout.as_millis()
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_and_upload_have_no_request_timeout() {
        let exempt = |m: Method, p: &str| no_request_timeout(&m, p);
        assert!(exempt(Method::POST, "/v1/plugins/web/invoke"));
        assert!(exempt(Method::POST, "/v1/plugins"));
        assert!(!exempt(Method::GET, "/v1/plugins"));
        assert!(!exempt(Method::PUT, "/v1/secrets/x"));
        assert!(!exempt(Method::POST, "/v1/plugins/web/rollback"));
        assert!(!exempt(Method::POST, "/v1/plugins/a/b/invoke"));
        assert!(!exempt(Method::POST, "/v1/tokens"));
    }

    #[test]
    fn bucket_allows_a_burst_then_refills() {
        let l = RateLimiter::new(10, 3);
        let k = || RateKey::Token("t".into());
        for _ in 0..3 {
            assert_eq!(l.check(k()), Ok(()));
        }
        assert_eq!(l.check(k()), Err(1));
        assert_eq!(l.check(RateKey::Token("other".into())), Ok(()));
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(l.check(k()), Ok(()));
        let off = RateLimiter::new(0, 0);
        for _ in 0..1000 {
            assert_eq!(off.check(k()), Ok(()));
        }
    }
}
