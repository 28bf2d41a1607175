//! Stand-ins for the chat providers on loopback HTTP, answering as each
//! documents, errors included: DingTalk custom robot (`/robot/send`: token,
//! `timestamp` + `sign` checked, a timestamp off by more than an hour or a
//! wrong sign is errcode 310000, more than 20 messages a minute per robot
//! is 130101), WeCom group robot (`/cgi-bin/webhook/send`: key 93000, 20 a
//! minute 45009, text over 2048 bytes 40058), Feishu bot
//! (`/open-apis/bot/v2/hook/{id}`: sign and timestamp 19021, 5 a second
//! 11232), Slack incoming webhook (`/services/...`: `ok`, 400
//! `invalid_payload` / `no_text`, 404 `no_service`, 429 `rate_limited` with
//! `Retry-After`) and a generic webhook (`/hook`). The signatures are
//! computed here independently of Capstan's code. Tests can script the next
//! answers of a provider and hold requests unanswered.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// A message a stand-in took.
#[derive(Debug, Clone)]
pub struct Received {
    /// `dingtalk`, `wecom`, `feishu`, `slack` or `webhook`.
    pub provider: &'static str,
    /// The robot (token, key, hook id, path).
    pub robot: String,
    /// The JSON body.
    pub body: Value,
    /// Its text, wherever the provider keeps it.
    pub text: String,
}

/// A scripted answer: status, body, `Retry-After`.
#[derive(Debug, Clone)]
pub struct Scripted {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: String,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    /// Every request, by provider, whatever the answer.
    requests: HashMap<&'static str, usize>,
    /// Refusals, by provider and code.
    refusals: Vec<(&'static str, String)>,
    /// Arrival times per robot, for the rate limits.
    arrivals: HashMap<String, VecDeque<Instant>>,
    script: HashMap<&'static str, VecDeque<Scripted>>,
    /// Signing secrets per robot.
    secrets: HashMap<String, String>,
    hold: bool,
}

/// The stand-ins, on one loopback port.
#[derive(Clone)]
pub struct Chat {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    changed: Arc<tokio::sync::Notify>,
    released: Arc<tokio::sync::Notify>,
}

type Shared = Chat;

impl Chat {
    /// Starts the stand-ins.
    pub async fn start() -> Chat {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let chat = Chat {
            url: format!("http://{}", l.local_addr().unwrap()),
            inner: Arc::default(),
            changed: Arc::default(),
            released: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/robot/send", axum::routing::post(dingtalk))
            .route("/cgi-bin/webhook/send", axum::routing::post(wecom))
            .route("/open-apis/bot/v2/hook/{id}", axum::routing::post(feishu))
            .route("/services/{a}/{b}/{c}", axum::routing::post(slack))
            .route("/hook", axum::routing::post(webhook))
            .with_state(chat.clone());
        tokio::spawn(async move { axum::serve(l, app).await });
        chat
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Robot `robot` (DingTalk token, Feishu hook id) checks signatures with `secret`.
    pub fn set_secret(&self, robot: &str, secret: &str) {
        self.lock().secrets.insert(robot.into(), secret.into());
    }

    /// The next answers of `provider`, before its own checks of the message.
    pub fn script(&self, provider: &'static str, answers: Vec<Scripted>) {
        self.lock()
            .script
            .entry(provider)
            .or_default()
            .extend(answers);
    }

    /// While set, requests are held unanswered (until released).
    pub fn hold(&self, on: bool) {
        self.lock().hold = on;
        if !on {
            self.released.notify_waiters();
        }
    }

    /// Messages taken so far.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Requests `provider` got, whatever the answer.
    pub fn requests(&self, provider: &str) -> usize {
        self.lock().requests.get(provider).copied().unwrap_or(0)
    }

    /// Refusals so far: (provider, code).
    pub fn refusals(&self) -> Vec<(&'static str, String)> {
        self.lock().refusals.clone()
    }

    /// Waits (30 s at most) until `ok` holds for the messages taken.
    pub async fn wait_until(&self, what: &str, ok: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let notified = self.changed.notified();
            {
                let got = self.received();
                if ok(&got) {
                    return got;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}: {:#?}",
                self.received()
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }

    /// Counts the request, waits while held, and takes a scripted answer.
    async fn arrive(&self, provider: &'static str) -> Option<Response> {
        let held = {
            let mut i = self.lock();
            *i.requests.entry(provider).or_default() += 1;
            i.hold
        };
        self.changed.notify_waiters();
        if held {
            let released = self.released.notified();
            if self.lock().hold {
                released.await;
            }
        }
        let s = self.lock().script.get_mut(provider)?.pop_front()?;
        self.lock()
            .refusals
            .push((provider, format!("scripted {}", s.status)));
        let mut r = (StatusCode::from_u16(s.status).unwrap(), s.body).into_response();
        if let Some(ra) = s.retry_after {
            r.headers_mut().insert("retry-after", ra.into());
        }
        Some(r)
    }

    /// Whether one more message to `robot` fits `max` per `window`.
    fn admit(&self, robot: &str, max: usize, window: Duration) -> bool {
        let now = Instant::now();
        let mut i = self.lock();
        let q = i.arrivals.entry(robot.to_string()).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        if q.len() >= max {
            return false;
        }
        q.push_back(now);
        true
    }

    fn refuse(&self, provider: &'static str, code: impl ToString) {
        self.lock().refusals.push((provider, code.to_string()));
    }

    fn take(&self, provider: &'static str, robot: &str, body: Value, text: String) {
        self.lock().received.push(Received {
            provider,
            robot: robot.into(),
            body,
            text,
        });
        self.changed.notify_waiters();
    }
}

fn hmac_b64(key: &[u8], msg: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(msg);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn dingtalk(
    State(chat): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    body: String,
) -> Response {
    if let Some(r) = chat.arrive("dingtalk").await {
        return r;
    }
    let err = |code: i64, msg: &str| {
        chat.refuse("dingtalk", code);
        axum::Json(json!({"errcode": code, "errmsg": msg})).into_response()
    };
    let Some(token) = q.get("access_token").cloned() else {
        return err(300001, "token is empty");
    };
    let secret = chat.lock().secrets.get(&token).cloned();
    if let Some(secret) = secret {
        let ts = q.get("timestamp").and_then(|t| t.parse::<i64>().ok());
        let Some(ts) = ts.filter(|ts| (now_ms() - ts).abs() <= 3_600_000) else {
            return err(310000, "invalid timestamp");
        };
        // axum's Query has already percent-decoded `sign`.
        let want = hmac_b64(secret.as_bytes(), format!("{ts}\n{secret}").as_bytes());
        if q.get("sign") != Some(&want) {
            return err(310000, "sign not match");
        }
    }
    if !chat.admit(&format!("dingtalk/{token}"), 20, Duration::from_secs(60)) {
        return err(130101, "send too fast, exceed 20 times per minute");
    }
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return err(43004, "invalid json");
    };
    let text = match v["msgtype"].as_str() {
        Some("text") => v["text"]["content"].as_str(),
        Some("markdown") => v["markdown"]["text"].as_str(),
        _ => None,
    };
    let Some(text) = text.map(str::to_string) else {
        return err(40035, "missing msgtype or content");
    };
    if body.len() > 20_000 {
        return err(460101, "message too long, exceed 20000 bytes");
    }
    chat.take("dingtalk", &token, v, text);
    axum::Json(json!({"errcode": 0, "errmsg": "ok"})).into_response()
}

async fn wecom(
    State(chat): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    body: String,
) -> Response {
    if let Some(r) = chat.arrive("wecom").await {
        return r;
    }
    let err = |code: i64, msg: &str| {
        chat.refuse("wecom", code);
        axum::Json(json!({"errcode": code, "errmsg": msg})).into_response()
    };
    let Some(key) = q.get("key").filter(|k| k.starts_with("wk-")).cloned() else {
        return err(93000, "invalid webhook url");
    };
    if !chat.admit(&format!("wecom/{key}"), 20, Duration::from_secs(60)) {
        return err(45009, "api freq out of limit");
    }
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    let (text, max) = match v["msgtype"].as_str() {
        Some("text") => (v["text"]["content"].as_str(), 2048),
        Some("markdown") => (v["markdown"]["content"].as_str(), 4096),
        _ => (None, 0),
    };
    let Some(text) = text.map(str::to_string) else {
        return err(40008, "invalid message type");
    };
    if text.len() > max {
        return err(40058, "content exceed max length");
    }
    chat.take("wecom", &key, v, text);
    axum::Json(json!({"errcode": 0, "errmsg": "ok"})).into_response()
}

async fn feishu(State(chat): State<Shared>, Path(id): Path<String>, body: String) -> Response {
    if let Some(r) = chat.arrive("feishu").await {
        return r;
    }
    let err = |code: i64, msg: &str| {
        chat.refuse("feishu", code);
        axum::Json(json!({"code": code, "msg": msg, "data": {}})).into_response()
    };
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    let secret = chat.lock().secrets.get(&id).cloned();
    if let Some(secret) = secret {
        let ts = match &v["timestamp"] {
            Value::String(s) => s.parse::<i64>().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        };
        let fresh = ts.filter(|ts| (now_ms() / 1000 - ts).abs() <= 3600);
        let ok = fresh.is_some_and(|ts| {
            v["sign"].as_str() == Some(&hmac_b64(format!("{ts}\n{secret}").as_bytes(), b""))
        });
        if !ok {
            return err(
                19021,
                "sign match fail or timestamp is not within one hour from current time",
            );
        }
    }
    if !chat.admit(&format!("feishu/{id}"), 5, Duration::from_secs(1)) {
        return err(
            11232,
            "frequency limited psm[lark.oapi.app_platform_runtime]appID[1]",
        );
    }
    let text = match v["msg_type"].as_str() {
        Some("text") => v["content"]["text"].as_str().map(str::to_string),
        Some("post") => Some(v["content"]["post"]["zh_cn"].to_string()),
        _ => None,
    };
    let Some(text) = text else {
        return err(9499, "Bad Request");
    };
    chat.take("feishu", &id, v, text);
    axum::Json(json!({"code": 0, "data": {}, "msg": "success"})).into_response()
}

async fn slack(
    State(chat): State<Shared>,
    Path((a, b, c)): Path<(String, String, String)>,
    body: String,
) -> Response {
    if let Some(r) = chat.arrive("slack").await {
        return r;
    }
    let err = |status: u16, code: &str| {
        chat.refuse("slack", code);
        (StatusCode::from_u16(status).unwrap(), code.to_string()).into_response()
    };
    if !a.starts_with('T') {
        return err(404, "no_service");
    }
    // About one a second, short bursts allowed.
    if !chat.admit(&format!("slack/{a}/{b}/{c}"), 2, Duration::from_secs(1)) {
        let mut r = err(429, "rate_limited");
        r.headers_mut().insert("retry-after", 1.into());
        return r;
    }
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return err(400, "invalid_payload");
    };
    let Some(text) = v["text"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_string)
    else {
        return err(400, "no_text");
    };
    chat.take("slack", &format!("{a}/{b}/{c}"), v, text);
    (StatusCode::OK, "ok").into_response()
}

async fn webhook(State(chat): State<Shared>, body: String) -> Response {
    if let Some(r) = chat.arrive("webhook").await {
        return r;
    }
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    let text = v["text"].as_str().unwrap_or_default().to_string();
    chat.take("webhook", "hook", v, text);
    (StatusCode::OK, axum::Json(json!({"ok": true}))).into_response()
}
