//! The worker: finds channels with deliveries due, and for each, one task
//! that claims the channel's lease (`notify/channel/<name>`: one replica
//! at a time sends for a channel), marks attempts a dead server left in
//! flight as interrupted, then sends the due deliveries oldest first
//! within the channel's rate windows, batching when more wait than the
//! windows have slots. Each attempt is recorded before and after the send.

use std::sync::{Arc, Weak};
use std::time::Duration;

use capstan_store::leases::Lease;
use capstan_store::unix_millis;

use crate::NotifyError;
use crate::model::provider::{self, Verdict};
use crate::model::{ChannelSpec, Format};
use crate::notifier::Notifier;
use crate::send::{is_final, retry_at};
use crate::store::{Due, Outcome};

/// Due deliveries read per turn.
const BATCH_READ: i64 = 500;

/// The dispatch loop; ends when the notifier is dropped.
pub(crate) async fn run(notifier: Weak<Notifier>) {
    let (mut depth_at, mut pruned_at) = (0, 0);
    loop {
        let Some(n) = notifier.upgrade() else { return };
        let now = unix_millis();
        let keep = n.config.retention.as_millis() as i64;
        if keep > 0 && now - pruned_at >= 3_600_000 {
            pruned_at = now;
            match n.db.prune(now - keep) {
                Ok(0) => {}
                Ok(k) => tracing::info!(deliveries = k, "notify retention: deleted old deliveries"),
                Err(e) => tracing::warn!("notify retention: {e}"),
            }
        }
        if now - depth_at >= 2000 {
            depth_at = now;
            match n.db.depth() {
                Ok(d) => n.metrics.set_depth(d),
                Err(e) => tracing::warn!("notify queue depth: {e}"),
            }
        }
        match n.db.due_channels(now) {
            Ok(channels) => {
                for ch in channels {
                    let fresh = n
                        .active
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(ch.clone());
                    if fresh {
                        tokio::spawn(channel_task(Arc::downgrade(&n), ch));
                    }
                }
            }
            Err(e) => tracing::error!("notify worker: {e}"),
        }
        let poll = n.config.poll;
        let _ = tokio::time::timeout(poll, n.wake.notified()).await;
    }
}

/// Removes the channel from the active set when its task ends.
struct Active(Weak<Notifier>, String, bool);

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(n) = self.0.upgrade() {
            n.active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.1);
            // Deliveries enqueued while the task was finishing are picked
            // up at once rather than at the next poll.
            if self.2 {
                n.wake.notify_one();
            }
        }
    }
}

async fn channel_task(notifier: Weak<Notifier>, channel: String) {
    let mut active = Active(notifier.clone(), channel.clone(), false);
    let name = format!("notify/channel/{channel}");
    let Some(n) = notifier.upgrade() else { return };
    let (replica, ttl) = (n.config.replica.clone(), n.config.lease_ttl);
    let store = n.db.store().clone();
    let lease = match store.acquire_lease(&name, &replica, ttl) {
        Ok(Some(l)) => l,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(%channel, "claiming a channel: {e}");
            return;
        }
    };
    match n.db.interrupt_pending(&channel) {
        Ok(0) => {}
        Ok(k) => {
            tracing::warn!(%channel, attempts = k, "attempts left in flight by a stopped server marked interrupted; their deliveries are sent again")
        }
        Err(e) => tracing::warn!(%channel, "{e}"),
    }
    drop(n);
    loop {
        let Some(n) = notifier.upgrade() else { return };
        // Renews the lease (same holder); lost to another replica: stop.
        let lease = match store.acquire_lease(&name, &replica, ttl) {
            Ok(Some(l)) if l.token == lease.token => l,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(%channel, "renewing a channel lease: {e}");
                return;
            }
        };
        match n.turn(&channel, &lease).await {
            Ok(Turn::Sent) => active.2 = true,
            Ok(Turn::Wait(d)) => {
                drop(n);
                tokio::time::sleep(d.min(ttl / 3)).await;
            }
            Ok(Turn::Idle) => break,
            Err(e) => {
                tracing::error!(%channel, "sending: {e}");
                break;
            }
        }
    }
    let _ = store.release_lease(&lease);
}

enum Turn {
    /// An attempt was made.
    Sent,
    /// The rate window is full for this long.
    Wait(Duration),
    /// Nothing is due.
    Idle,
}

impl Notifier {
    /// One step for a channel: one message (maybe a batch) sent, or why not.
    async fn turn(&self, channel: &str, lease: &Lease) -> Result<Turn, NotifyError> {
        let Some(row) = self.db.channel(channel)? else {
            let n = self.db.fail_queued(channel, "the channel was deleted")?;
            tracing::warn!(%channel, deliveries = n, "channel deleted: its queued deliveries failed");
            return Ok(Turn::Idle);
        };
        let spec = row.spec;
        let due = self.db.due(channel, unix_millis(), BATCH_READ)?;
        if due.is_empty() {
            return Ok(Turn::Idle);
        }
        let (free, wait) = self.free_slots(&spec)?;
        if free == 0 {
            return Ok(Turn::Wait(wait));
        }
        self.deliver(&spec, lease, &due, free).await?;
        Ok(Turn::Sent)
    }

    async fn deliver(
        &self,
        spec: &ChannelSpec,
        lease: &Lease,
        due: &[Due],
        free: u32,
    ) -> Result<(), NotifyError> {
        let carrier = &due[0];
        let format = Format::parse(&carrier.format).unwrap_or(Format::Text);
        let kind = spec.kind.as_str();
        let (text, batch_size) = match &carrier.payload {
            Some(p) => (p.clone(), 1 + carrier.carried),
            None => {
                let k = crate::limit::batch_size(due.len(), free);
                let same: Vec<&Due> = due[..k]
                    .iter()
                    .take_while(|d| d.format == carrier.format && d.payload.is_none())
                    .collect();
                let bodies: Vec<&str> = same.iter().map(|d| d.body.as_str()).collect();
                let (n, text) =
                    provider::join_batch(&bodies, provider::max_bytes(spec.kind, format));
                if n > 1 {
                    let members: Vec<String> = same[1..n].iter().map(|d| d.id.clone()).collect();
                    self.db.form_batch(&carrier.id, &members, &text)?;
                    self.metrics
                        .delivered(kind, "batched", members.len() as u64);
                    tracing::info!(channel = %spec.name, carrier = %carrier.id, batched = members.len(), "rate limited: messages batched into one");
                }
                (text, n as i64)
            }
        };
        // Fencing: nothing is sent under a lease another replica took over.
        if !self.db.store().lease_is_current(lease)? {
            return Ok(());
        }
        let n = carrier.attempts + 1;
        let attempt = self
            .db
            .begin_attempt(&carrier.id, &spec.name, n, batch_size)?;
        let answer = self.send_once(spec, format, &text).await;
        let attempt_no = u32::try_from(n).unwrap_or(u32::MAX);
        let last = is_final(&answer, attempt_no, self.config.max_attempts);
        let retry_at_ms = (!last).then(|| {
            retry_at(
                &answer,
                attempt_no,
                self.config.retry_min,
                self.config.retry_max,
            )
        });
        let outcome = match (&answer.verdict, last) {
            (Verdict::Sent, _) => "sent",
            (_, false) => "retry",
            _ => "failed",
        };
        if answer.verdict != Verdict::Sent {
            tracing::warn!(channel = %spec.name, delivery = %carrier.id, attempt = n, outcome, "{}", answer.summary());
        }
        self.db.finish_attempt(
            attempt,
            &carrier.id,
            &Outcome {
                answer,
                retry_at_ms,
            },
        )?;
        self.metrics.attempt(kind, outcome);
        if outcome != "retry" {
            self.metrics.delivered(kind, outcome, 1);
        }
        if outcome == "sent" {
            let secs = (unix_millis() - carrier.created_ms).max(0) as f64 / 1000.0;
            self.metrics.latency(kind, secs);
        }
        Ok(())
    }
}
