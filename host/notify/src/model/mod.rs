//! Channel specs as admins write them (API body and `[[notify.channels]]`
//! in the server config), with their validation; message formats; and the
//! provider side ([`provider`]): payloads, signatures, how answers are read.
//! Credentials are never in a spec: it names secrets of the secrets store.

pub mod provider;
#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use provider::{Answer, Verdict};

/// The provider a channel sends through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// DingTalk custom robot (`oapi.dingtalk.com/robot/send?access_token=`), optionally signed.
    Dingtalk,
    /// WeCom (WeChat Work) group robot (`qyapi.weixin.qq.com/cgi-bin/webhook/send?key=`).
    Wecom,
    /// Feishu / Lark custom bot (`open.feishu.cn/open-apis/bot/v2/hook/`), optionally signed.
    Feishu,
    /// Slack incoming webhook (`hooks.slack.com/services/`).
    Slack,
    /// Any HTTP endpoint: a JSON POST, 2xx is success.
    Webhook,
    /// Email over SMTP.
    Email,
}

impl ChannelKind {
    /// The name used in specs, labels and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Dingtalk => "dingtalk",
            ChannelKind::Wecom => "wecom",
            ChannelKind::Feishu => "feishu",
            ChannelKind::Slack => "slack",
            ChannelKind::Webhook => "webhook",
            ChannelKind::Email => "email",
        }
    }

    /// Parses [`ChannelKind::as_str`].
    pub fn parse(s: &str) -> Option<ChannelKind> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }

    /// The provider's published limits, as sliding windows (count, window):
    /// DingTalk and WeCom 20 per minute per robot, Feishu 5 per second and
    /// 100 per minute per bot, Slack about 1 per second. Each window is
    /// made a little longer (1/60, at least 100 ms): the provider counts
    /// arrivals, we count departures.
    pub fn default_limits(self) -> Vec<RateLimit> {
        let w = |max: u32, secs: u64| RateLimit {
            max,
            per_ms: secs * 1000 + (secs * 1000 / 60).max(100),
        };
        match self {
            ChannelKind::Dingtalk | ChannelKind::Wecom => vec![w(20, 60)],
            ChannelKind::Feishu => vec![w(5, 1), w(100, 60)],
            ChannelKind::Slack => vec![w(1, 1)],
            ChannelKind::Webhook | ChannelKind::Email => vec![],
        }
    }
}

/// A rate window: at most `max` sends in any `per_ms` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sends allowed in the window (at least 1).
    pub max: u32,
    /// The window, ms.
    pub per_ms: u64,
}

impl RateLimit {
    /// The window as a duration.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.per_ms)
    }
}

/// How a message body is meant to be rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Plain text.
    Text,
    /// Markdown (DingTalk/WeCom markdown, Feishu post, Slack mrkdwn).
    Markdown,
}

impl Format {
    /// `text` or `markdown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Markdown => "markdown",
        }
    }

    /// Parses `text` / `markdown` (also `md`).
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "text" | "" => Some(Format::Text),
            "markdown" | "md" => Some(Format::Markdown),
            _ => None,
        }
    }
}

/// SMTP settings of an email channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SmtpSpec {
    /// Server host name.
    pub host: String,
    /// Port (default 587; servers with implicit TLS listen on 465).
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// Connect with TLS from the first byte (SMTPS, "implicit TLS" of RFC
    /// 8314, usually port 465, as Tencent Exmail and Aliyun Mail ask)
    /// instead of upgrading a clear connection; `starttls` does not apply
    /// then (default false). Stored only when set, so that a spec without
    /// it stays readable by older replicas.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub implicit_tls: bool,
    /// Upgrade the connection with STARTTLS and refuse to send without it
    /// (default true). `false` (and no `implicit_tls`) sends in clear text:
    /// only for a relay on localhost or a trusted network.
    #[serde(default = "yes")]
    pub starttls: bool,
    /// User to authenticate as, if the server needs it.
    #[serde(default)]
    pub username: Option<String>,
    /// Secret holding the password of `username`.
    #[serde(default)]
    pub password_secret: Option<String>,
    /// Sender address.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
}

fn default_smtp_port() -> u16 {
    587
}

fn yes() -> bool {
    true
}

/// A channel as configured: which provider, which secrets, which project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// Name, unique on the server: 1-63 of `[a-z0-9._-]`.
    pub name: String,
    /// The project that owns it: only its plugins (and its admins) use it.
    pub project: String,
    /// The provider.
    #[serde(rename = "type")]
    pub kind: ChannelKind,
    /// Secret holding the webhook URL with its token (every type but email).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// Secret holding the signing secret (DingTalk "加签" / Feishu "签名校验"), if the robot has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_secret: Option<String>,
    /// SMTP settings (email only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpSpec>,
    /// Plugins of the project that may send through it; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<String>,
    /// Overrides the provider's published limits (at most this many sends per window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl ChannelSpec {
    /// Every problem of the spec, joined; the secrets it names are checked
    /// by the caller (they may be stored later).
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if !valid_name(&self.name) {
            problems.push(format!("name `{}` must be 1-63 of [a-z0-9._-]", self.name));
        }
        if self.project.is_empty() || self.project.len() > 63 {
            problems.push("project must be 1-63 characters".to_string());
        }
        let email = self.kind == ChannelKind::Email;
        match (&self.webhook_secret, email) {
            (None, false) => problems.push(format!(
                "a {} channel needs `webhook_secret`: the secret holding its webhook URL",
                self.kind.as_str()
            )),
            (Some(_), true) => problems.push("an email channel has no `webhook_secret`".into()),
            _ => {}
        }
        if self.sign_secret.is_some()
            && !matches!(self.kind, ChannelKind::Dingtalk | ChannelKind::Feishu)
        {
            problems.push("`sign_secret` applies to dingtalk and feishu channels only".into());
        }
        match (&self.smtp, email) {
            (None, true) => problems.push("an email channel needs `smtp`".into()),
            (Some(_), false) => problems.push("`smtp` applies to email channels only".into()),
            (Some(s), true) => problems.extend(smtp_problems(s)),
            _ => {}
        }
        for s in self.secret_names() {
            if !valid_secret_name(s) {
                problems.push(format!("secret name `{s}` must be 1-128 of [A-Za-z0-9._-]"));
            }
        }
        if let Some(r) = &self.rate_limit
            && (r.max == 0 || r.per_ms == 0 || r.per_ms > 86_400_000)
        {
            problems.push("rate_limit needs max >= 1 and 1 <= per_ms <= 86400000".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("channel `{}`: {}", self.name, problems.join("; ")))
        }
    }

    /// The secrets the spec names.
    pub fn secret_names(&self) -> Vec<&str> {
        let smtp = self
            .smtp
            .as_ref()
            .and_then(|s| s.password_secret.as_deref());
        [
            self.webhook_secret.as_deref(),
            self.sign_secret.as_deref(),
            smtp,
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The rate windows in force.
    pub fn limits(&self) -> Vec<RateLimit> {
        match self.rate_limit {
            Some(r) => vec![r],
            None => self.kind.default_limits(),
        }
    }

    /// Whether `plugin` may send through the channel.
    pub fn allows_plugin(&self, plugin: &str) -> bool {
        self.plugins.is_empty() || self.plugins.iter().any(|p| p == plugin)
    }
}

fn smtp_problems(s: &SmtpSpec) -> Vec<String> {
    let mut p = Vec::new();
    if s.host.is_empty() {
        p.push("smtp.host is empty".to_string());
    }
    if s.to.is_empty() {
        p.push("smtp.to needs at least one recipient".to_string());
    }
    for a in std::iter::once(&s.from).chain(&s.to) {
        if a.parse::<lettre::message::Mailbox>().is_err() {
            p.push(format!("`{a}` is not an email address"));
        }
    }
    if s.password_secret.is_some() != s.username.is_some() {
        p.push("smtp.username and smtp.password_secret go together".to_string());
    }
    p
}

/// `[a-z0-9._-]{1,63}`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}
