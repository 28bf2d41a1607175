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
        let http = match &self.http {
            Ok(c) => c,
            Err(e) => return Answer::local(e.clone()),
        };
        let sent = http
            .post(&url)
            .json(&body)
            .timeout(self.config.timeout)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return Answer::transport(chain(&e.without_url())),
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
        use lettre::transport::smtp::client::Tls;
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
        // Implicit TLS (SMTPS) wraps the connection from the first byte;
        // STARTTLS upgrades it and refuses to go on in clear; else clear text.
        let tls = if smtp.implicit_tls || smtp.starttls {
            let params = match self.tls_parameters(&smtp.host) {
                Ok(p) => p,
                Err(e) => return Answer::local(format!("smtp TLS settings: {}", chain(&e))),
            };
            if smtp.implicit_tls {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            }
        } else {
            Tls::None
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            .port(smtp.port)
            .tls(tls)
            .timeout(Some(self.config.timeout));
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
        // lettre bounds only the connect: a server that never answers (say
        // port 465 spoken to in clear: both sides wait) would hold the send.
        let sent = tokio::time::timeout(self.config.timeout, builder.build().send(msg)).await;
        let Ok(sent) = sent else {
            let hint = if smtp.port == 465 && !smtp.implicit_tls {
                " (port 465 usually wants `implicit_tls: true`)"
            } else {
                ""
            };
            return Answer::transport(format!(
                "smtp: no answer from {}:{} within {} ms{hint}",
                smtp.host,
                smtp.port,
                self.config.timeout.as_millis()
            ));
        };
        match sent {
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
                message: Some(chain(&e)),
                body: String::new(),
            },
        }
    }

    /// TLS for SMTP to `host`: the public roots (`webpki-roots`) and the
    /// private CAs of [`NotifyConfig::ca_pem`](crate::NotifyConfig::ca_pem).
    fn tls_parameters(
        &self,
        host: &str,
    ) -> Result<lettre::transport::smtp::client::TlsParameters, lettre::transport::smtp::Error>
    {
        use lettre::transport::smtp::client::{Certificate, TlsParameters};
        let mut b = TlsParameters::builder(host.to_string());
        if !self.config.ca_pem.is_empty() {
            b = b.add_root_certificate(Certificate::from_pem(&self.config.ca_pem)?);
        }
        b.build_rustls()
    }
}

/// An error with its causes, `error: cause: cause`, for answers (the TLS
/// handshake's refusal of a certificate is said first, plainly).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut certificate = None;
    let mut cur = Some(e);
    while let Some(err) = cur {
        let m = err.to_string();
        // Many errors print their cause too: say each once.
        if !parts.last().is_some_and(|p| p.contains(&m)) {
            parts.push(m);
        }
        certificate = certificate.or_else(|| certificate_problem(err));
        cur = err.source();
    }
    let text = parts.join(": ");
    match certificate {
        Some(c) => format!("{c} ({text})"),
        None => text,
    }
}

/// The rustls error `e` is or wraps in `io::Error`s (as TLS streams and
/// HTTP connectors report it).
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    match e.downcast_ref::<std::io::Error>() {
        Some(io) => rustls_error(io.get_ref()?),
        None => e.downcast_ref::<rustls::Error>(),
    }
}

/// What is wrong with the peer's certificate, if `e` is rustls refusing it.
fn certificate_problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(c) = rustls_error(e)? else {
        return None;
    };
    Some(match c {
        // A signature that does not verify: some root has the issuer's
        // name (Debian's snakeoil `CN=localhost`, say) but did not sign it.
        C::UnknownIssuer
        | C::BadSignature
        | C::UnsupportedSignatureAlgorithmContext { .. }
        | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "the server's TLS certificate is not trusted: no trusted root and no CA of \
             the server's CA file ([http] ca_file) issued it"
                .to_string()
        }
        C::Expired | C::ExpiredContext { .. } => {
            "the server's TLS certificate has expired".to_string()
        }
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "the server's TLS certificate is not valid yet".to_string()
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "the server's TLS certificate is not valid for the host name".to_string()
        }
        other => format!("the server's TLS certificate is not accepted: {other}"),
    })
}

/// The body as text, at most `max` bytes read.
async fn read_limited(mut resp: reqwest::Response, max: usize) -> Result<String, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| chain(&e.without_url()))? {
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
