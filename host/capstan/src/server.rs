//! Assembling and running the server: store, runtime, registry, watcher, API.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::listen::{EdgeListener, PeerAddr};
use crate::api::{self, AppState};
use crate::capabilities::kube::Clusters;
use crate::capabilities::secrets::{KeySource, SecretBox};
use crate::capabilities::{Audit, CapabilityEnv};
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::registry::{Registry, Source};
use crate::runtime::Runtime;
use crate::store::DataDirLock;

/// A started server.
pub struct Server {
    /// The pipelines engine.
    pub pipelines: Arc<crate::pipelines::engine::Engine>,
    /// The alerts engine.
    pub alerts: Arc<crate::alerts::Engine>,
    /// The provisioning engine.
    pub provisioning: Arc<crate::provisioning::Engine>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its registry.
    pub registry: Arc<Registry>,
    /// Notification channels and their deliveries.
    pub notify: Arc<capstan_notify::Notifier>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    drain_delay: std::time::Duration,
    _watcher: Option<notify::RecommendedWatcher>,
    _pipelines_watcher: Option<notify::RecommendedWatcher>,
    _lock: DataDirLock,
}

impl Server {
    /// Opens the store, builds the runtime, binds the listener, loads every
    /// stored plugin, seeds the bundled ones on first start, and starts
    /// watching the plugins directory. `/healthz` answers while plugins load.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
        config.validate()?;
        // The alerts engine's HTTP client (silences) is reqwest over rustls
        // without a provider of its own: the process uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let lock = DataDirLock::acquire(&config.data_dir)?;
        let store = Arc::new(config.open_store().context("opening the store")?);
        // Before loading anything, so that no change of another replica is missed.
        let changes = store.subscribe();
        let key = KeySource::resolve(
            config.secrets_key.as_deref(),
            config.secrets_key_file.as_deref(),
            &config.data_dir,
        )?;
        let secrets = SecretBox::open(&key, &store)?;
        let audit = Audit::start(store.clone());
        audit.start_retention(config.audit.retention());
        let env = Arc::new(CapabilityEnv {
            store: store.clone(),
            audit: audit.clone(),
            secrets,
            kube: Clusters::new(config.kube.clusters.clone()),
            tls: match &config.http.ca_file {
                Some(path) => crate::capabilities::http::TlsTrust::with_ca_file(path)
                    .map_err(|e| anyhow::anyhow!("[http] ca_file: {e}"))?,
                None => Default::default(),
            },
        });
        let runtime = Arc::new(
            Runtime::new(config.runtime(), env)
                .map_err(|e| anyhow::anyhow!("creating the Wasm engine: {e:#}"))?,
        );
        let mut metrics = Metrics::new();
        metrics.register_audit(audit.stats());
        let pipeline_metrics = crate::pipelines::engine::PipelineMetrics::default();
        pipeline_metrics.register(&mut metrics);
        let notify_metrics = capstan_notify::NotifyMetrics::default();
        notify_metrics.register(&mut metrics);
        let alert_metrics = crate::alerts::AlertMetrics::default();
        alert_metrics.register(&mut metrics);
        let provision_metrics = crate::provisioning::ProvisionMetrics::default();
        provision_metrics.register(&mut metrics);
        let metrics = Arc::new(metrics);
        let registry = Arc::new(Registry::new(runtime, store.clone(), metrics));
        seed_ceilings(&registry, &config).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let tls = match (&config.api.tls_cert, &config.api.tls_key) {
            (Some(cert), Some(key)) => Some(api::tls::acceptor(cert, key)?),
            (None, None) => None,
            _ => anyhow::bail!("api.tls_cert and api.tls_key must be set together"),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = EdgeListener::new(listener, tls, config.api.max_connections)?;
        let limits = config.api_limits();
        let auth = api::auth::Auth::start(
            store.clone(),
            config.admin_token.as_deref(),
            config.api.metrics_public,
            &limits,
        )
        .context("preparing API tokens")?;
        let auth = Arc::new(auth);
        let replica = replica_id(&config.data_dir)?;
        let mut notify_config = config.notify.config(replica.clone());
        // Email and https webhooks trust `[http] ca_file` too (checked above).
        if let Some(path) = &config.http.ca_file {
            notify_config.ca_pem = std::fs::read(path)
                .with_context(|| format!("[http] ca_file: reading {}", path.display()))?;
        }
        let notify = capstan_notify::Notifier::start(
            store.clone(),
            Arc::new(capstan_notify::EnvSecrets(registry.runtime().env().clone())),
            notify_config,
            notify_metrics,
        );
        notify
            .seed(&config.notify.channels)
            .context("storing the config file's notify channels")?;
        let pipelines = crate::pipelines::engine::Engine::start(
            registry.clone(),
            crate::pipelines::engine::EngineConfig {
                replica: replica.clone(),
                max_running: config.pipelines_max_running.max(1),
                ..Default::default()
            },
            pipeline_metrics,
        );
        let sources = crate::sources::Sources::new(registry.clone(), config.metrics.defaults());
        let alerts = crate::alerts::Engine::start(
            registry.clone(),
            config.alerts.clone(),
            replica.clone(),
            alert_metrics,
        );
        alerts.set_pipelines(crate::alerts_wiring::pipelines(&pipelines));
        alerts.set_notifier(crate::alerts_wiring::notifier(&notify));
        let p = &config.provisioning;
        let provisioning = crate::provisioning::Engine::start(
            registry.clone(),
            crate::provisioning::EngineConfig {
                replica: replica.clone(),
                approval_clusters: p.approval_clusters.clone(),
                approvals_required: p.approvals_required,
                wait_timeout: std::time::Duration::from_secs(p.wait_timeout_secs),
                drift_interval: std::time::Duration::from_secs(p.drift_interval_secs),
                ..Default::default()
            },
            provision_metrics,
        );
        let state = AppState {
            registry: registry.clone(),
            limits,
            auth: auth.clone(),
            pipelines: pipelines.clone(),
            notify: notify.clone(),
            sources: sources.clone(),
            alerts: alerts.clone(),
            provisioning: provisioning.clone(),
        };
        let (shutdown, mut rx) = tokio::sync::watch::channel(false);
        let mut stop_sources = shutdown.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = sources.run_scheduler() => {}
                _ = stop_sources.wait_for(|stop| *stop) => {}
            }
        });
        let app = api::router(state).into_make_service_with_connect_info::<PeerAddr>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await
                .context("serving HTTP")
        });
        tracing::info!(%addr, %scheme, data_dir = %config.data_dir.display(), "listening");

        let loaded = registry.load_all().await?;
        tracing::info!(plugins = loaded, "registry loaded");
        if config.bundled_plugins {
            seed_bundled(&registry, &config).await;
        }
        let plugins_dir = config.plugins_dir();
        let watcher = crate::registry::watch_directory(registry.clone(), plugins_dir.clone())
            .await
            .with_context(|| format!("watching {}", plugins_dir.display()))?;
        tracing::info!(dir = %plugins_dir.display(), "watching plugins directory");
        let pipelines_dir = config.pipelines_dir();
        let pipelines_watcher = pipelines
            .watch_directory(pipelines_dir.clone())
            .await
            .with_context(|| format!("watching {}", pipelines_dir.display()))?;
        tracing::info!(dir = %pipelines_dir.display(), "watching pipelines directory");
        if let Some(changes) = changes {
            let stop = shutdown.subscribe();
            tokio::spawn(follow_replicas(registry.clone(), auth, changes, stop));
        }
        registry.mark_ready();
        Ok(Server {
            pipelines,
            notify,
            alerts,
            provisioning,
            addr,
            registry,
            shutdown,
            task,
            drain_delay: std::time::Duration::from_millis(config.api.drain_delay_ms),
            _watcher: Some(watcher),
            _pipelines_watcher: Some(pipelines_watcher),
            _lock: lock,
        })
    }

    /// Stops accepting connections, lets requests in flight finish, writes
    /// out the audit records they produced, and returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        let served = self.task.await.context("server task")?;
        self.registry.runtime().env().audit.flush().await;
        served
    }

    /// Runs until SIGTERM or Ctrl-C, then drains: `/readyz` answers 503
    /// for `drain_delay_ms` while requests are still served (a second
    /// signal cuts it short), then shuts down gracefully.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await;
        self.registry.start_draining();
        tracing::info!(
            delay_ms = self.drain_delay.as_millis() as u64,
            "draining: /readyz answers 503 so load balancers stop sending"
        );
        tokio::select! {
            _ = tokio::time::sleep(self.drain_delay) => {}
            _ = shutdown_signal() => tracing::info!("second signal: not waiting any longer"),
        }
        tracing::info!("shutting down: finishing requests in flight");
        self.shutdown().await
    }
}

/// Stores the config file's ceilings where none is stored yet (audited).
async fn seed_ceilings(registry: &Registry, config: &ServerConfig) -> anyhow::Result<()> {
    let seeded = registry
        .gate()
        .projects()
        .seed(
            &config
                .ceilings
                .iter()
                .cloned()
                .map(Into::into)
                .collect::<Vec<_>>(),
        )
        .context("storing the config file's ceilings")?;
    let who = crate::trust::Authority::system("config");
    for c in seeded {
        let target = match &c.plugin {
            Some(p) => format!("ceiling {}/{p}", c.project),
            None => format!("ceiling {}", c.project),
        };
        registry
            .audit_change(
                &who,
                "ceiling.set",
                &target,
                serde_json::json!({ "from": null, "to": c.ceiling }),
            )
            .await;
    }
    Ok(())
}

/// Installs the bundled plugins into a data directory that has never seen
/// them; a marker file keeps deleted ones from coming back on restart.
async fn seed_bundled(registry: &Registry, config: &ServerConfig) {
    let marker = config.data_dir.join(".bundled-seeded");
    if marker.exists() {
        return;
    }
    for b in crate::bundled::BUNDLED {
        match registry
            .install(b.manifest, b.component.to_vec(), Source::Bundled, true)
            .await
        {
            Ok(i) => {
                tracing::info!(plugin = %i.name, version = %i.version, "installed bundled plugin")
            }
            Err(e) => tracing::error!(package = b.package, "bundled plugin failed to load: {e}"),
        }
    }
    if let Err(e) = crate::store::write_atomic(&marker, b"") {
        tracing::warn!("could not write {}: {e}", marker.display());
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Sets up `tracing`: human-readable text, or JSON lines with `json`.
/// `RUST_LOG` filters (default `info`).
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// This server's name in leases, kept in `<data_dir>/replica-id`: a
/// restarted server takes its runs back at once instead of waiting for its
/// old leases to expire. Replicas have data directories of their own, so
/// their names differ.
fn replica_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("replica-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
    let id = format!("replica-{}", crate::ids::new_id());
    crate::store::write_atomic(&path, id.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// How often a replica on PostgreSQL re-reads everything, in case a notice
/// was lost without the listener noticing.
const RESYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Applies the changes other replicas make (PostgreSQL only): plugins are
/// loaded and swapped in, tokens re-read.
async fn follow_replicas(
    registry: Arc<Registry>,
    auth: Arc<api::auth::Auth>,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<crate::store::changes::Change>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use crate::store::changes::Change;
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.tick().await;
    loop {
        let change = tokio::select! {
            c = changes.recv() => match c {
                Some(c) => c,
                None => return,
            },
            _ = resync.tick() => Change::Resync,
            // Shutting down: dropping `changes` ends the listener thread.
            _ = stop.wait_for(|s| *s) => return,
        };
        match change {
            Change::Plugin(name) => {
                if let Err(e) = registry.sync_plugin(&name).await {
                    tracing::error!(plugin = %name, "following another replica: {e}");
                }
            }
            Change::Tokens => reload_tokens(&auth),
            Change::Resync => {
                reload_tokens(&auth);
                if let Err(e) = registry.sync_all().await {
                    tracing::error!("resync with the store: {e}");
                }
            }
        }
    }
}

fn reload_tokens(auth: &api::auth::Auth) {
    let tokens = &auth.tokens;
    if let Err(e) = crate::store::blocking(|| tokens.reload()) {
        tracing::error!("reloading API tokens: {e}");
    }
}
