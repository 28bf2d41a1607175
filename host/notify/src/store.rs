//! The notify tables (migration `V14__notify`): channels, the outbox of
//! deliveries, and every attempt with the provider's answer. Each change a
//! delivery goes through is one statement or transaction here, written
//! before (an attempt begins) and after (its outcome) the send.

use std::sync::Arc;

use capstan_store::sql::{Conn, DbError, Row};
use capstan_store::{Store, StoreError, args, ids, unix_millis, unix_secs};
use serde::Serialize;

use crate::model::{Answer, ChannelSpec, Verdict};

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its turn, a retry, or a rate window.
    Queued,
    /// The provider took it.
    Sent,
    /// The provider refused it for good, or the retries ran out.
    Failed,
    /// Sent inside another delivery's message (`batched_into`).
    Batched,
}

impl DeliveryStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Batched => "batched",
        }
    }

    /// Parses [`DeliveryStatus::as_str`].
    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        Some(match s {
            "queued" => DeliveryStatus::Queued,
            "sent" => DeliveryStatus::Sent,
            "failed" => DeliveryStatus::Failed,
            "batched" => DeliveryStatus::Batched,
            _ => return None,
        })
    }
}

/// A stored channel.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChannelRow {
    /// The spec.
    #[serde(flatten)]
    pub spec: ChannelSpec,
    /// `api` or `config`.
    pub source: String,
    /// Unix seconds.
    pub updated_at: i64,
    /// Who stored it.
    pub updated_by: String,
}

/// One attempt to send a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    /// 1, 2, ...
    pub attempt: i64,
    /// Messages carried (1, or a batch).
    pub batch_size: i64,
    /// Unix ms.
    pub started_ms: i64,
    /// Unix ms; none while in flight (or if the server died during it).
    pub finished_ms: Option<i64>,
    /// `pending`, `sent`, `retry`, `failed` or `interrupted` (the server
    /// stopped before the answer: the message may or may not have arrived).
    pub outcome: String,
    /// HTTP status, or the SMTP reply code.
    pub http_status: Option<i64>,
    /// The provider's error code (`errcode`, `code`, Slack's error text).
    pub code: Option<String>,
    /// The provider's message, or the transport error.
    pub message: Option<String>,
    /// The provider's raw answer, truncated to 2 KiB.
    pub response: Option<String>,
}

/// A delivery: one message to one channel, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// Id (UUIDv7).
    pub id: String,
    /// Project of the channel.
    pub project: String,
    /// The caller's idempotency key.
    pub idempotency_key: String,
    /// Channel name.
    pub channel: String,
    /// Channel type.
    pub kind: String,
    /// The plugin that sent it, if one did.
    pub plugin: Option<String>,
    /// `text` or `markdown`.
    pub format: String,
    /// The message.
    pub body: String,
    /// `queued`, `sent`, `failed` or `batched`.
    pub status: DeliveryStatus,
    /// The delivery whose message carried this one (status `batched`).
    pub batched_into: Option<String>,
    /// Deliveries this one's message carried.
    pub batch: Vec<String>,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due (queued), Unix ms.
    pub next_attempt_ms: Option<i64>,
    /// A test-send.
    pub test: bool,
    /// Unix ms.
    pub created_ms: i64,
    /// Unix ms.
    pub updated_ms: i64,
    /// When the provider took it, Unix ms.
    pub sent_ms: Option<i64>,
    /// The last refusal, in one line.
    pub last_error: Option<String>,
    /// Every attempt, oldest first (on `GET /v1/notify/deliveries/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_log: Option<Vec<Attempt>>,
}

/// Filter of the delivery listing.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only this channel.
    pub channel: Option<String>,
    /// Only this status.
    pub status: Option<DeliveryStatus>,
    /// At most this many, newest first.
    pub limit: i64,
}

/// A new message for the outbox.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Project.
    pub project: String,
    /// Idempotency key (unique per project).
    pub idem_key: String,
    /// Channel.
    pub channel: String,
    /// Channel type.
    pub kind: String,
    /// Sending plugin.
    pub plugin: Option<String>,
    /// Format.
    pub format: String,
    /// Text.
    pub body: String,
    /// A test-send (never picked by the worker).
    pub test: bool,
}

/// A queued delivery due for an attempt.
#[derive(Debug, Clone)]
pub struct Due {
    /// Id.
    pub id: String,
    /// Format.
    pub format: String,
    /// Its own text.
    pub body: String,
    /// The text of the batch it carries, if it carries one.
    pub payload: Option<String>,
    /// Attempts made.
    pub attempts: i64,
    /// Unix ms.
    pub created_ms: i64,
    /// Deliveries already batched into it (a retry of a batch).
    pub carried: i64,
}

/// What to record when an attempt ends.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The provider's answer.
    pub answer: Answer,
    /// Queue again at this time (a retry), else final.
    pub retry_at_ms: Option<i64>,
}

const DELIVERY_COLUMNS: &str = "id, project, idem_key, channel, kind, plugin, format, body, status, batched_into, attempts, next_attempt_ms, test, created_ms, updated_ms, sent_ms, last_error";

/// The notifier's view of the store.
#[derive(Clone)]
pub struct NotifyStore {
    store: Arc<Store>,
}

impl NotifyStore {
    /// Over `store`.
    pub fn new(store: Arc<Store>) -> NotifyStore {
        NotifyStore { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stores a channel; `true` if it is new.
    pub fn put_channel(
        &self,
        spec: &ChannelSpec,
        source: &str,
        by: &str,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(spec).map_err(|e| StoreError::Conflict(e.to_string()))?;
        self.store.with(|c| {
            c.tx(|c| {
                let existed = c
                    .row("SELECT 1 FROM notify_channels WHERE name = ?1", args![spec.name])?
                    .is_some();
                c.exec(
                    "INSERT INTO notify_channels (name, project, kind, spec, source, updated_at, updated_by)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (name) DO UPDATE SET project = ?2, kind = ?3, spec = ?4, source = ?5,
                         updated_at = ?6, updated_by = ?7",
                    args![spec.name, spec.project, spec.kind.as_str(), json, source, unix_secs(), by],
                )?;
                Ok::<_, StoreError>(!existed)
            })
        })
    }

    /// One channel.
    pub fn channel(&self, name: &str) -> Result<Option<ChannelRow>, StoreError> {
        self.store.with(|c| {
            c.row(
                "SELECT spec, source, updated_at, updated_by FROM notify_channels WHERE name = ?1",
                args![name],
            )?
            .map(|r| channel_row(&r))
            .transpose()
        })
    }

    /// Every channel, by name.
    pub fn channels(&self) -> Result<Vec<ChannelRow>, StoreError> {
        self.store.with(|c| {
            c.rows(
                "SELECT spec, source, updated_at, updated_by FROM notify_channels ORDER BY name",
                args![],
            )?
            .iter()
            .map(channel_row)
            .collect()
        })
    }

    /// Deletes a channel; its queued deliveries fail when the worker meets them.
    pub fn delete_channel(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .with(|c| c.exec("DELETE FROM notify_channels WHERE name = ?1", args![name]))?
            == 1)
    }

    /// Writes a delivery unless its (project, key) exists; returns its id
    /// and whether it is new.
    pub fn enqueue(&self, d: &NewDelivery) -> Result<(String, bool), StoreError> {
        let id = ids::new_id();
        let now = unix_millis();
        let next: Option<i64> = (!d.test).then_some(now);
        self.store.with(|c| {
            let n = c.exec(
                "INSERT INTO notify_deliveries (id, project, idem_key, channel, kind, plugin, format, body,
                     status, attempts, next_attempt_ms, test, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', 0, ?9, ?10, ?11, ?11)
                 ON CONFLICT (project, idem_key) DO NOTHING",
                args![id, d.project, d.idem_key, d.channel, d.kind, d.plugin, d.format, d.body, next, d.test, now],
            )?;
            if n == 1 {
                return Ok((id, true));
            }
            let existing: String = c.value(
                "SELECT id FROM notify_deliveries WHERE project = ?1 AND idem_key = ?2",
                args![d.project, d.idem_key],
            )?;
            Ok::<_, StoreError>((existing, false))
        })
    }

    /// Channels with a delivery due at `now`.
    pub fn due_channels(&self, now: i64) -> Result<Vec<String>, StoreError> {
        self.store.with(|c| {
            c.rows(
                "SELECT DISTINCT channel FROM notify_deliveries
                 WHERE status = 'queued' AND next_attempt_ms <= ?1",
                args![now],
            )?
            .iter()
            .map(|r| Ok(r.get(0)?))
            .collect()
        })
    }

    /// The due deliveries of `channel`, oldest first.
    pub fn due(&self, channel: &str, now: i64, limit: i64) -> Result<Vec<Due>, StoreError> {
        self.store.with(|c| {
            c.rows(
                "SELECT id, format, body, payload, attempts, created_ms,
                     (SELECT COUNT(*) FROM notify_deliveries b WHERE b.batched_into = d.id)
                 FROM notify_deliveries d
                 WHERE channel = ?1 AND status = 'queued' AND next_attempt_ms <= ?2
                 ORDER BY created_ms, id LIMIT ?3",
                args![channel, now, limit],
            )?
            .iter()
            .map(|r| {
                Ok(Due {
                    id: r.get(0)?,
                    format: r.get(1)?,
                    body: r.get(2)?,
                    payload: r.get(3)?,
                    attempts: r.get(4)?,
                    created_ms: r.get(5)?,
                    carried: r.get(6)?,
                })
            })
            .collect()
        })
    }

    /// Start times of `channel`'s attempts since `since_ms`: its rate window.
    pub fn window(&self, channel: &str, since_ms: i64) -> Result<Vec<i64>, StoreError> {
        self.store.with(|c| {
            c.rows(
                "SELECT started_ms FROM notify_attempts WHERE channel = ?1 AND started_ms > ?2",
                args![channel, since_ms],
            )?
            .iter()
            .map(|r| Ok(r.get(0)?))
            .collect()
        })
    }

    /// Marks the attempts of `channel` left in flight by a server that
    /// stopped as `interrupted` (call holding the channel's lease, before
    /// sending anything); returns how many.
    pub fn interrupt_pending(&self, channel: &str) -> Result<u64, StoreError> {
        Ok(self.store.with(|c| {
            c.exec(
                "UPDATE notify_attempts SET outcome = 'interrupted', finished_ms = ?2,
                     message = 'the server stopped before the provider answered'
                 WHERE channel = ?1 AND outcome = 'pending'",
                args![channel, unix_millis()],
            )
        })?)
    }

    /// Makes `carrier` carry `members` (queued, oldest after it) with the
    /// joined `payload`; the members become `batched`. One transaction.
    pub fn form_batch(
        &self,
        carrier: &str,
        members: &[String],
        payload: &str,
    ) -> Result<(), StoreError> {
        let now = unix_millis();
        self.store.with(|c| {
            c.tx(|c| {
                c.exec(
                    "UPDATE notify_deliveries SET payload = ?2, updated_ms = ?3 WHERE id = ?1",
                    args![carrier, payload, now],
                )?;
                for m in members {
                    c.exec(
                        "UPDATE notify_deliveries SET status = 'batched', batched_into = ?2,
                             next_attempt_ms = NULL, updated_ms = ?3
                         WHERE id = ?1 AND status = 'queued'",
                        args![m, carrier, now],
                    )?;
                }
                Ok::<_, StoreError>(())
            })
        })
    }

    /// Records that attempt `n` of `delivery` starts now (before the send).
    pub fn begin_attempt(
        &self,
        delivery: &str,
        channel: &str,
        n: i64,
        batch_size: i64,
    ) -> Result<i64, StoreError> {
        let now = unix_millis();
        self.store.with(|c| {
            c.tx(|c| {
                c.exec(
                    "UPDATE notify_deliveries SET attempts = ?2, updated_ms = ?3 WHERE id = ?1",
                    args![delivery, n, now],
                )?;
                let id: i64 = c.value(
                    "INSERT INTO notify_attempts (delivery, channel, attempt, batch_size, started_ms, outcome)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'pending') RETURNING id",
                    args![delivery, channel, n, batch_size, now],
                )?;
                Ok::<_, StoreError>(id)
            })
        })
    }

    /// Records how attempt `attempt_id` of `delivery` ended, and the
    /// delivery's new state. One transaction.
    pub fn finish_attempt(
        &self,
        attempt_id: i64,
        delivery: &str,
        o: &Outcome,
    ) -> Result<(), StoreError> {
        let now = unix_millis();
        let a = &o.answer;
        let (outcome, status) = match (&a.verdict, o.retry_at_ms) {
            (Verdict::Sent, _) => ("sent", "sent"),
            (Verdict::Retry { .. }, Some(_)) => ("retry", "queued"),
            _ => ("failed", "failed"),
        };
        let error = (status != "sent").then(|| a.summary());
        let sent = (status == "sent").then_some(now);
        self.store.with(|c| {
            c.tx(|c| {
                c.exec(
                    "UPDATE notify_attempts SET finished_ms = ?2, outcome = ?3, http_status = ?4,
                         code = ?5, message = ?6, response = ?7 WHERE id = ?1",
                    args![attempt_id, now, outcome, a.status.map(i64::from), a.code, a.message, a.body],
                )?;
                c.exec(
                    "UPDATE notify_deliveries SET status = ?2, next_attempt_ms = ?3, updated_ms = ?4,
                         sent_ms = COALESCE(?5, sent_ms), last_error = COALESCE(?6, last_error)
                     WHERE id = ?1",
                    args![delivery, status, o.retry_at_ms, now, sent, error],
                )?;
                Ok::<_, StoreError>(())
            })
        })
    }

    /// Fails the queued deliveries of a channel that no longer exists.
    pub fn fail_queued(&self, channel: &str, why: &str) -> Result<u64, StoreError> {
        Ok(self.store.with(|c| {
            c.exec(
                "UPDATE notify_deliveries SET status = 'failed', next_attempt_ms = NULL,
                     last_error = ?2, updated_ms = ?3
                 WHERE channel = ?1 AND status = 'queued' AND test = 0",
                args![channel, why, unix_millis()],
            )
        })?)
    }

    /// Retention: deletes the deliveries that are done (sent, failed or
    /// batched) and last changed before `cutoff_ms`, with their attempts,
    /// in one transaction. Queued deliveries are never deleted. Returns how
    /// many deliveries went. An idempotency key is unique for as long as
    /// its delivery is kept.
    pub fn prune(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        Ok(self.store.with(|c| {
            c.tx(|c| {
                c.exec(
                    "DELETE FROM notify_attempts WHERE delivery IN
                         (SELECT id FROM notify_deliveries WHERE status <> 'queued' AND updated_ms < ?1)",
                    args![cutoff_ms],
                )?;
                c.exec(
                    "DELETE FROM notify_deliveries WHERE status <> 'queued' AND updated_ms < ?1",
                    args![cutoff_ms],
                )
            })
        })?)
    }

    /// Deliveries queued (not tests), over every channel.
    pub fn depth(&self) -> Result<i64, StoreError> {
        Ok(self.store.with(|c| {
            c.value::<i64>(
                "SELECT COUNT(*) FROM notify_deliveries WHERE status = 'queued' AND test = 0",
                args![],
            )
        })?)
    }

    /// Deliveries, newest first.
    pub fn deliveries(&self, f: &DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        let status = f.status.map(DeliveryStatus::as_str);
        Ok(self.store.with(|c| {
            let rows = c.rows(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM notify_deliveries
                     WHERE (CAST(?1 AS TEXT) IS NULL OR channel = ?1) AND (CAST(?2 AS TEXT) IS NULL OR status = ?2)
                     ORDER BY created_ms DESC, id DESC LIMIT ?3"
                ),
                args![f.channel, status, f.limit],
            )?;
            rows.iter()
                .map(|r| delivery(c, r))
                .collect::<Result<Vec<_>, DbError>>()
        })?)
    }

    /// One delivery with every attempt.
    pub fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        self.store.with(|c| {
            let Some(r) = c.row(
                &format!("SELECT {DELIVERY_COLUMNS} FROM notify_deliveries WHERE id = ?1"),
                args![id],
            )?
            else {
                return Ok(None);
            };
            let mut d = delivery(c, &r)?;
            let log = c
                .rows(
                    "SELECT attempt, batch_size, started_ms, finished_ms, outcome, http_status, code, message, response
                     FROM notify_attempts WHERE delivery = ?1 ORDER BY attempt, id",
                    args![id],
                )?
                .iter()
                .map(attempt)
                .collect::<Result<Vec<_>, DbError>>()?;
            d.attempt_log = Some(log);
            Ok::<_, StoreError>(Some(d))
        })
    }
}

fn channel_row(r: &Row) -> Result<ChannelRow, StoreError> {
    let spec: String = r.get(0)?;
    Ok(ChannelRow {
        spec: serde_json::from_str(&spec)
            .map_err(|e| StoreError::Db(DbError::Decode(format!("channel spec: {e}"))))?,
        source: r.get(1)?,
        updated_at: r.get(2)?,
        updated_by: r.get(3)?,
    })
}

fn delivery(c: &mut Conn, r: &Row) -> Result<Delivery, DbError> {
    let id: String = r.get(0)?;
    let status: String = r.get(8)?;
    let batch = c
        .rows(
            "SELECT id FROM notify_deliveries WHERE batched_into = ?1 ORDER BY created_ms, id",
            args![id],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect::<Result<Vec<String>, _>>()?;
    Ok(Delivery {
        id,
        project: r.get(1)?,
        idempotency_key: r.get(2)?,
        channel: r.get(3)?,
        kind: r.get(4)?,
        plugin: r.get(5)?,
        format: r.get(6)?,
        body: r.get(7)?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| DbError::Decode(format!("delivery status `{status}`")))?,
        batched_into: r.get(9)?,
        batch,
        attempts: r.get(10)?,
        next_attempt_ms: r.get(11)?,
        test: r.get::<i64>(12)? != 0,
        created_ms: r.get(13)?,
        updated_ms: r.get(14)?,
        sent_ms: r.get(15)?,
        last_error: r.get(16)?,
        attempt_log: None,
    })
}

fn attempt(r: &Row) -> Result<Attempt, DbError> {
    Ok(Attempt {
        attempt: r.get(0)?,
        batch_size: r.get(1)?,
        started_ms: r.get(2)?,
        finished_ms: r.get(3)?,
        outcome: r.get(4)?,
        http_status: r.get(5)?,
        code: r.get(6)?,
        message: r.get(7)?,
        response: r.get(8)?,
    })
}
