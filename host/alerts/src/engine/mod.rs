//! The alerts engine of one replica: receives deliveries (stored before
//! the answer), keeps routes (config and API), answers history queries,
//! and runs the shard workers ([`worker`]) that hand new alerts to
//! handler plugins and carry out their actions ([`actions`]).

mod actions;
mod handoff;
mod silences;
mod worker;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use capstan_registry::registry::Registry;
use capstan_registry::trust::{Authority, Role};
use capstan_runtime::manifest::Role as PluginRole;
use capstan_store::ids;

use crate::model::Webhook;
use crate::routes::{self, Route};
use crate::store::history::{ActionRecord, GroupFilter, GroupSummary};
use crate::store::{AlertStore, Ingested};
use crate::{AlertMetrics, AlertsConfig, AlertsError, Notifier, PipelineTrigger};

/// A route and where it comes from.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RouteView {
    /// The route.
    #[serde(flatten)]
    pub route: Route,
    /// `config` (read-only over the API) or `api`.
    pub source: String,
}

/// The alerts engine.
pub struct Engine {
    db: AlertStore,
    registry: Arc<Registry>,
    config: AlertsConfig,
    replica: String,
    metrics: AlertMetrics,
    notifier: Mutex<Option<Arc<dyn Notifier>>>,
    pipelines: Mutex<Option<Arc<dyn PipelineTrigger>>>,
    wake: Arc<tokio::sync::Notify>,
    ingest: tokio::sync::Semaphore,
    backlog: AtomicI64,
    handoff: handoff::Handoff,
    http: reqwest::Client,
}

impl Engine {
    /// Starts the engine: its shard workers and retention. The process
    /// must have a rustls crypto provider installed (the binary installs ring).
    pub fn start(
        registry: Arc<Registry>,
        mut config: AlertsConfig,
        replica: String,
        metrics: AlertMetrics,
    ) -> Arc<Engine> {
        config.shards = config.shards.clamp(1, 64);
        for r in &config.routes {
            if let Err(e) = r.check() {
                tracing::error!("alerts config: {e}; the route is ignored");
            }
        }
        config.routes.retain(|r| r.check().is_ok());
        let engine = Arc::new(Engine {
            db: AlertStore::new(registry.store().clone()),
            registry,
            ingest: tokio::sync::Semaphore::new(config.max_ingest_in_flight.max(1)),
            config,
            replica,
            metrics,
            notifier: Mutex::default(),
            pipelines: Mutex::default(),
            wake: Arc::new(tokio::sync::Notify::new()),
            backlog: AtomicI64::new(0),
            handoff: handoff::Handoff::default(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        });
        worker::spawn(&engine);
        engine
    }

    /// The engine's tables.
    pub fn db(&self) -> &AlertStore {
        &self.db
    }

    /// Largest webhook body accepted, bytes.
    pub fn max_body_bytes(&self) -> usize {
        self.config.max_body_bytes
    }

    /// Wires notification delivery (`notify` actions fail with a clear
    /// reason until this is called).
    pub fn set_notifier(&self, n: Arc<dyn Notifier>) {
        *self.notifier.lock().unwrap_or_else(|e| e.into_inner()) = Some(n);
    }

    /// Wires pipeline starts (`run-pipeline` actions fail until this is called).
    pub fn set_pipelines(&self, p: Arc<dyn PipelineTrigger>) {
        *self.pipelines.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    fn notifier(&self) -> Option<Arc<dyn Notifier>> {
        self.notifier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn pipelines(&self) -> Option<Arc<dyn PipelineTrigger>> {
        self.pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stores a delivery posted to `receiver` and returns once it is
    /// committed; the handling happens later, off the request.
    pub async fn receive(&self, receiver: &str, body: &[u8]) -> Result<Ingested, AlertsError> {
        let Ok(_permit) = self.ingest.try_acquire() else {
            self.metrics.delivery("overloaded");
            return Err(AlertsError::Overloaded {
                why: format!(
                    "{} deliveries are being stored already; retry shortly",
                    self.config.max_ingest_in_flight
                ),
                retry_after: 1,
            });
        };
        let backlog = self.backlog.load(Ordering::Relaxed);
        if backlog >= self.config.max_backlog {
            self.metrics.delivery("overloaded");
            return Err(AlertsError::Overloaded {
                why: format!("{backlog} alert groups wait to be handled; retry later"),
                retry_after: 5,
            });
        }
        if !valid_receiver(receiver) {
            self.metrics.delivery("invalid");
            return Err(AlertsError::Invalid(
                "the receiver must be 1 to 128 characters of [A-Za-z0-9._-]".into(),
            ));
        }
        let hook = Webhook::parse(body).map_err(|e| {
            self.metrics.delivery("invalid");
            AlertsError::Invalid(e.0)
        })?;
        let raw = std::str::from_utf8(body)
            .map_err(|_| AlertsError::Invalid("the body is not UTF-8".into()))?;
        let started = Instant::now();
        let id = ids::new_id();
        let shard = hook.shard(self.config.shards);
        let stored = self
            .db
            .ingest(&id, receiver, &hook, raw, shard)
            .inspect_err(|_| {
                self.metrics.delivery("error");
            })?;
        self.metrics.ingested(started.elapsed().as_secs_f64());
        self.metrics
            .alerts(stored.new_alerts, stored.alerts - stored.new_alerts);
        if stored.state == "pending" {
            self.metrics.delivery("stored");
            self.backlog.fetch_add(1, Ordering::Relaxed);
            let all_new = stored.new_alerts == stored.alerts;
            self.handoff.put(&id, handoff::Fresh { hook, all_new });
            self.wake.notify_waiters();
        } else {
            self.metrics.delivery("duplicate");
        }
        Ok(stored)
    }

    /// Counts a delivery refused at the edge (authentication, size).
    pub fn refused(&self, result: &str) {
        self.metrics.delivery(result);
    }

    /// Every route, in the order they are tried: config routes and stored ones.
    pub fn routes(&self) -> Result<Vec<RouteView>, AlertsError> {
        let mut all: Vec<RouteView> = self
            .config
            .routes
            .iter()
            .map(|r| RouteView {
                route: r.clone(),
                source: "config".into(),
            })
            .collect();
        for r in self.db.routes()? {
            if !self.config.routes.iter().any(|c| c.name == r.name) {
                all.push(RouteView {
                    route: r,
                    source: "api".into(),
                });
            }
        }
        all.sort_by(|a, b| (a.route.order, &a.route.name).cmp(&(b.route.order, &b.route.name)));
        Ok(all)
    }

    /// The routes `who` may see (a role in their project).
    pub fn routes_for(&self, who: &Authority) -> Result<Vec<RouteView>, AlertsError> {
        Ok(self
            .routes()?
            .into_iter()
            .filter(|r| who.role_in(&r.route.project).is_some())
            .collect())
    }

    /// Stores a route (operator of its project); returns whether it is new.
    pub async fn put_route(&self, route: Route, who: &Authority) -> Result<bool, AlertsError> {
        route.check().map_err(AlertsError::Invalid)?;
        require(who, &route.project, Role::Operator, "store alert routes")?;
        if self.config.routes.iter().any(|c| c.name == route.name) {
            return Err(AlertsError::Conflict(format!(
                "route `{}` comes from the config file; change it there",
                route.name
            )));
        }
        for h in &route.handlers {
            self.check_handler(&route, h)?;
        }
        let new = self.db.put_route(&route, &who.actor).map_err(|e| match e {
            capstan_store::StoreError::Conflict(m) => AlertsError::Conflict(m),
            other => AlertsError::Store(other),
        })?;
        let detail = serde_json::to_value(&route).unwrap_or_default();
        self.registry
            .audit_change(who, "alert.route.put", &route.name, detail)
            .await;
        Ok(new)
    }

    /// A handler must be a loaded alert-handler plugin of the route's project.
    fn check_handler(&self, route: &Route, plugin: &str) -> Result<(), AlertsError> {
        let at = |m: String| {
            AlertsError::Invalid(format!("route `{}`: handler `{plugin}`: {m}", route.name))
        };
        let slot = self
            .registry
            .get_slot(plugin)
            .map_err(|_| at("no such plugin".into()))?;
        if let Some(p) = slot.active()
            && p.manifest.role != PluginRole::AlertHandler
        {
            return Err(at(format!(
                "is a {} plugin, not an alert-handler",
                p.manifest.role.as_str()
            )));
        }
        let owner = self.registry.gate().owner(plugin);
        if owner != route.project {
            return Err(at(format!(
                "belongs to project `{owner}`, not to the route's project `{}`",
                route.project
            )));
        }
        Ok(())
    }

    /// Deletes a stored route (admin of its project).
    pub async fn delete_route(&self, name: &str, who: &Authority) -> Result<(), AlertsError> {
        let route = self
            .routes()?
            .into_iter()
            .find(|r| r.route.name == name)
            .ok_or_else(|| AlertsError::NotFound(format!("no alert route named `{name}`")))?;
        require(
            who,
            &route.route.project,
            Role::Admin,
            "delete alert routes",
        )?;
        if route.source == "config" {
            return Err(AlertsError::Conflict(format!(
                "route `{name}` comes from the config file; remove it there"
            )));
        }
        self.db.delete_route(name)?;
        let detail = serde_json::json!({ "name": name, "project": route.route.project });
        self.registry
            .audit_change(who, "alert.route.delete", name, detail)
            .await;
        Ok(())
    }

    /// Groups `who` may see: all for a global role, else those routed to
    /// their projects.
    pub fn groups(
        &self,
        mut filter: GroupFilter,
        who: &Authority,
    ) -> Result<Vec<GroupSummary>, AlertsError> {
        if who.global.is_none() {
            filter.projects = Some(who.projects.keys().cloned().collect());
        }
        Ok(self.db.list_groups(&filter)?)
    }

    /// One group, its alerts (each marked new or seen before) and actions.
    pub fn group(&self, id: &str, who: &Authority) -> Result<GroupDetail, AlertsError> {
        let missing = || AlertsError::NotFound(format!("no alert group `{id}`"));
        let summary = self.db.group_summary(id)?.ok_or_else(missing)?;
        if who.global.is_none() && !summary.projects.iter().any(|p| who.role_in(p).is_some()) {
            return Err(missing());
        }
        let row = self.db.group(id)?.ok_or_else(missing)?;
        let new = self.db.new_alerts(id)?;
        let actions = self.db.actions_of(id)?;
        Ok(GroupDetail {
            summary,
            hook: row.hook,
            new,
            actions,
        })
    }
}

/// A group as received, with what was new in it and what was done.
pub struct GroupDetail {
    /// The stored summary.
    pub summary: GroupSummary,
    /// The webhook as received.
    pub hook: Webhook,
    /// `(fingerprint, status, startsAt)` of the alerts it brought first.
    pub new: Vec<(String, String, String)>,
    /// The actions recorded, in order.
    pub actions: Vec<ActionRecord>,
}

fn valid_receiver(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 128
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Refuses unless `who` holds `role` in `project`.
fn require(who: &Authority, project: &str, role: Role, what: &str) -> Result<(), AlertsError> {
    if who.role_in(project).is_some_and(|r| r >= role) {
        return Ok(());
    }
    Err(AlertsError::Forbidden(format!(
        "{}: to {what} of project `{project}` you need the `{role}` role there",
        who.actor
    )))
}

/// Routes sorted the way they are tried.
pub(crate) fn sorted(mut all: Vec<Route>) -> Vec<Route> {
    routes::sort(&mut all);
    all
}
