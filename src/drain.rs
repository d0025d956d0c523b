//! Draining: the one switch that a SIGTERM turns, which the listener, every session and the
//! admin server's `/readyz` read. A leaf: it knows nothing of who reads it.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::IntGauge;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Whether Keyway is draining, and a waiter for when it starts.
pub struct Drain {
    /// Cancelled when draining starts: wakes whoever waits (the accept loop, a session waiting
    /// for the rest of a frame). Cancel it only through [`Drain::begin`], which also sets `flag`.
    token: CancellationToken,
    /// Set when draining starts, before `token` wakes its waiters: the check sessions make
    /// between events, one atomic load (the token's own check takes a lock).
    flag: AtomicBool,
    /// `keyway_draining`.
    gauge: IntGauge,
}

impl Drain {
    /// Not draining; `gauge` shows it once it starts.
    pub fn new(gauge: IntGauge) -> Drain {
        Drain {
            token: CancellationToken::new(),
            flag: AtomicBool::new(false),
            gauge,
        }
    }

    /// Starts draining: stop accepting, fail readiness, let each session answer what it has
    /// received and close.
    pub fn begin(&self) {
        self.gauge.set(1);
        self.flag.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Completes when draining starts.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// A token cancelled when draining starts, for background tasks that stop then.
    pub fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }
}
