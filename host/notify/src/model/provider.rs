//! The provider side, pure: request payloads, signatures, size limits, and
//! how each provider's answer is read. DingTalk, WeCom and Feishu answer
//! HTTP 200 for business errors too, so the verdict comes from the body's
//! `errcode` / `code`; Slack answers plain text (`ok`, `invalid_payload`)
//! with a status, and 429 with `Retry-After`.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;

use super::{ChannelKind, Format};

/// What to do after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Verdict {
    /// The provider took the message.
    Sent,
    /// A transient refusal (rate limit, 5xx, network): try again later,
    /// not before `after_ms` if the provider said so.
    Retry {
        /// The provider's `Retry-After`, ms.
        after_ms: Option<u64>,
    },
    /// The provider will never take it as it is (bad sign, keyword,
    /// unknown token, too long): do not retry.
    Permanent,
}

/// A provider's answer to one attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Answer {
    /// What it means.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// HTTP status (or the SMTP reply code); none if no answer came.
    pub status: Option<u16>,
    /// The provider's error code: DingTalk/WeCom `errcode`, Feishu `code`,
    /// Slack's error text, an SMTP code.
    pub code: Option<String>,
    /// The provider's message (`errmsg`, `msg`), or the transport error.
    pub message: Option<String>,
    /// The raw body, truncated to 2 KiB.
    pub body: String,
}

/// Raw answers are kept up to this size.
pub const MAX_BODY: usize = 2048;

impl Answer {
    /// No answer: the request failed in transport (retryable).
    pub fn transport(message: String) -> Answer {
        Answer {
            verdict: Verdict::Retry { after_ms: None },
            status: None,
            code: None,
            message: Some(message),
            body: String::new(),
        }
    }

    /// A refusal made here, before sending (missing secret, bad address).
    pub fn local(message: String) -> Answer {
        Answer {
            verdict: Verdict::Permanent,
            status: None,
            code: None,
            message: Some(message),
            body: String::new(),
        }
    }

    /// One line for logs and error messages.
    pub fn summary(&self) -> String {
        let mut s = match self.status {
            Some(st) => format!("provider answered {st}"),
            None => "no answer".to_string(),
        };
        if let Some(c) = &self.code {
            s.push_str(&format!(", code {c}"));
        }
        if let Some(m) = &self.message {
            s.push_str(&format!(": {m}"));
        }
        s
    }
}

/// Reads an HTTP answer of `kind`: status, `Retry-After` (seconds) and body.
pub fn classify(kind: ChannelKind, status: u16, retry_after: Option<u64>, body: &str) -> Answer {
    let mut a = Answer {
        verdict: Verdict::Permanent,
        status: Some(status),
        code: None,
        message: None,
        body: truncate(body, MAX_BODY).to_string(),
    };
    let after_ms = retry_after.map(|s| s * 1000);
    let transient_status = status == 429 || status == 408 || status >= 500;
    let json: Option<Value> = serde_json::from_str(body).ok();
    match kind {
        ChannelKind::Dingtalk | ChannelKind::Wecom | ChannelKind::Feishu => {
            let (code_key, msg_key) = match kind {
                ChannelKind::Feishu => ("code", "msg"),
                _ => ("errcode", "errmsg"),
            };
            // Feishu's older hook answers `{"StatusCode":0,"StatusMessage":"success"}`.
            let code = json.as_ref().and_then(|j| {
                j.get(code_key)
                    .or_else(|| j.get("StatusCode"))
                    .and_then(Value::as_i64)
            });
            a.code = code.map(|c| c.to_string());
            a.message = json.as_ref().and_then(|j| {
                j.get(msg_key)
                    .or_else(|| j.get("StatusMessage"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            a.verdict = match code {
                _ if transient_status => Verdict::Retry { after_ms },
                _ if !(200..300).contains(&status) => Verdict::Permanent,
                Some(0) => Verdict::Sent,
                Some(c) if retryable_code(kind, c) => Verdict::Retry { after_ms },
                Some(_) => Verdict::Permanent,
                None => {
                    a.message = Some("the answer has no error code".into());
                    Verdict::Permanent
                }
            };
        }
        ChannelKind::Slack => {
            let text = body.trim();
            a.verdict = if (200..300).contains(&status) && text == "ok" {
                Verdict::Sent
            } else if transient_status {
                Verdict::Retry { after_ms }
            } else {
                Verdict::Permanent
            };
            if a.verdict != Verdict::Sent && !text.is_empty() {
                a.code = Some(truncate(text, 100).to_string());
            }
        }
        ChannelKind::Webhook | ChannelKind::Email => {
            a.verdict = if (200..300).contains(&status) {
                Verdict::Sent
            } else if transient_status {
                Verdict::Retry { after_ms }
            } else {
                Verdict::Permanent
            };
        }
    }
    a
}

/// Business codes that mean "later": DingTalk 130101 (send too fast),
/// WeCom 45009 (api freq out of limit) and -1 (system busy), Feishu 9499
/// and 11232 (rate limited).
fn retryable_code(kind: ChannelKind, code: i64) -> bool {
    match kind {
        ChannelKind::Dingtalk => code == 130101,
        ChannelKind::Wecom => code == 45009 || code == -1,
        ChannelKind::Feishu => code == 9499 || code == 11232,
        _ => false,
    }
}

/// DingTalk's sign: base64(HMAC-SHA256(key = secret, msg = ts + "\n" + secret)),
/// `ts` in ms. (URL-encode it into the query.)
pub fn dingtalk_sign(secret: &str, ts_ms: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{ts_ms}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Feishu's sign: base64(HMAC-SHA256(key = ts + "\n" + secret, msg = "")), `ts` in seconds.
pub fn feishu_sign(secret: &str, ts_s: i64) -> String {
    let mac = Hmac::<Sha256>::new_from_slice(format!("{ts_s}\n{secret}").as_bytes())
        .expect("any key length");
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The signed DingTalk URL: `url&timestamp=<ms>&sign=<urlencoded>`.
pub fn dingtalk_url(url: &str, secret: Option<&str>, ts_ms: i64) -> String {
    match secret {
        None => url.to_string(),
        Some(s) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!(
                "{url}{sep}timestamp={ts_ms}&sign={}",
                urlencode(&dingtalk_sign(s, ts_ms))
            )
        }
    }
}

/// The largest message body (bytes) the provider takes in `format`:
/// DingTalk 20000 (19960 leaves room, as notification-manager does), WeCom
/// 2048 text / 4096 markdown, Feishu 20 KB for the whole request, Slack
/// 40000 characters.
pub fn max_bytes(kind: ChannelKind, format: Format) -> usize {
    match (kind, format) {
        (ChannelKind::Dingtalk, _) => 19_960,
        (ChannelKind::Wecom, Format::Text) => 2048,
        (ChannelKind::Wecom, Format::Markdown) => 4096,
        (ChannelKind::Feishu, _) => 18_000,
        (ChannelKind::Slack, _) => 39_000,
        (ChannelKind::Webhook | ChannelKind::Email, _) => 512 * 1024,
    }
}

/// `s` cut to at most `max` bytes on a UTF-8 boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `text` made to fit `max` bytes: cut, with a marker saying so.
pub fn fit(text: &str, max: usize) -> String {
    const MARK: &str = "\n…(truncated)";
    if text.len() <= max {
        return text.to_string();
    }
    format!("{}{MARK}", truncate(text, max.saturating_sub(MARK.len())))
}

/// What separates messages batched into one.
pub const BATCH_SEPARATOR: &str = "\n\n---\n\n";

/// How many of `bodies` (in order, at least one) fit one message of at most
/// `max` bytes, and that message.
pub fn join_batch(bodies: &[&str], max: usize) -> (usize, String) {
    let mut out = String::new();
    let mut n = 0;
    for b in bodies {
        let extra = if n == 0 {
            b.len()
        } else {
            BATCH_SEPARATOR.len() + b.len()
        };
        if n > 0 && out.len() + extra > max {
            break;
        }
        if n > 0 {
            out.push_str(BATCH_SEPARATOR);
        }
        out.push_str(b);
        n += 1;
    }
    (n, fit(&out, max))
}

/// A title for formats that need one: the first non-empty line without
/// markdown heading marks, at most 100 bytes.
pub fn title(text: &str) -> String {
    let line = text
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .find(|l| !l.is_empty())
        .unwrap_or("Capstan notification");
    truncate(line, 100).to_string()
}

/// The JSON body for `kind` (not email). `feishu_sign` is (timestamp s, sign).
pub fn payload(
    kind: ChannelKind,
    format: Format,
    text: &str,
    feishu: Option<(i64, String)>,
) -> Value {
    match (kind, format) {
        (ChannelKind::Dingtalk, Format::Text) => {
            json!({"msgtype": "text", "text": {"content": text}})
        }
        (ChannelKind::Dingtalk, Format::Markdown) => {
            json!({"msgtype": "markdown", "markdown": {"title": title(text), "text": text}})
        }
        (ChannelKind::Wecom, Format::Text) => json!({"msgtype": "text", "text": {"content": text}}),
        (ChannelKind::Wecom, Format::Markdown) => {
            json!({"msgtype": "markdown", "markdown": {"content": text}})
        }
        (ChannelKind::Feishu, f) => {
            let mut body = match f {
                Format::Text => json!({"msg_type": "text", "content": {"text": text}}),
                Format::Markdown => json!({"msg_type": "post", "content": {"post": {"zh_cn": {
                    "title": title(text),
                    "content": text.lines().map(|l| json!([{"tag": "text", "text": l}])).collect::<Vec<_>>(),
                }}}}),
            };
            if let Some((ts, sign)) = feishu {
                body["timestamp"] = json!(ts.to_string());
                body["sign"] = json!(sign);
            }
            body
        }
        (ChannelKind::Slack, _) => json!({"text": text}),
        (ChannelKind::Webhook | ChannelKind::Email, f) => {
            json!({"format": f.as_str(), "title": title(text), "text": text})
        }
    }
}

/// A retry delay, ms, for attempt `n` (1-based) after a transient refusal:
/// exponential from `min` (factor 2, capped at `max`) with jitter, never
/// shorter than what the provider asked for.
pub fn retry_delay(n: u32, min: Duration, max: Duration, asked_ms: Option<u64>) -> Duration {
    use backon::BackoffBuilder as _;
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(n as usize + 1)
        .build();
    let d = delays.nth(n.saturating_sub(1) as usize).unwrap_or(max);
    d.min(max).max(Duration::from_millis(asked_ms.unwrap_or(0)))
}
