//! One send, for real: resolves the channel's secrets, signs, posts the
//! provider's payload (or speaks SMTP), and reads the answer. Nothing here
//! writes to the database; the caller records the attempt around it.
//! Webhook URLs carry tokens, so transport errors are recorded without URL.

use std::time::Duration;

use capstan_store::unix_millis;

use crate::model::provider::{self, Answer, Verdict};
use crate::model::{ChannelKind, ChannelSpec, Format, SmtpSpec};
use crate::notifier::Notifier;

impl Notifier {
    /// Sends `text` through `spec` once and returns the provider's answer.
    pub(crate) async fn send_once(&self, spec: &ChannelSpec, format: Format, text: &str) -> Answer {
        let text = provider::fit(text, provider::max_bytes(spec.kind, format));
        match (&spec.smtp, spec.kind) {
            (Some(smtp), ChannelKind::Email) => self.send_email(smtp, &text).await,
            _ => self.send_http(spec, format, &text).await,
        }
    }

    fn secret(&self, name: &str) -> Result<String, Answer> {
        self.secrets
            .get(name)
            .map_err(|e| Answer::local(format!("secret `{name}`: {e}")))
    }

    async fn send_http(&self, spec: &ChannelSpec, format: Format, text: &str) -> Answer {
        let Some(url_secret) = &spec.webhook_secret else {
            return Answer::local("the channel names no webhook_secret".into());
        };
        let url = match self.secret(url_secret) {
            Ok(u) => u.trim().to_string(),
            Err(a) => return a,
        };
        let sign = match spec
            .sign_secret
            .as_deref()
            .map(|s| self.secret(s))
            .transpose()
        {
            Ok(s) => s,
            Err(a) => return a,
        };
        let now = unix_millis();
        let (url, feishu) = match spec.kind {
            ChannelKind::Dingtalk => (provider::dingtalk_url(&url, sign.as_deref(), now), None),
            ChannelKind::Feishu => {
                let ts = now / 1000;
                (url, sign.map(|s| (ts, provider::feishu_sign(&s, ts))))
            }
            _ => (url, None),
        };
        let body = provider::payload(spec.kind, format, text, feishu);
        let sent = self
            .http
            .post(&url)
            .json(&body)
            .timeout(self.config.timeout)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return Answer::transport(e.without_url().to_string()),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let text = match read_limited(resp, 64 * 1024).await {
            Ok(t) => t,
            Err(e) => return Answer::transport(e),
        };
        provider::classify(spec.kind, status, retry_after, &text)
    }

    async fn send_email(&self, smtp: &SmtpSpec, text: &str) -> Answer {
        use lettre::message::header::ContentType;
        use lettre::transport::smtp::authentication::Credentials;
        use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
        let password = match smtp
            .password_secret
            .as_deref()
            .map(|s| self.secret(s))
            .transpose()
        {
            Ok(p) => p,
            Err(a) => return a,
        };
        let builder = if smtp.starttls {
            match AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host) {
                Ok(b) => b,
                Err(e) => return Answer::local(format!("smtp: {e}")),
            }
        } else {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
        };
        let mut builder = builder.port(smtp.port).timeout(Some(self.config.timeout));
        if let (Some(user), Some(pass)) = (&smtp.username, password) {
            builder = builder.credentials(Credentials::new(user.clone(), pass));
        }
        let mut m = Message::builder().subject(provider::title(text));
        match smtp.from.parse() {
            Ok(f) => m = m.from(f),
            Err(e) => return Answer::local(format!("from `{}`: {e}", smtp.from)),
        }
        for to in &smtp.to {
            match to.parse() {
                Ok(t) => m = m.to(t),
                Err(e) => return Answer::local(format!("to `{to}`: {e}")),
            }
        }
        let msg = match m.header(ContentType::TEXT_PLAIN).body(text.to_string()) {
            Ok(m) => m,
            Err(e) => return Answer::local(format!("building the message: {e}")),
        };
        match builder.build().send(msg).await {
            Ok(r) => {
                let message = r.message().collect::<Vec<_>>().join(" ");
                Answer {
                    verdict: Verdict::Sent,
                    status: r.code().to_string().parse().ok(),
                    code: Some(r.code().to_string()),
                    message: Some(message.clone()),
                    body: provider::truncate(&message, provider::MAX_BODY).to_string(),
                }
            }
            Err(e) => Answer {
                verdict: if e.is_permanent() {
                    Verdict::Permanent
                } else {
                    Verdict::Retry { after_ms: None }
                },
                status: e.status().and_then(|c| c.to_string().parse().ok()),
                code: e.status().map(|c| c.to_string()),
                message: Some(e.to_string()),
                body: String::new(),
            },
        }
    }
}

/// The body as text, at most `max` bytes read.
async fn read_limited(mut resp: reqwest::Response, max: usize) -> Result<String, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        buf.extend_from_slice(&chunk);
        if buf.len() >= max {
            buf.truncate(max);
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Whether an answer ends the delivery for good.
pub(crate) fn is_final(a: &Answer, attempt: u32, max_attempts: u32) -> bool {
    !matches!(a.verdict, Verdict::Retry { .. }) || attempt >= max_attempts
}

/// When to try again after a retryable answer.
pub(crate) fn retry_at(a: &Answer, attempt: u32, min: Duration, max: Duration) -> i64 {
    let asked = match a.verdict {
        Verdict::Retry { after_ms } => after_ms,
        _ => None,
    };
    unix_millis() + provider::retry_delay(attempt, min, max, asked).as_millis() as i64
}
