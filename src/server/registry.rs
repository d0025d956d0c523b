//! The clients connected to this Keyway, for `CLIENT LIST`, `CLIENT INFO` and `CLIENT KILL`.
//!
//! Each session registers an [`Entry`] when it starts and removes it when it ends. What a
//! client sets on its connection (name, library, protocol) is copied into its entry when it
//! changes, under the entry's own lock, never on the request path; the time of the client's
//! last activity is one atomic store per active stretch. `CLIENT KILL` cancels an entry's token,
//! which the session waits on as it waits on a drain.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

/// Every client, by id.
#[derive(Default)]
pub(crate) struct Registry {
    clients: Mutex<HashMap<u64, Arc<Entry>>>,
}

/// One client, as CLIENT LIST shows it.
pub(crate) struct Entry {
    pub(crate) id: u64,
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) laddr: Option<SocketAddr>,
    pub(crate) fd: i64,
    pub(crate) created: Instant,
    /// Milliseconds from `created` to the client's last activity.
    pub(crate) active_ms: AtomicU64,
    /// Commands queued in its MULTI, or -1 outside one.
    pub(crate) multi: AtomicI64,
    /// Cancelled by `CLIENT KILL`, or to free memory (see `evicted`).
    pub(crate) kill: CancellationToken,
    /// Bytes its buffers hold while it is active (measured only under `limits.max_memory`).
    pub(crate) memory: AtomicUsize,
    /// Disconnected because `limits.max_memory` was reached and it buffered the most.
    pub(crate) evicted: AtomicBool,
    /// What it held when told to go, counted in the budget's `freeing` until it closes.
    pub(crate) freeing: AtomicUsize,
    about: Mutex<About>,
}

/// What the client set, as last copied.
#[derive(Default, Clone)]
pub(crate) struct About {
    pub(crate) name: Option<Bytes>,
    pub(crate) lib_name: Option<Bytes>,
    pub(crate) lib_ver: Option<Bytes>,
    pub(crate) resp: i64,
    pub(crate) no_evict: bool,
    /// The user the client authenticated as (`None`: `default`).
    pub(crate) user: Option<Arc<str>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Registry {
    /// The client whose buffers hold the most now, of those not already told to go for it.
    pub(crate) fn largest(&self) -> Option<Arc<Entry>> {
        lock(&self.clients)
            .values()
            .filter(|e| !e.evicted.load(Ordering::Relaxed))
            .max_by_key(|e| e.memory.load(Ordering::Relaxed))
            .cloned()
    }

    /// Registers client `id`; it is removed when the returned guard drops.
    pub(crate) fn add(
        self: &Arc<Self>,
        id: u64,
        addr: Option<SocketAddr>,
        laddr: Option<SocketAddr>,
        fd: i64,
    ) -> Registered {
        let entry = Arc::new(Entry {
            id,
            addr,
            laddr,
            fd,
            created: Instant::now(),
            active_ms: AtomicU64::new(0),
            multi: AtomicI64::new(-1),
            kill: CancellationToken::new(),
            memory: AtomicUsize::new(0),
            evicted: AtomicBool::new(false),
            freeing: AtomicUsize::new(0),
            about: Mutex::new(About {
                resp: 2,
                ..About::default()
            }),
        });
        lock(&self.clients).insert(id, entry.clone());
        Registered {
            registry: self.clone(),
            entry,
        }
    }

    /// Every client, by id (but those being closed by `CLIENT KILL`).
    pub(crate) fn all(&self) -> Vec<Arc<Entry>> {
        let mut all: Vec<_> = lock(&self.clients)
            .values()
            .filter(|e| !e.kill.is_cancelled())
            .cloned()
            .collect();
        all.sort_by_key(|e| e.id);
        all
    }
}

/// A registered client; dropping it removes the entry.
pub(crate) struct Registered {
    registry: Arc<Registry>,
    pub(crate) entry: Arc<Entry>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.registry.clients).remove(&self.entry.id);
    }
}

impl Entry {
    /// Replaces what the client set.
    pub(crate) fn set_about(&self, about: About) {
        *lock(&self.about) = about;
    }

    /// What the client set.
    pub(crate) fn about(&self) -> About {
        lock(&self.about).clone()
    }

    /// Notes activity now.
    #[inline]
    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.active_ms.store(ms, Ordering::Relaxed);
    }

    /// The client's line of CLIENT LIST (without the newline): redis-server's fields that Keyway
    /// knows, in its order, and the library fields `CLIENT SETINFO` sets.
    pub(crate) fn line(&self) -> String {
        let about = self.about();
        let text = |b: &Option<Bytes>| {
            b.as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let age = self.created.elapsed().as_secs();
        let idle = age.saturating_sub(self.active_ms.load(Ordering::Relaxed) / 1000);
        let show = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let mut s = String::with_capacity(192);
        let _ = write!(
            s,
            "id={} addr={} laddr={} fd={} name={} age={age} idle={idle} flags={} db=0 sub=0 \
             psub=0 ssub=0 multi={} user={} redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            show(self.addr),
            show(self.laddr),
            self.fd,
            text(&about.name),
            if about.no_evict { "e" } else { "N" },
            self.multi.load(Ordering::Relaxed),
            about.user.as_deref().unwrap_or("default"),
            about.resp,
            text(&about.lib_name),
            text(&about.lib_ver),
        );
        s
    }
}
