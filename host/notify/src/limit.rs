//! Per-channel rate limits as sliding windows over the start times of the
//! channel's recent attempts, which are rows in the database: every
//! replica sees the same window, and the channel's lease makes one replica
//! at a time send for it. (governor's GCRA is in-process only, and its
//! `per_minute(20)` lets ~39 through in a minute; DingTalk counts per robot
//! across whatever sends to it.) When more messages wait than the window
//! has slots, the oldest are batched into one message so that none is
//! dropped and the provider never sees more than its limit.

use std::time::Duration;

use crate::model::RateLimit;

/// Slots free now under every window, and when none is free, how long
/// until one is. `starts` are attempt start times (Unix ms), any order.
pub fn free(limits: &[RateLimit], starts: &[i64], now: i64) -> (u32, Duration) {
    let mut free = u32::MAX;
    let mut wait = Duration::ZERO;
    for l in limits {
        let since = now - l.per_ms as i64;
        let mut inside: Vec<i64> = starts.iter().copied().filter(|s| *s > since).collect();
        inside.sort_unstable();
        let used = inside.len() as u32;
        let f = l.max.saturating_sub(used);
        free = free.min(f);
        if f == 0 {
            // The slot frees when enough of the oldest have left the window.
            let oldest = inside[(used - l.max) as usize];
            let w = Duration::from_millis((oldest + l.per_ms as i64 - now).max(1) as u64);
            wait = wait.max(w);
        }
    }
    (free, wait)
}

/// How many of the `due` waiting messages go in the next message, given
/// `free` slots (at least 1): one while every waiting message has a slot;
/// otherwise the oldest are batched so that the rest can go one per slot.
pub fn batch_size(due: usize, free: u32) -> usize {
    let free = free.max(1) as usize;
    if due <= free { 1 } else { due - (free - 1) }
}

/// The longest window of `limits` (how far back starts are needed).
pub fn horizon(limits: &[RateLimit]) -> Duration {
    limits
        .iter()
        .map(RateLimit::window)
        .max()
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN20: RateLimit = RateLimit {
        max: 20,
        per_ms: 60_000,
    };

    #[test]
    fn a_full_window_waits_until_its_oldest_send_leaves() {
        let now = 100_000;
        let starts: Vec<i64> = (0..20).map(|i| now - 30_000 + i * 100).collect();
        let (f, wait) = free(&[MIN20], &starts, now);
        assert_eq!(f, 0);
        assert_eq!(wait, Duration::from_millis(30_000));
        // Older sends do not count.
        let (f, _) = free(&[MIN20], &[now - 61_000, now - 5_000], now);
        assert_eq!(f, 19);
        assert_eq!(free(&[], &starts, now).0, u32::MAX);
    }

    #[test]
    fn the_tightest_window_wins() {
        let limits = [
            RateLimit {
                max: 5,
                per_ms: 1000,
            },
            RateLimit {
                max: 100,
                per_ms: 60_000,
            },
        ];
        let now = 10_000;
        let (f, wait) = free(&limits, &[9_500, 9_600, 9_700, 9_800, 9_900], now);
        assert_eq!(f, 0);
        assert_eq!(wait, Duration::from_millis(500));
    }

    #[test]
    fn batching_leaves_one_slot_per_remaining_message() {
        assert_eq!(batch_size(1, 20), 1);
        assert_eq!(batch_size(20, 20), 1);
        // 30 waiting, 20 slots: 11 in the first message, then 19 alone.
        assert_eq!(batch_size(30, 20), 11);
        assert_eq!(batch_size(19, 19), 1);
        assert_eq!(batch_size(5, 1), 5);
    }
}
