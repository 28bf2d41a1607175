//! Notification channels: what admins configure (DingTalk custom robot,
//! WeCom group robot, Feishu/Lark bot, Slack incoming webhook, a generic
//! webhook, email over SMTP) and the durable delivery of messages through
//! them.
//!
//! Layers, as in the other engines: the pure [`model`] (channel specs, the
//! provider payloads, signatures, how each provider's answer is read,
//! batching) and [`limit`] (the per-channel rate windows); the [`store`]
//! (channels, the outbox of deliveries, every attempt with the provider's
//! answer, migration `V14__notify`); and the executor, [`Notifier`]: it
//! enqueues (idempotently), sends from a worker that claims each channel
//! through a database lease (so two replicas never send the same message),
//! retries with backoff and jitter, batches what a rate limit holds back,
//! and test-sends synchronously.
//!
//! Depends on `capstan-store` (tables, leases), `capstan-runtime` (the
//! secrets store) and `capstan-registry` (the metrics registry); nothing
//! here knows the HTTP API.

pub mod limit;
pub mod metrics;
pub mod model;
mod notifier;
mod send;
pub mod store;
mod worker;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use metrics::NotifyMetrics;
pub use model::{Answer, ChannelKind, ChannelSpec, Format, Verdict};
pub use notifier::{Enqueue, Enqueued, EnvSecrets, Notifier, NotifyConfig, SecretSource};
pub use store::{Attempt, ChannelRow, Delivery, DeliveryFilter, DeliveryStatus};

/// Why a notify operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The request or the channel spec is invalid.
    #[error("{0}")]
    Invalid(String),
    /// No such channel or delivery.
    #[error("{0}")]
    NotFound(String),
    /// The caller (or plugin) may not use this channel.
    #[error("{0}")]
    Forbidden(String),
    /// The channel's rate window is full; try again after `retry_after`.
    #[error("channel `{channel}` is at its rate limit; retry in {}s", retry_after.as_secs().max(1))]
    RateLimited {
        /// The channel.
        channel: String,
        /// When a slot frees.
        retry_after: Duration,
    },
    /// The provider refused the message (a test-send): its answer.
    #[error("{}", .answer.summary())]
    Provider {
        /// The delivery recorded for the send.
        delivery: String,
        /// What the provider answered.
        answer: Box<Answer>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] capstan_store::StoreError),
}

impl From<capstan_store::sql::DbError> for NotifyError {
    fn from(e: capstan_store::sql::DbError) -> Self {
        NotifyError::Store(e.into())
    }
}
