//! `limits.max_memory`: one bound on the bytes Keyway buffers for all its clients together.
//!
//! Each active session charges the [`Budget`] with what its buffers hold (the read buffer's
//! and the reply buffer's allocations), re-measured after each event and only when it changed:
//! one comparison per event while nothing grows, one atomic add when something did. A parked
//! session holds no buffer and no charge. When the total passes the cap, the client holding
//! the most is disconnected (it is told why if its socket takes the error at once), and
//! counted in `keyway_client_disconnects_total{reason="max_memory"}`: a client that sends a
//! huge value or pipelines without reading its replies is cut before Keyway's memory grows
//! past the cap, and the other clients go on.
//!
//! With `max_memory = 0` nothing is measured.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::registry::{Entry, Registry};

/// What all clients may buffer together, and what they buffer now.
pub(crate) struct Budget {
    /// `limits.max_memory`; 0: no bound, nothing measured.
    pub(crate) cap: usize,
    used: AtomicUsize,
    /// Of `used`, what clients already told to go still hold (freed as they close): not
    /// counted again when deciding whether to disconnect another.
    freeing: AtomicUsize,
}

impl Budget {
    pub(crate) fn new(cap: usize) -> Budget {
        Budget {
            cap,
            used: AtomicUsize::new(0),
            freeing: AtomicUsize::new(0),
        }
    }

    /// Moves a charge from `from` to `to` bytes; returns the total after.
    fn adjust(&self, from: usize, to: usize) -> usize {
        if to >= from {
            self.used.fetch_add(to - from, Ordering::Relaxed) + (to - from)
        } else {
            self.used
                .fetch_sub(from - to, Ordering::Relaxed)
                .saturating_sub(from - to)
        }
    }

    /// Over the cap: marks the client holding the most (of those not already told to go) for
    /// disconnection and cancels its token (the session closes at its next event). Returns
    /// its id and bytes.
    #[cold]
    fn evict(&self, registry: &Registry) -> Option<(u64, usize)> {
        let largest = registry.largest()?;
        let bytes = largest.memory.load(Ordering::Relaxed);
        if bytes == 0 || largest.evicted.swap(true, Ordering::Relaxed) {
            return None;
        }
        largest.freeing.store(bytes, Ordering::Relaxed);
        self.freeing.fetch_add(bytes, Ordering::Relaxed);
        largest.kill.cancel();
        Some((largest.id, bytes))
    }
}

/// One active session's charge; released when the stretch ends (dropped).
pub(crate) struct Charge<'s> {
    budget: &'s Budget,
    gauge: &'s prometheus::IntGauge,
    registry: &'s Registry,
    entry: Option<Arc<Entry>>,
    bytes: usize,
}

impl<'s> Charge<'s> {
    pub(crate) fn new(
        budget: &'s Budget,
        gauge: &'s prometheus::IntGauge,
        registry: &'s Registry,
        entry: Option<&Arc<Entry>>,
    ) -> Charge<'s> {
        Charge {
            budget,
            gauge,
            registry,
            // Only kept when there is a bound: no reference count touched per stretch without.
            entry: (budget.cap > 0).then(|| entry.cloned()).flatten(),
            bytes: 0,
        }
    }

    /// The session's buffers now hold `bytes`. Past the cap, the client holding the most is
    /// disconnected (possibly this one).
    #[inline]
    pub(crate) fn set(&mut self, bytes: usize) {
        if self.budget.cap == 0 || bytes == self.bytes {
            return;
        }
        let total = self.budget.adjust(self.bytes, bytes);
        self.bytes = bytes;
        self.gauge.set(i64::try_from(total).unwrap_or(i64::MAX));
        if let Some(entry) = &self.entry {
            entry.memory.store(bytes, Ordering::Relaxed);
        }
        if total.saturating_sub(self.budget.freeing.load(Ordering::Relaxed)) > self.budget.cap {
            if let Some((id, held)) = self.budget.evict(self.registry) {
                tracing::warn!(
                    client = id,
                    bytes = held,
                    buffered = total,
                    max_memory = self.budget.cap,
                    "limits.max_memory reached: disconnecting the client that buffers the most"
                );
            }
        }
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let total = self.budget.adjust(self.bytes, 0);
            self.gauge.set(i64::try_from(total).unwrap_or(i64::MAX));
            if let Some(entry) = &self.entry {
                entry.memory.store(0, Ordering::Relaxed);
                let freed = entry.freeing.swap(0, Ordering::Relaxed);
                self.budget.freeing.fetch_sub(freed, Ordering::Relaxed);
            }
        }
    }
}

/// What a client disconnected for memory reads, if its socket takes it at once.
pub(crate) const EVICTED: &[u8] = b"-ERR keyway: limits.max_memory reached (bytes buffered \
    for all clients together); this client buffered the most and is disconnected: read replies \
    as they come, and send values smaller than the limit\r\n";
