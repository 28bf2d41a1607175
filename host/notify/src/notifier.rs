//! The executor's entry points: channels (put, list, delete, seeded from
//! the config file), [`Notifier::enqueue`] / [`Notifier::notify`] into the
//! durable outbox, [`Notifier::test_send`], and receipts.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_runtime::capabilities::CapabilityEnv;
use capstan_runtime::capabilities::secrets::SecretBox;
use capstan_store::{Store, ids, unix_millis};

use crate::NotifyError;
use crate::metrics::NotifyMetrics;
use crate::model::{ChannelSpec, Format, Verdict};
use crate::store::{ChannelRow, Delivery, DeliveryFilter, NewDelivery, NotifyStore, Outcome};

/// Where channel credentials come from: the server's secrets store.
pub trait SecretSource: Send + Sync {
    /// The value of secret `name`.
    fn get(&self, name: &str) -> Result<String, String>;
    /// The names of every stored secret.
    fn names(&self) -> Result<Vec<String>, String>;
}

/// The secrets store of the server's capability environment.
pub struct EnvSecrets(pub Arc<CapabilityEnv>);

impl SecretSource for EnvSecrets {
    fn get(&self, name: &str) -> Result<String, String> {
        self.0
            .secrets
            .get(&self.0.store, name)
            .map_err(|e| e.to_string())
    }

    fn names(&self) -> Result<Vec<String>, String> {
        SecretBox::names(&self.0.store).map_err(|e| e.to_string())
    }
}

/// How the notifier runs.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// This replica's name in leases.
    pub replica: String,
    /// How often the worker looks for due deliveries when nothing wakes it
    /// (deliveries enqueued on another replica, retries coming due).
    pub poll: Duration,
    /// How long a channel's lease lasts without renewal.
    pub lease_ttl: Duration,
    /// First retry delay (doubling, with jitter).
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Attempts before a delivery fails for good.
    pub max_attempts: u32,
    /// Timeout of one send.
    pub timeout: Duration,
    /// How long finished deliveries and their receipts are kept (zero:
    /// forever). Checked hourly.
    pub retention: Duration,
    /// PEM certificates of private CAs trusted besides the default roots,
    /// for email (STARTTLS and implicit TLS) and for https webhooks: the
    /// server fills it from `[http] ca_file`. Empty: none.
    pub ca_pem: Vec<u8>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            replica: format!("replica-{}", ids::new_id()),
            poll: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(30),
            retry_min: Duration::from_secs(2),
            retry_max: Duration::from_secs(600),
            max_attempts: 8,
            timeout: Duration::from_secs(10),
            retention: Duration::from_secs(30 * 86_400),
            ca_pem: Vec::new(),
        }
    }
}

/// The client of HTTP channels: no redirects; trusts the system's roots
/// (reqwest's platform verifier) and the certificates of `ca_pem`.
fn http_client(ca_pem: &[u8]) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    let builder = if ca_pem.is_empty() {
        builder
    } else {
        let certs = reqwest::Certificate::from_pem_bundle(ca_pem)
            .map_err(|e| format!("reading the CA certificates ([http] ca_file): {e}"))?;
        builder.tls_certs_merge(certs)
    };
    builder
        .build()
        .map_err(|e| format!("building the HTTP client: {}", crate::send::chain(&e)))
}

/// A message to enqueue.
#[derive(Debug, Clone)]
pub struct Enqueue {
    /// The project sending (must own the channel).
    pub project: String,
    /// The channel.
    pub channel: String,
    /// `text` or `markdown`.
    pub format: Format,
    /// The message.
    pub body: String,
    /// Unique per project: enqueuing the same key again returns the first
    /// delivery and sends nothing more.
    pub idempotency_key: String,
    /// The plugin sending, if one is (checked against the channel's `plugins`).
    pub plugin: Option<String>,
}

/// An enqueued delivery.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Enqueued {
    /// The delivery id.
    pub id: String,
    /// `false` when the idempotency key was seen before (nothing new queued).
    pub created: bool,
}

/// The notifier of one replica.
pub struct Notifier {
    pub(crate) db: NotifyStore,
    pub(crate) secrets: Arc<dyn SecretSource>,
    pub(crate) config: NotifyConfig,
    /// The webhook client, or why it could not be built (every HTTP send
    /// then answers that).
    pub(crate) http: Result<reqwest::Client, String>,
    pub(crate) metrics: NotifyMetrics,
    pub(crate) wake: tokio::sync::Notify,
    /// Channels a task of this replica is sending for.
    pub(crate) active: Mutex<HashSet<String>>,
}

/// Largest message accepted, bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

impl Notifier {
    /// Starts the notifier and its worker (ends when the notifier is dropped).
    pub fn start(
        store: Arc<Store>,
        secrets: Arc<dyn SecretSource>,
        config: NotifyConfig,
        metrics: NotifyMetrics,
    ) -> Arc<Notifier> {
        // reqwest is built without a TLS provider of its own: the process
        // uses ring (as the server's listener and the http capability do).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = http_client(&config.ca_pem);
        if let Err(e) = &http {
            tracing::error!("notify: {e}; channels sending over HTTP will fail");
        }
        let n = Arc::new(Notifier {
            db: NotifyStore::new(store),
            secrets,
            http,
            config,
            metrics,
            wake: tokio::sync::Notify::new(),
            active: Mutex::default(),
        });
        tokio::spawn(crate::worker::run(Arc::downgrade(&n)));
        n
    }

    /// The tables.
    pub fn db(&self) -> &NotifyStore {
        &self.db
    }

    /// What the alerts engine calls for a `notify` action: enqueues `body`
    /// for `channel` of `project` as `plugin`, once per `idempotency_key`;
    /// returns the delivery id (the same one for a repeated key).
    pub async fn notify(
        &self,
        project: &str,
        plugin: &str,
        channel: &str,
        format: &str,
        body: &str,
        idempotency_key: &str,
    ) -> Result<String, NotifyError> {
        let format = Format::parse(format).ok_or_else(|| {
            NotifyError::Invalid(format!("format `{format}` is not `text` or `markdown`"))
        })?;
        let e = self
            .enqueue(Enqueue {
                project: project.into(),
                channel: channel.into(),
                format,
                body: body.into(),
                idempotency_key: idempotency_key.into(),
                plugin: (!plugin.is_empty()).then(|| plugin.to_string()),
            })
            .await?;
        Ok(e.id)
    }

    /// Writes the message to the outbox (durable before this returns) and
    /// wakes the worker.
    pub async fn enqueue(&self, e: Enqueue) -> Result<Enqueued, NotifyError> {
        if e.body.trim().is_empty() || e.body.len() > MAX_BODY_BYTES {
            return Err(NotifyError::Invalid(format!(
                "the message must be 1 to {MAX_BODY_BYTES} bytes"
            )));
        }
        if e.idempotency_key.is_empty() || e.idempotency_key.len() > 512 {
            return Err(NotifyError::Invalid(
                "the idempotency key must be 1 to 512 bytes".into(),
            ));
        }
        let spec = self.channel_of(&e.project, &e.channel)?;
        if let Some(p) = &e.plugin
            && !spec.allows_plugin(p)
        {
            return Err(NotifyError::Forbidden(format!(
                "plugin `{p}` may not send through channel `{}`",
                spec.name
            )));
        }
        let (id, created) = self.db.enqueue(&NewDelivery {
            project: e.project,
            idem_key: e.idempotency_key,
            channel: spec.name.clone(),
            kind: spec.kind.as_str().into(),
            plugin: e.plugin,
            format: e.format.as_str().into(),
            body: e.body,
            test: false,
        })?;
        if created {
            self.wake.notify_one();
        }
        Ok(Enqueued { id, created })
    }

    /// The channel `name` if `project` owns it (else not found: a project
    /// does not learn other projects' channel names).
    fn channel_of(&self, project: &str, name: &str) -> Result<ChannelSpec, NotifyError> {
        match self.db.channel(name)? {
            Some(row) if row.spec.project == project => Ok(row.spec),
            _ => Err(NotifyError::NotFound(format!(
                "no channel `{name}` in project `{project}`"
            ))),
        }
    }

    /// Sends a test message through channel `name` now, recorded as a
    /// delivery like any other; the provider's refusal is an error that
    /// carries its answer.
    pub async fn test_send(
        &self,
        name: &str,
        text: Option<String>,
        by: &str,
    ) -> Result<Delivery, NotifyError> {
        let spec = self
            .db
            .channel(name)?
            .ok_or_else(|| NotifyError::NotFound(format!("no channel `{name}`")))?
            .spec;
        let (free, wait) = self.free_slots(&spec)?;
        if free == 0 {
            return Err(NotifyError::RateLimited {
                channel: name.into(),
                retry_after: wait,
            });
        }
        let text = text.unwrap_or_else(|| {
            format!("Capstan test message for channel `{name}`, sent by {by}. If you can read this, the channel works.")
        });
        if text.trim().is_empty() || text.len() > MAX_BODY_BYTES {
            return Err(NotifyError::Invalid(format!(
                "the message must be 1 to {MAX_BODY_BYTES} bytes"
            )));
        }
        let (id, _) = self.db.enqueue(&NewDelivery {
            project: spec.project.clone(),
            idem_key: format!("test:{}", ids::new_id()),
            channel: spec.name.clone(),
            kind: spec.kind.as_str().into(),
            plugin: None,
            format: Format::Text.as_str().into(),
            body: text.clone(),
            test: true,
        })?;
        let attempt = self.db.begin_attempt(&id, &spec.name, 1, 1)?;
        let answer = self.send_once(&spec, Format::Text, &text).await;
        let sent = answer.verdict == Verdict::Sent;
        self.db.finish_attempt(
            attempt,
            &id,
            &Outcome {
                answer: answer.clone(),
                retry_at_ms: None,
            },
        )?;
        let outcome = if sent { "sent" } else { "failed" };
        self.metrics.attempt(spec.kind.as_str(), outcome);
        if !sent {
            return Err(NotifyError::Provider {
                delivery: id,
                answer: Box::new(answer),
            });
        }
        self.db
            .delivery(&id)?
            .ok_or_else(|| NotifyError::NotFound(format!("delivery {id}")))
    }

    /// Free slots in the channel's rate windows now, and when none is free,
    /// how long until one is.
    pub(crate) fn free_slots(&self, spec: &ChannelSpec) -> Result<(u32, Duration), NotifyError> {
        let limits = spec.limits();
        if limits.is_empty() {
            return Ok((u32::MAX, Duration::ZERO));
        }
        let now = unix_millis();
        let since = now - crate::limit::horizon(&limits).as_millis() as i64;
        let starts = self.db.window(&spec.name, since)?;
        Ok(crate::limit::free(&limits, &starts, now))
    }

    /// Validates and stores a channel (`source`: `api` or `config`);
    /// `true` if it is new.
    pub fn put_channel(
        &self,
        spec: &ChannelSpec,
        source: &str,
        by: &str,
    ) -> Result<bool, NotifyError> {
        spec.validate().map_err(NotifyError::Invalid)?;
        Ok(self.db.put_channel(spec, source, by)?)
    }

    /// The secrets `spec` names that are not stored.
    pub fn missing_secrets(&self, spec: &ChannelSpec) -> Result<Vec<String>, NotifyError> {
        let names = self.secrets.names().map_err(NotifyError::Invalid)?;
        Ok(spec
            .secret_names()
            .into_iter()
            .filter(|s| !names.iter().any(|n| n == s))
            .map(str::to_string)
            .collect())
    }

    /// Stores the config file's channels (they replace stored ones of the same name).
    pub fn seed(&self, specs: &[ChannelSpec]) -> Result<(), NotifyError> {
        for s in specs {
            self.put_channel(s, "config", "config")?;
        }
        Ok(())
    }

    /// One channel.
    pub fn channel(&self, name: &str) -> Result<Option<ChannelRow>, NotifyError> {
        Ok(self.db.channel(name)?)
    }

    /// Every channel.
    pub fn channels(&self) -> Result<Vec<ChannelRow>, NotifyError> {
        Ok(self.db.channels()?)
    }

    /// Deletes a channel.
    pub fn delete_channel(&self, name: &str) -> Result<bool, NotifyError> {
        Ok(self.db.delete_channel(name)?)
    }

    /// Receipts, newest first.
    pub fn deliveries(&self, f: &DeliveryFilter) -> Result<Vec<Delivery>, NotifyError> {
        Ok(self.db.deliveries(f)?)
    }

    /// One receipt with every attempt.
    pub fn delivery(&self, id: &str) -> Result<Option<Delivery>, NotifyError> {
        Ok(self.db.delivery(id)?)
    }
}
