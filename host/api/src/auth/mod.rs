//! API authentication and authorisation: bearer tokens with roles.
//!
//! * Tokens are `cap_` + 32 random bytes (base64url), shown once when created
//!   and stored only as their SHA-256 (a lookup by hash, so nothing is
//!   compared byte by byte with a secret).
//! * Each token has a global role, roles in single projects, or both:
//!   `viewer` < `operator` < `admin` (see [`crate::trust`]).
//! * [`required_access`] is the one table from route to minimum role and
//!   where it must be held (globally, in the plugin's project, or anywhere,
//!   the handler narrowing it); a route it does not list needs the global
//!   `admin` role (deny by default).
//! * [`guard`] is the middleware that authenticates, rate-limits, authorises
//!   and audits every mutating call (refusals included).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

mod table;

pub use table::{NewToken, TokenInfo, Tokens, generate_secret};

use super::AppState;
use super::error::ApiError;
use super::limits::{RateKey, RateLimiter};
use super::listen::PeerAddr;
use crate::capabilities::AuditRecord;
use crate::store::Store;
use crate::trust::Authority;

/// Name of the admin token that comes from the config (or is generated on
/// first start).
pub const BOOTSTRAP_TOKEN: &str = "bootstrap-admin";

/// What a token may do (the trust model's role).
pub use crate::trust::Role as ApiRole;

/// Who a route is open to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed.
    Public,
    /// This role somewhere (globally or in any project); the handler
    /// narrows it to the project concerned.
    Role(ApiRole),
    /// This role globally.
    Global(ApiRole),
    /// This role in the project owning the plugin named in the path.
    Plugin(ApiRole),
}

#[derive(Clone, Copy)]
enum Rule {
    Public,
    /// Public when `metrics_public` is set, else viewer.
    Metrics,
    Min(ApiRole),
    Global(ApiRole),
    Plugin(ApiRole),
}

/// THE route table: method, path pattern (`{x}` is one path segment) and
/// who may call it. `HEAD` is checked as `GET`. Anything not listed here
/// needs `admin`, so a new route is closed until it is added.
const ROUTES: &[(&str, &str, Rule)] = {
    use ApiRole::{Admin, Operator, Viewer};
    use Rule::{Global, Metrics, Min, Plugin, Public};
    &[
        // Probes and scraping.
        ("GET", "/healthz", Public),
        ("GET", "/readyz", Public),
        ("GET", "/metrics", Metrics),
        ("GET", "/openapi.json", Min(Viewer)),
        // Plugins: the listing shows the caller's projects; publishing
        // needs the operator role in the manifest's project (checked by
        // the registry); the rest needs a role in the plugin's project.
        ("GET", "/v1/plugins", Min(Viewer)),
        ("POST", "/v1/plugins", Min(Operator)),
        ("GET", "/v1/plugins/{name}", Plugin(Viewer)),
        ("DELETE", "/v1/plugins/{name}", Plugin(Admin)),
        ("GET", "/v1/plugins/{name}/versions", Plugin(Viewer)),
        (
            "DELETE",
            "/v1/plugins/{name}/versions/{version}",
            Plugin(Admin),
        ),
        ("PUT", "/v1/plugins/{name}/active", Plugin(Operator)),
        ("POST", "/v1/plugins/{name}/rollback", Plugin(Operator)),
        ("POST", "/v1/plugins/{name}/invoke", Plugin(Operator)),
        ("GET", "/v1/plugins/{name}/invocations", Plugin(Viewer)),
        // Projects, ceilings and approvals.
        ("GET", "/v1/projects", Min(Viewer)),
        ("POST", "/v1/projects", Global(Admin)),
        ("DELETE", "/v1/projects/{name}", Global(Admin)),
        ("GET", "/v1/ceilings", Min(Viewer)),
        ("PUT", "/v1/ceilings/{project}", Global(Admin)),
        ("DELETE", "/v1/ceilings/{project}", Global(Admin)),
        ("PUT", "/v1/ceilings/{project}/{plugin}", Global(Admin)),
        ("DELETE", "/v1/ceilings/{project}/{plugin}", Global(Admin)),
        ("GET", "/v1/approvals", Min(Viewer)),
        ("GET", "/v1/approvals/{id}", Min(Viewer)),
        // The gate checks the approver role each approval asks for
        // (admin for plugin versions, as the pipeline says for its gates).
        ("POST", "/v1/approvals/{id}/approve", Min(Operator)),
        ("POST", "/v1/approvals/{id}/reject", Min(Operator)),
        // Pipelines and runs: the engine checks the role in the pipeline's
        // project.
        ("GET", "/v1/pipelines", Min(Viewer)),
        ("GET", "/v1/pipelines/{name}", Min(Viewer)),
        ("PUT", "/v1/pipelines/{name}", Min(Operator)),
        ("DELETE", "/v1/pipelines/{name}", Min(Admin)),
        ("POST", "/v1/pipelines/{name}/runs", Min(Operator)),
        ("GET", "/v1/runs", Min(Viewer)),
        ("GET", "/v1/runs/{id}", Min(Viewer)),
        ("GET", "/v1/runs/{id}/log", Min(Viewer)),
        ("POST", "/v1/runs/{id}/cancel", Min(Operator)),
        ("POST", "/v1/runs/{id}/rerun", Min(Operator)),
        // Provisioned instances: the engine checks the role in the
        // instance's project (operator to plan and apply, admin to destroy).
        ("GET", "/v1/provisions", Min(Viewer)),
        ("POST", "/v1/provisions", Min(Operator)),
        ("GET", "/v1/provisions/{name}", Min(Viewer)),
        ("POST", "/v1/provisions/{name}/plans", Min(Operator)),
        ("GET", "/v1/provisions/{name}/plans/{id}", Min(Viewer)),
        (
            "POST",
            "/v1/provisions/{name}/plans/{id}/apply",
            Min(Operator),
        ),
        ("POST", "/v1/provisions/{name}/destroy", Min(Operator)),
        ("POST", "/v1/provisions/{name}/drift", Min(Operator)),
        // Git push webhooks: providers cannot send a bearer token; each
        // delivery is verified with the pipeline's own secret (hooks.rs).
        ("POST", "/v1/hooks/{provider}/{pipeline}", Public),
        // Notification channels: the handlers check the role in the
        // channel's project (admin to configure, operator to send).
        ("GET", "/v1/notify/channels", Min(Viewer)),
        ("GET", "/v1/notify/channels/{name}", Min(Viewer)),
        ("PUT", "/v1/notify/channels/{name}", Min(Admin)),
        ("DELETE", "/v1/notify/channels/{name}", Min(Admin)),
        ("POST", "/v1/notify/channels/{name}/test", Min(Operator)),
        ("POST", "/v1/notify/channels/{name}/send", Min(Operator)),
        ("GET", "/v1/notify/deliveries", Min(Viewer)),
        ("GET", "/v1/notify/deliveries/{id}", Min(Viewer)),
        // Alerts: Alertmanager authenticates with an operator token as
        // bearer or basic-auth password, checked by the receiver itself
        // (alerts_api.rs), which also audits refusals. The engine checks
        // roles in each route's project.
        ("POST", "/v1/alerts/alertmanager/{receiver}", Public),
        ("GET", "/v1/alerts/routes", Min(Viewer)),
        ("GET", "/v1/alerts/routes/{name}", Min(Viewer)),
        ("PUT", "/v1/alerts/routes/{name}", Min(Operator)),
        ("DELETE", "/v1/alerts/routes/{name}", Min(Admin)),
        ("GET", "/v1/alerts/groups", Min(Viewer)),
        ("GET", "/v1/alerts/groups/{id}", Min(Viewer)),
        // Audit log.
        ("GET", "/v1/audit", Global(Viewer)),
        // Tokens and secrets.
        ("GET", "/v1/tokens", Global(Admin)),
        ("POST", "/v1/tokens", Global(Admin)),
        ("DELETE", "/v1/tokens/{name}", Global(Admin)),
        ("GET", "/v1/secrets", Global(Admin)),
        ("PUT", "/v1/secrets/{name}", Global(Admin)),
        ("DELETE", "/v1/secrets/{name}", Global(Admin)),
    ]
};

/// The minimum access `method path` needs (see [`ROUTES`]); `admin` for
/// anything not listed.
pub fn required_access(method: &Method, path: &str, metrics_public: bool) -> Access {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    let rule = ROUTES
        .iter()
        .find(|(m, pattern, _)| *m == method && path_matches(pattern, path))
        .map(|(_, _, rule)| *rule)
        .unwrap_or(Rule::Global(ApiRole::Admin));
    match rule {
        Rule::Public => Access::Public,
        Rule::Metrics if metrics_public => Access::Public,
        Rule::Metrics => Access::Role(ApiRole::Viewer),
        Rule::Min(role) => Access::Role(role),
        Rule::Global(role) => Access::Global(role),
        Rule::Plugin(role) => Access::Plugin(role),
    }
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let (mut p, mut s) = (pattern.split('/'), path.split('/'));
    loop {
        match (p.next(), s.next()) {
            (None, None) => return true,
            (Some(want), Some(got)) => {
                let wildcard = want.starts_with('{') && want.ends_with('}');
                if !(wildcard && !got.is_empty() || want == got) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// The plugin named by a `/v1/plugins/{name}/...` path.
fn plugin_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/plugins/")?.split('/').next()
}

/// Calls that change something and are therefore audited.
pub fn is_mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Bad name, role or token value.
    #[error("{0}")]
    Invalid(String),
    /// No such (active) token.
    #[error("{0}")]
    NotFound(String),
    /// The name is taken, or the change would lock everyone out.
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("token storage: {0}")]
    Storage(#[from] crate::store::sql::DbError),
}

/// The authenticated caller of a request (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Token name.
    pub name: String,
    /// Global role, if any.
    pub role: Option<ApiRole>,
    /// Roles in single projects.
    pub projects: BTreeMap<String, ApiRole>,
}

impl Caller {
    /// The audit actor: `token:<name>`.
    pub fn actor(&self) -> String {
        format!("token:{}", self.name)
    }

    /// The caller as the trust model sees it.
    pub fn authority(&self) -> Authority {
        Authority {
            actor: self.actor(),
            global: self.role,
            projects: self.projects.clone(),
        }
    }
}

/// Everything the auth middleware needs.
pub struct Auth {
    /// The tokens.
    pub tokens: Tokens,
    /// Per-token (and, for failed authentication, per-address) rate limits.
    pub limiter: RateLimiter,
    /// Serve `/metrics` without a token.
    pub metrics_public: bool,
}

impl Auth {
    /// Loads the tokens and makes sure an admin can get in (see
    /// [`Tokens::bootstrap`]). A generated admin token is printed once to
    /// stdout, never to the log.
    pub fn start(
        store: Arc<Store>,
        admin_token: Option<&str>,
        metrics_public: bool,
        limits: &super::ApiLimits,
    ) -> Result<Auth, AuthError> {
        let tokens = Tokens::load(store)?;
        if let Some(secret) = tokens.bootstrap(admin_token)? {
            tracing::warn!(
                token = BOOTSTRAP_TOKEN,
                "no admin API token existed: generated one and printed it ONCE to stdout; \
                 set admin_token or CAPSTAN_ADMIN_TOKEN to choose it yourself"
            );
            println!(
                "\n\
                 ================================================================\n\
                 Capstan generated the first admin API token (`{BOOTSTRAP_TOKEN}`).\n\
                 It is shown only this once; store it now:\n\n\
                 \x20   {secret}\n\n\
                 Use it as `Authorization: Bearer <token>` or CAPSTAN_TOKEN.\n\
                 ================================================================\n"
            );
        }
        Ok(Auth {
            tokens,
            limiter: RateLimiter::new(limits.rate_limit_per_sec, limits.rate_limit_burst),
            metrics_public,
        })
    }
}

enum Presented<'a> {
    Missing,
    Malformed,
    Token(&'a str),
}

fn bearer(headers: &HeaderMap) -> Presented<'_> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Presented::Missing;
    };
    let Ok(value) = value.to_str() else {
        return Presented::Malformed;
    };
    match value.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Presented::Token(token.trim())
        }
        _ => Presented::Malformed,
    }
}

/// Audits an API call. Accepted mutations (other than invocations, which
/// change no server state) are stored before the response goes out; refusals
/// and invocations go through the batched writer.
async fn audit(
    state: &AppState,
    actor: String,
    method: &Method,
    path: &str,
    allowed: bool,
    status: u16,
) {
    let record = AuditRecord {
        id: 0,
        at_ms: 0,
        actor,
        plugin: None,
        version: None,
        invocation: None,
        capability: "api".into(),
        target: path.into(),
        verb: method.as_str().into(),
        allowed,
        outcome: status.to_string(),
        detail: serde_json::Value::Null,
    };
    let audit = &state.registry.runtime().env().audit;
    if allowed && !path.ends_with("/invoke") {
        if let Err(e) = audit.record_durable(record).await {
            tracing::error!("{e}");
        }
    } else {
        audit.record(record);
    }
}

fn too_many_requests(retry_after: u64) -> Response {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests; slow down",
    )
    .retry_after(retry_after)
    .into_response()
}

/// The middleware: route table -> token -> rate limit -> role -> handler,
/// auditing every mutating call with its outcome (401 and 403 included).
pub async fn guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let auth = state.auth.clone();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let need = match required_access(&method, &path, auth.metrics_public) {
        Access::Public => return next.run(req).await,
        other => other,
    };
    let mutating = is_mutating(&method);
    let (caller, invalid) = match bearer(req.headers()) {
        Presented::Missing => (None, false),
        Presented::Malformed => (None, true),
        Presented::Token(t) => {
            let c = auth.tokens.authenticate(t);
            let invalid = c.is_none();
            (c, invalid)
        }
    };
    let Some(caller) = caller else {
        // Failed attempts share a bucket per client address.
        let peer = req
            .extensions()
            .get::<ConnectInfo<PeerAddr>>()
            .map(|c| c.0.0.ip());
        if let Err(retry) = auth.limiter.check(RateKey::Anonymous(peer)) {
            return too_many_requests(retry);
        }
        let (message, challenge) = if invalid {
            (
                "invalid or revoked bearer token",
                r#"Bearer realm="capstan", error="invalid_token""#,
            )
        } else {
            (
                "this call needs a bearer token (Authorization: Bearer <token>)",
                r#"Bearer realm="capstan""#,
            )
        };
        let mut response = ApiError::unauthorized(message).into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        if mutating {
            audit(&state, "anonymous".into(), &method, &path, false, 401).await;
        }
        return response;
    };
    // Admin tokens are exempt so an administrator can always get in.
    if caller.role != Some(ApiRole::Admin)
        && let Err(retry) = auth.limiter.check(RateKey::Token(caller.name.clone()))
    {
        return too_many_requests(retry);
    }
    let who = caller.authority();
    let (has, scope) = match need {
        Access::Public => unreachable!("handled above"),
        Access::Role(_) => (who.best_role(), "in any project".to_string()),
        Access::Global(_) => (who.global, "globally".to_string()),
        Access::Plugin(_) => {
            let project = plugin_of(&path)
                .map(|p| state.registry.gate().owner(p))
                .unwrap_or_default();
            (who.role_in(&project), format!("in project `{project}`"))
        }
    };
    let need_role = match need {
        Access::Role(r) | Access::Global(r) | Access::Plugin(r) => r,
        Access::Public => unreachable!("handled above"),
    };
    if has < Some(need_role) {
        let has_text = has.map_or("no role".to_string(), |r| format!("`{r}`"));
        let response = ApiError::forbidden(format!(
            "{method} {path} needs the `{need_role}` role {scope}; token `{}` has {has_text} there",
            caller.name
        ))
        .with_details(
            serde_json::json!({ "required_role": need_role, "role": has, "scope": scope }),
        )
        .into_response();
        if mutating {
            audit(&state, caller.actor(), &method, &path, false, 403).await;
        }
        return response;
    }
    let actor = caller.actor();
    req.extensions_mut().insert(caller);
    let response = next.run(req).await;
    if mutating {
        audit(
            &state,
            actor,
            &method,
            &path,
            true,
            response.status().as_u16(),
        )
        .await;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::OpenApi;

    fn access(method: Method, path: &str) -> Access {
        required_access(&method, path, false)
    }

    #[test]
    fn route_table_decides_and_denies_by_default() {
        use ApiRole::*;
        assert_eq!(access(Method::GET, "/healthz"), Access::Public);
        assert_eq!(access(Method::HEAD, "/readyz"), Access::Public);
        assert_eq!(access(Method::GET, "/metrics"), Access::Role(Viewer));
        assert_eq!(
            required_access(&Method::GET, "/metrics", true),
            Access::Public
        );
        assert_eq!(access(Method::GET, "/v1/plugins"), Access::Role(Viewer));
        assert_eq!(access(Method::POST, "/v1/plugins"), Access::Role(Operator));
        assert_eq!(
            access(Method::POST, "/v1/plugins/x/invoke"),
            Access::Plugin(Operator)
        );
        assert_eq!(
            access(Method::DELETE, "/v1/plugins/x"),
            Access::Plugin(Admin)
        );
        assert_eq!(access(Method::POST, "/v1/tokens"), Access::Global(Admin));
        assert_eq!(access(Method::GET, "/v1/audit"), Access::Global(Viewer));
        // The gate checks each approval's own approver role.
        assert_eq!(
            access(Method::POST, "/v1/approvals/x/approve"),
            Access::Role(Operator)
        );
        assert_eq!(
            access(Method::PUT, "/v1/pipelines/x"),
            Access::Role(Operator)
        );
        assert_eq!(
            access(Method::DELETE, "/v1/pipelines/x"),
            Access::Role(Admin)
        );
        assert_eq!(access(Method::GET, "/v1/runs/x/log"), Access::Role(Viewer));
        assert_eq!(
            access(Method::POST, "/v1/hooks/github/release"),
            Access::Public
        );
        assert_eq!(
            access(Method::GET, "/v1/hooks/github/release"),
            Access::Global(Admin),
            "only the POST is public"
        );
        // Not listed: admin only.
        for (m, p) in [
            (Method::GET, "/v1/unknown"),
            (Method::POST, "/healthz"),
            (Method::PATCH, "/v1/plugins/x"),
            (Method::GET, "/v1/plugins/"),
            (Method::GET, "/v1/plugins//invocations"),
            (Method::GET, "//v1/plugins"),
            (Method::POST, "/v1/plugins/x/invoke/more"),
            (Method::OPTIONS, "/v1/plugins"),
        ] {
            assert_eq!(access(m.clone(), p), Access::Global(Admin), "{m} {p}");
        }
    }

    #[test]
    fn every_documented_route_has_an_explicit_rule() {
        let doc = super::super::ApiDoc::openapi();
        for (path, item) in &doc.paths.paths {
            let methods = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PATCH", item.patch.is_some()),
            ];
            for (m, present) in methods {
                if present {
                    assert!(
                        ROUTES.iter().any(|(rm, rp, _)| *rm == m && *rp == path),
                        "{m} {path} is documented but not in the route table"
                    );
                }
            }
        }
    }
}
