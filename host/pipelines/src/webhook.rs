//! Git push webhooks as GitHub, GitLab and Gitea (or Forgejo) send them:
//! their signatures, event kinds, delivery ids and push payloads, reduced to
//! one [`Push`]. Pure: the caller passes the headers and the raw body; the
//! engine ([`crate::engine`]) looks up the pipeline and its secret and
//! starts the run.
//!
//! - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`,
//!   `X-GitHub-Event` (`push`, `ping`, ...), `X-GitHub-Delivery`.
//! - Gitea: `X-Gitea-Signature: <hex HMAC-SHA256(secret, body)>` (Forgejo
//!   also sends `X-Forgejo-*`), `X-Gitea-Event`, `X-Gitea-Delivery`.
//! - GitLab: `X-Gitlab-Token: <secret>`, compared in constant time;
//!   `X-Gitlab-Event` (`Push Hook`, `Tag Push Hook`); `Idempotency-Key`
//!   (GitLab 17.4+, the same on every retry of one delivery), else
//!   `X-Gitlab-Event-UUID`.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::{Provider, PushEvent};

/// Longest delivery id accepted.
pub const MAX_DELIVERY_LEN: usize = 200;

/// Reads a request header by (case-insensitive) name.
pub type Headers<'a> = &'a (dyn Fn(&str) -> Option<String> + Sync);

/// What kind of event a delivery is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A push (branch or tag).
    Push,
    /// Anything else (`ping`, `issues`, `Merge Request Hook`...), by name.
    Other(String),
}

/// A push as the pipeline sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The full ref, `refs/heads/main` or `refs/tags/v1.2.0`.
    pub git_ref: String,
    /// The commit pushed (empty on a deletion).
    pub sha: String,
    /// `owner/name` (GitLab: `group/project`).
    pub repo: String,
    /// Who pushed (login or user name).
    pub pusher: String,
    /// Whether the ref was deleted (nothing to deploy).
    pub deleted: bool,
}

fn first(headers: Headers<'_>, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| headers(n))
}

/// Whether the request is signed with (GitLab: carries) `secret`.
pub fn verify(provider: Provider, headers: Headers<'_>, body: &[u8], secret: &str) -> bool {
    match provider {
        Provider::Github => headers("x-hub-signature-256")
            .as_deref()
            .and_then(|s| s.trim().strip_prefix("sha256="))
            .is_some_and(|hex| hmac_matches(secret, body, hex)),
        Provider::Gitea => first(headers, &["x-gitea-signature", "x-forgejo-signature"])
            .is_some_and(|hex| hmac_matches(secret, body, hex.trim())),
        Provider::Gitlab => headers("x-gitlab-token").is_some_and(|token| {
            // Hashing first makes the comparison constant-time in the length too.
            let (a, b) = (Sha256::digest(token.as_bytes()), Sha256::digest(secret));
            bool::from(a.ct_eq(&b))
        }),
    }
}

/// Whether `hex` is the HMAC-SHA256 of `body` under `secret` (checked in
/// constant time by `verify_slice`).
fn hmac_matches(secret: &str, body: &[u8], hex: &str) -> bool {
    let Ok(given) = hex::decode(hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// The hex HMAC-SHA256 of `body` under `secret`, as GitHub and Gitea send it
/// (GitHub prefixes `sha256=`).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The kind of event delivered.
pub fn event_kind(provider: Provider, headers: Headers<'_>) -> EventKind {
    let event = match provider {
        Provider::Github => headers("x-github-event"),
        Provider::Gitea => first(headers, &["x-gitea-event", "x-forgejo-event"]),
        Provider::Gitlab => headers("x-gitlab-event"),
    }
    .unwrap_or_default();
    let push = match provider {
        Provider::Github | Provider::Gitea => event == "push",
        Provider::Gitlab => event == "Push Hook" || event == "Tag Push Hook",
    };
    if push {
        EventKind::Push
    } else if event.is_empty() {
        EventKind::Other("(no event header)".into())
    } else {
        EventKind::Other(event)
    }
}

/// The delivery id retries of one delivery share.
pub fn delivery_id(provider: Provider, headers: Headers<'_>) -> Option<String> {
    let names: &[&str] = match provider {
        Provider::Github => &["x-github-delivery"],
        Provider::Gitea => &["x-gitea-delivery", "x-forgejo-delivery"],
        Provider::Gitlab => &["idempotency-key", "x-gitlab-event-uuid"],
    };
    first(headers, names)
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A sha of zeros: the ref did not exist before, or no longer does.
fn is_zero(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

/// Reads a push payload. The commit is `head_commit.id` (GitHub, Gitea) or
/// `checkout_sha` (GitLab), the commit a tag points to even when `after` is
/// an annotated tag object; `after` otherwise.
pub fn parse_push(provider: Provider, body: &[u8]) -> Result<Push, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        format!("the payload is not JSON (set the webhook's content type to application/json): {e}")
    })?;
    let need = |path: &[&str]| {
        text(&v, path)
            .map(str::to_string)
            .ok_or_else(|| format!("the push payload has no `{}`", path.join(".")))
    };
    let git_ref = need(&["ref"])?;
    let after = text(&v, &["after"]).unwrap_or_default();
    let (repo, pusher, commit) = match provider {
        Provider::Github => (
            need(&["repository", "full_name"])?,
            text(&v, &["pusher", "name"]).or(text(&v, &["sender", "login"])),
            text(&v, &["head_commit", "id"]),
        ),
        Provider::Gitea => (
            need(&["repository", "full_name"])?,
            text(&v, &["pusher", "login"])
                .or(text(&v, &["pusher", "username"]))
                .or(text(&v, &["sender", "login"])),
            text(&v, &["head_commit", "id"]),
        ),
        Provider::Gitlab => (
            need(&["project", "path_with_namespace"])?,
            text(&v, &["user_username"]).or(text(&v, &["user_name"])),
            text(&v, &["checkout_sha"]),
        ),
    };
    let deleted = is_zero(after) || v.get("deleted").and_then(Value::as_bool) == Some(true);
    let sha = if deleted {
        String::new()
    } else {
        commit.unwrap_or(after).to_string()
    };
    Ok(Push {
        git_ref,
        sha,
        repo,
        pusher: pusher.unwrap_or("unknown").to_string(),
        deleted,
    })
}

impl Push {
    /// What trigger matching needs.
    pub fn event(&self, provider: Provider) -> PushEvent {
        PushEvent {
            provider,
            repo: self.repo.clone(),
            git_ref: self.git_ref.clone(),
        }
    }

    /// The run's `trigger` (see [`crate::expr::TRIGGER_FIELDS`]): `branch`
    /// or `tag` is set, the other is empty.
    pub fn trigger(&self, provider: Provider, delivery: &str) -> Value {
        let branch = self.git_ref.strip_prefix("refs/heads/").unwrap_or_default();
        let tag = self.git_ref.strip_prefix("refs/tags/").unwrap_or_default();
        serde_json::json!({
            "kind": "push",
            "provider": provider.as_str(),
            "repo": self.repo,
            "ref": self.git_ref,
            "branch": branch,
            "tag": tag,
            "sha": self.sha,
            "pusher": self.pusher,
            "delivery": delivery,
            "started_by": self.started_by(),
        })
    }

    /// `push:<pusher>`.
    pub fn started_by(&self) -> String {
        format!("push:{}", self.pusher)
    }
}

#[cfg(test)]
mod tests;
