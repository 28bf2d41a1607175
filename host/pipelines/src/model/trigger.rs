//! Triggers: git pushes (with branch and tag globs), cron schedules in a time
//! zone, and manual starts. Matching a push and computing the next cron time
//! are pure so the webhook and scheduler code can call them directly.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

/// What starts a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Trigger {
    /// A git push to a matching branch or tag.
    Push(PushTrigger),
    /// A cron schedule.
    Cron(CronTrigger),
    /// Started by hand (API, CLI, alert action), with parameters.
    Manual,
}

/// A git hosting provider that sends push webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    /// GitHub (`X-Hub-Signature-256`).
    Github,
    /// GitLab (`X-Gitlab-Token`).
    Gitlab,
    /// Gitea or Forgejo (`X-Gitea-Signature`).
    Gitea,
}

impl Provider {
    /// Every provider.
    pub const ALL: [Provider; 3] = [Provider::Github, Provider::Gitlab, Provider::Gitea];

    /// The name used in pipelines and webhook URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
        }
    }

    /// The provider named `name` (`github`, `gitlab`, `gitea`).
    pub fn parse(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// Push trigger. With neither `branches` nor `tags`, every push matches;
/// with only one of them, only that kind of ref matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushTrigger {
    /// Where the webhook comes from.
    pub provider: Provider,
    /// `owner/name` (GitLab: `group/project`), compared case-insensitively.
    pub repo: String,
    /// Branch globs, e.g. `main`, `release/*` (`*` stops at `/`, `**` does not).
    #[serde(default)]
    pub branches: Vec<String>,
    /// Tag globs, e.g. `v*`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Name of the secret (in the secrets store) that authenticates the
    /// provider's webhook: the HMAC key of GitHub and Gitea, the token of
    /// GitLab. Required; optional here only so that its absence is reported
    /// by validation with the other problems.
    #[serde(default)]
    pub secret: Option<String>,
}

/// A push as received from a webhook, reduced to what matching needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    /// The sending provider.
    pub provider: Provider,
    /// Repository full name.
    pub repo: String,
    /// The full ref, `refs/heads/main` or `refs/tags/v1.2.0`.
    pub git_ref: String,
}

/// Whether `s` can name a stored secret.
fn is_secret_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn glob(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("bad glob {pattern:?}: {e}"))
}

impl PushTrigger {
    /// Problems with the globs, as `(field, message)`.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.repo.trim().is_empty() {
            errors.push(("repo", "must not be empty".to_string()));
        }
        match self.secret.as_deref() {
            None => errors.push((
                "secret",
                "required: the name of the stored secret that signs this provider's webhooks"
                    .to_string(),
            )),
            Some(s) if !is_secret_name(s) => errors.push((
                "secret",
                format!("{s:?} is not a secret name (1-128 of [A-Za-z0-9._-])"),
            )),
            Some(_) => {}
        }
        for (field, list) in [("branches", &self.branches), ("tags", &self.tags)] {
            errors.extend(
                list.iter()
                    .filter_map(|p| glob(p).err())
                    .map(|e| (field, e)),
            );
        }
        errors
    }

    /// Whether `push` starts a run of this trigger. Invalid globs never match.
    pub fn matches(&self, push: &PushEvent) -> bool {
        if push.provider != self.provider || !push.repo.eq_ignore_ascii_case(&self.repo) {
            return false;
        }
        let any = |pats: &[String], name: &str| {
            pats.iter().any(|p| glob(p).is_ok_and(|g| g.is_match(name)))
        };
        let unfiltered = self.branches.is_empty() && self.tags.is_empty();
        if let Some(branch) = push.git_ref.strip_prefix("refs/heads/") {
            unfiltered || any(&self.branches, branch)
        } else if let Some(tag) = push.git_ref.strip_prefix("refs/tags/") {
            unfiltered || any(&self.tags, tag)
        } else {
            false
        }
    }
}

/// A cron schedule evaluated in a time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronTrigger {
    /// Five fields (or six with seconds), plus croner's `L`, `#`, `W`, `@daily`.
    pub schedule: String,
    /// IANA zone name, e.g. `Europe/Berlin`; default `UTC`.
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

impl CronTrigger {
    /// Problems with the schedule or zone, as `(field, message)`.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if let Err(e) = Cron::from_str(&self.schedule) {
            errors.push(("schedule", format!("bad cron {:?}: {e}", self.schedule)));
        }
        if let Err(e) = self.zone() {
            errors.push(("timezone", e));
        }
        errors
    }

    fn zone(&self) -> Result<Tz, String> {
        Tz::from_str(&self.timezone).map_err(|_| {
            format!(
                "unknown time zone {:?} (want e.g. \"Europe/Berlin\")",
                self.timezone
            )
        })
    }

    /// The first fire time strictly after `after_ms` (Unix ms), in ms.
    pub fn next_after(&self, after_ms: u64) -> Result<u64, String> {
        let cron = Cron::from_str(&self.schedule).map_err(|e| e.to_string())?;
        let zone = self.zone()?;
        // From the whole second: croner keeps the start's fraction of a
        // second in what it returns.
        let ms = i64::try_from(after_ms - after_ms % 1000).map_err(|e| e.to_string())?;
        let start: DateTime<Utc> = Utc
            .timestamp_millis_opt(ms)
            .single()
            .ok_or("time out of range")?;
        let next = cron
            .find_next_occurrence(&start.with_timezone(&zone), false)
            .map_err(|e| e.to_string())?;
        u64::try_from(next.timestamp_millis()).map_err(|e| e.to_string())
    }
}
