//! What a client has set on its connection, kept for the connection's life (also while its
//! session is parked, holding no buffers). Kept small: every idle connection holds one.

use bytes::Bytes;

use crate::backend::Pick;
use crate::protocol::Proto;

/// A client connection's state.
pub(crate) struct ClientState {
    /// The client id (`CLIENT ID`); also picks this client's connection of each server's pool.
    pub(crate) id: u64,
    /// Round-robin position of this client's reads.
    pub(crate) rr: usize,
    /// What `CLIENT SETNAME` and `CLIENT SETINFO` set, boxed: most clients set nothing, and an
    /// idle connection then pays one pointer for it.
    pub(crate) about: Option<Box<About>>,
    /// The protocol the client speaks (RESP2 until it says `HELLO 3`).
    pub(crate) proto: Proto,
    /// The transaction being queued, from MULTI to EXEC or DISCARD (boxed: most clients never
    /// send MULTI).
    pub(crate) multi: Option<Box<Multi>>,
    /// The keys watched (`WATCH`), and the server connection that watches them.
    pub(crate) watch: Option<Box<Watch>>,
    /// This client's line of CLIENT LIST (none in unit tests).
    pub(crate) entry: Option<std::sync::Arc<super::registry::Entry>>,
    /// `CLIENT REPLY`: whether replies are sent.
    pub(crate) replies: Replies,
    /// The client's pub/sub subscriptions and mailbox, from its first (P|S)SUBSCRIBE until
    /// RESET or disconnect (boxed: most clients never subscribe).
    pub(crate) pubsub: Option<Box<super::pubsub::Subs>>,
    /// Who the client is (see [`Auth`]).
    pub(crate) auth: Auth,
    /// The users `auth` was decided against: when a reload puts others in force, the session
    /// binds the client again ([`ClientState::rebind`]).
    pub(crate) users: std::sync::Arc<crate::acl::Users>,
}

/// Who a client is.
#[derive(Clone, Debug)]
pub(crate) enum Auth {
    /// No users are configured: every command is allowed, as ever.
    Open,
    /// Users are configured and the client has not authenticated (or its user went away):
    /// only `AUTH`, `HELLO`, `QUIT` and `RESET` run.
    Required,
    /// Authenticated (or the `default` user with `nopass`): its rules apply.
    User(std::sync::Arc<crate::acl::User>),
}

impl Auth {
    /// How a new connection starts under `users`.
    pub(crate) fn initial(users: &crate::acl::Users) -> Auth {
        if users.is_empty() {
            return Auth::Open;
        }
        users.initial().map_or(Auth::Required, Auth::User)
    }
}

/// `CLIENT REPLY ON|OFF|SKIP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Replies {
    /// Every reply is sent.
    #[default]
    On,
    /// No reply is sent.
    Off,
    /// The next command's reply is not sent.
    Skip,
}

/// What `WATCH` keeps: the slot of the watched keys, and the connection that watches them
/// (filled by the WATCH request once the connection is open; shared with that request's
/// pending reply, which runs after the session planned it).
pub(crate) struct Watch {
    pub(crate) slot: crate::routing::Slot,
    pub(crate) held: std::sync::Arc<tokio::sync::Mutex<Option<Held>>>,
}

/// A server connection held for one client.
pub(crate) struct Held {
    pub(crate) lease: crate::backend::Lease,
    /// The server it goes to.
    pub(crate) server: u16,
    /// Its share of `limits.max_transactions`.
    pub(crate) _permit: tokio::sync::OwnedSemaphorePermit,
}

/// A transaction being queued (see `server::multi`).
#[derive(Default)]
pub(crate) struct Multi {
    /// What runs the transaction on a server: `MULTI`, then the queued commands' frames in
    /// order (`EXEC` is appended at EXEC). Empty until a command is queued.
    pub(crate) frame: bytes::BytesMut,
    /// Commands queued.
    pub(crate) count: usize,
    /// A command was refused while queuing: EXEC answers EXECABORT.
    pub(crate) dirty: bool,
    /// The slot of the keys queued so far (all must share it, but under two-phase).
    pub(crate) slot: Option<crate::routing::Slot>,
    /// Some command queued so far writes.
    pub(crate) writes: bool,
}

/// Names a client gave itself.
#[derive(Default)]
pub(crate) struct About {
    /// `CLIENT SETNAME`, `HELLO ... SETNAME`.
    pub(crate) name: Option<Bytes>,
    /// `CLIENT SETINFO LIB-NAME`.
    pub(crate) lib_name: Option<Bytes>,
    /// `CLIENT SETINFO LIB-VER`.
    pub(crate) lib_ver: Option<Bytes>,
}

impl ClientState {
    /// A new client's state. Reads start their round robin at the client id, so that clients
    /// do not all begin on the same replica.
    pub(crate) fn new(id: u64) -> ClientState {
        ClientState {
            id,
            // Truncation is fine: only the remainder modulo the replica count matters.
            rr: id as usize,
            about: None,
            proto: Proto::Resp2,
            multi: None,
            watch: None,
            entry: None,
            replies: Replies::On,
            pubsub: None,
            auth: Auth::Open,
            users: std::sync::Arc::default(),
        }
    }

    /// Binds the client to the users in force (a new connection, or a reload): a user that
    /// still exists and is on keeps the client with its new rules; otherwise the client starts
    /// over as a new connection would (the `default` user with `nopass`, or not authenticated).
    #[cold]
    pub(crate) fn rebind(&mut self, users: &std::sync::Arc<crate::acl::Users>) {
        let kept = match &self.auth {
            Auth::User(u) => users
                .get(u.name().as_bytes())
                .filter(|n| n.enabled())
                .cloned(),
            Auth::Open | Auth::Required => None,
        };
        self.auth = match kept {
            Some(u) => Auth::User(u),
            None => Auth::initial(users),
        };
        self.users = users.clone();
        self.publish();
    }

    /// The name of the client's user (`default` when none).
    pub(crate) fn user_name(&self) -> &str {
        match &self.auth {
            Auth::User(u) => u.name(),
            Auth::Open | Auth::Required => "default",
        }
    }

    /// Which of a server pool's connections this client's requests take: one of the client's
    /// protocol, so that replies come as the client expects them.
    pub(crate) fn pick(&self) -> Pick {
        Pick {
            // Truncation is fine: only the remainder modulo the pool size matters.
            conn: self.id as usize,
            proto: self.proto,
        }
    }

    /// The name set by `CLIENT SETNAME`.
    pub(crate) fn name(&self) -> Option<&Bytes> {
        self.about.as_ref().and_then(|a| a.name.as_ref())
    }

    /// The names, to be set.
    pub(crate) fn about_mut(&mut self) -> &mut About {
        self.about.get_or_insert_with(Box::default)
    }

    /// Copies what the client set into its CLIENT LIST entry.
    pub(crate) fn publish(&self) {
        let Some(entry) = &self.entry else { return };
        let about = self.about.as_deref();
        let no_evict = entry.about().no_evict;
        entry.set_about(super::registry::About {
            name: about.and_then(|a| a.name.clone()),
            lib_name: about.and_then(|a| a.lib_name.clone()),
            lib_ver: about.and_then(|a| a.lib_ver.clone()),
            resp: self.proto.version(),
            no_evict,
            user: match &self.auth {
                Auth::User(u) if u.name() != "default" => Some(std::sync::Arc::from(u.name())),
                _ => None,
            },
        });
    }

    /// Back to a new connection's settings (`RESET`: RESP2, no name), keeping the id. As
    /// redis-server, the library name and version stay: they still describe the client behind
    /// the connection.
    pub(crate) fn reset(&mut self) {
        self.proto = Proto::Resp2;
        self.multi = None;
        self.watch = None;
        self.replies = Replies::On;
        // Leaves every channel and pattern, as RESET does on redis-server.
        self.pubsub = None;
        if let Some(about) = &mut self.about {
            about.name = None;
        }
        // Back to the user a new connection is, as RESET does on redis-server.
        if !matches!(self.auth, Auth::Open) {
            self.auth = Auth::initial(&self.users);
        }
    }
}
