//! Groups this replica stored and has not handled yet, kept parsed, so
//! that the shard worker handling one here neither reads its payload back
//! nor parses it again (for 1,000-alert groups that was 29 % of the
//! server's CPU under load). It is only a shortcut: the database stays the
//! record, and a group missing here (evicted, stored by another replica,
//! or after a restart) is read from the store as before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::Webhook;

/// Groups kept at most (a parsed 1,000-alert group is about 1 MiB); past
/// it, new ones are simply not kept.
const CAPACITY: usize = 16;
/// A group not taken within this time is dropped (another replica holds
/// its shard, the backlog is long, or a worker read it from the store).
const TTL: Duration = Duration::from_secs(10);

/// A stored group, as the worker needs it.
pub(super) struct Fresh {
    /// The delivery, parsed.
    pub(super) hook: Webhook,
    /// Every alert of it was new (so nothing needs to be looked up to know
    /// which were).
    pub(super) all_new: bool,
}

/// The kept groups, by id.
#[derive(Default)]
pub(super) struct Handoff {
    groups: Mutex<HashMap<String, (Instant, Fresh)>>,
}

impl Handoff {
    /// Keeps `fresh` for the worker, unless the handoff is full.
    pub(super) fn put(&self, id: &str, fresh: Fresh) {
        let now = Instant::now();
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.retain(|_, (at, _)| now.duration_since(*at) < TTL);
        if groups.len() < CAPACITY {
            groups.insert(id.to_string(), (now, fresh));
        }
    }

    /// Takes the group `id` if it is kept.
    pub(super) fn take(&self, id: &str) -> Option<Fresh> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.remove(id).map(|(_, f)| f)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.groups.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(key: &str) -> Fresh {
        let body = format!(
            r#"{{"version":"4","groupKey":"{key}","status":"firing","receiver":"r","alerts":[
                {{"status":"firing","labels":{{"alertname":"Down"}},"annotations":{{}},
                "startsAt":"2026-12-01T00:00:00Z","endsAt":"0001-01-01T00:00:00Z","fingerprint":"abc"}}]}}"#
        );
        Fresh {
            hook: Webhook::parse(body.as_bytes()).unwrap(),
            all_new: true,
        }
    }

    #[test]
    fn a_kept_group_is_taken_once() {
        let h = Handoff::default();
        h.put("g1", fresh("k1"));
        assert_eq!(h.take("g1").unwrap().hook.group_key, "k1");
        assert!(h.take("g1").is_none());
        assert!(h.take("g2").is_none());
    }

    #[test]
    fn a_full_handoff_keeps_no_more_and_drops_what_outlived_its_ttl() {
        let h = Handoff::default();
        for i in 0..CAPACITY + 10 {
            h.put(&format!("g{i}"), fresh("k"));
        }
        assert_eq!(h.len(), CAPACITY);
        assert!(h.take(&format!("g{}", CAPACITY + 1)).is_none());
        // Age every entry past the TTL: the next put makes room.
        for (at, _) in h.groups.lock().unwrap().values_mut() {
            *at = at
                .checked_sub(TTL)
                .expect("the monotonic clock is past the TTL");
        }
        h.put("late", fresh("k"));
        assert_eq!(h.len(), 1);
        assert!(h.take("late").is_some());
    }
}
