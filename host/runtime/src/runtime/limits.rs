//! Per-invocation limits: memory cap with peak accounting, and the errors a
//! limit raises inside the guest so the runtime can name them precisely.

use std::time::Instant;

/// The guest tried to grow its memory past its cap.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {cap} bytes exceeded: the plugin asked for {requested} bytes")]
pub struct MemoryLimitExceeded {
    /// The cap in bytes.
    pub cap: usize,
    /// Total bytes the refused growth would have reached.
    pub requested: usize,
}

/// The invocation ran past its wall-clock deadline.
#[derive(Debug, thiserror::Error)]
#[error("deadline of {deadline_ms} ms exceeded")]
pub struct DeadlineExceeded {
    /// The deadline in milliseconds.
    pub deadline_ms: u64,
}

/// Most table elements any table may hold.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Enforces the memory cap across all of a call's memories and records the peak.
#[derive(Debug)]
pub struct Limiter {
    cap: usize,
    total: usize,
    peak: usize,
    /// When the call must end.
    pub deadline: Instant,
    /// The deadline as configured, for error messages.
    pub deadline_ms: u64,
}

impl Limiter {
    /// A limiter with a memory cap in bytes and a deadline.
    pub fn new(cap: usize, deadline_ms: u64) -> Self {
        Limiter {
            cap,
            total: 0,
            peak: 0,
            deadline: Instant::now() + std::time::Duration::from_millis(deadline_ms),
            deadline_ms,
        }
    }

    /// Highest total linear memory the call reached, in bytes.
    pub fn peak(&self) -> usize {
        self.peak
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total - current.min(self.total) + desired;
        if total > self.cap {
            return Err(MemoryLimitExceeded {
                cap: self.cap,
                requested: total,
            }
            .into());
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
