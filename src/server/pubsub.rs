//! Publish/subscribe through Keyway: `PUBLISH`/`SPUBLISH` to the channel's server, the six
//! (un)subscribe commands over one subscriber connection per server shared by every client, and
//! the `PUBSUB` listings merged over the pool (docs/pubsub.md).
//!
//! # Placement
//!
//! A channel (and a shard channel) lives on the server of its slot (hash tags apply): the
//! slot's primary, or with `replicas = 1` the server failover chose for it when the first
//! client subscribed ([`super::plan::channel_server`]). `PUBLISH` goes there, so a message
//! reaches the subscribers of its channel on every Keyway. A pattern may match channels of any
//! slot, so it is subscribed on every server.
//!
//! # The hub
//!
//! [`Hub`] (one per Keyway) keeps, per channel, shard channel and pattern, the mailboxes of the
//! clients subscribed to it, and per server one [`Link`]: a RESP2 connection in subscribed mode
//! that carries every channel any client of this Keyway subscribed to there. A channel's first
//! subscriber makes the link send `SUBSCRIBE`; its last one leaving sends `UNSUBSCRIBE`. A
//! message the link reads is handed to each subscriber's [`Mailbox`] (a reference count per
//! client, never a copy), and the session writes it out (as `>` push for a RESP3 client).
//!
//! # What a client sees
//!
//! The session keeps the client's own subscriptions ([`Subs`]) and answers the (un)subscribe
//! commands itself, counts and shapes as redis-server's. A subscription that is new on the
//! server is answered once the server confirmed it (or the link is down), so a message
//! published after the client got its reply reaches it.
//!
//! # Limits and failures
//!
//! A mailbox holds at most `limits.max_client_output` bytes: a subscriber that does not keep
//! up is cut off there (its session disconnects it), and the link never waits for it. A link
//! whose server goes away reconnects with backoff and subscribes again to everything mapped to
//! that server; messages published while it was away are lost, as they are for a redis-server
//! client. A topology swap moves the subscriptions of channels whose slot changed server
//! ([`Hub::rehome`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

use super::client::ClientState;
use super::reply::Pending;
use crate::backend::Pool;
use crate::command::PubSub;
use crate::error::{ErrorKind, Reply, ReplyError};
use crate::metrics::Metrics;
use crate::protocol::{
    write_array_header, write_bulk, write_command, write_integer, Args, Limits, Proto,
    ReplyDecoder, Value,
};
use crate::topology::{Topology, TopologyHandle};

/// The three name spaces of Redis pub/sub.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Space {
    /// `SUBSCRIBE` / `PUBLISH`.
    Channel,
    /// `SSUBSCRIBE` / `SPUBLISH`.
    Shard,
    /// `PSUBSCRIBE`: on every server.
    Pattern,
}

impl Space {
    const ALL: [Space; 3] = [Space::Channel, Space::Shard, Space::Pattern];

    fn subscribe(self) -> &'static [u8] {
        match self {
            Space::Channel => b"subscribe",
            Space::Shard => b"ssubscribe",
            Space::Pattern => b"psubscribe",
        }
    }

    fn unsubscribe(self) -> &'static [u8] {
        match self {
            Space::Channel => b"unsubscribe",
            Space::Shard => b"sunsubscribe",
            Space::Pattern => b"punsubscribe",
        }
    }
}

/// Names per `SUBSCRIBE` frame a link sends when it subscribes again after a reconnect.
const RESUBSCRIBE_BATCH: usize = 1024;

/// Room a link's read buffer is given at a time, and the least it reads into.
const READ_CHUNK: usize = 64 * 1024;
const READ_MIN: usize = 4 * 1024;

/// First and longest wait between a link's connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Mailboxes.

/// Where a link leaves the messages for one client: frames as the server sent them (RESP2),
/// at most `limit` bytes. The session takes them when it is woken.
pub(crate) struct Mailbox {
    inbox: Mutex<Inbox>,
    /// The client's id (to find its entries in a channel's list).
    id: u64,
}

#[derive(Default)]
struct Inbox {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// The client did not keep up: it is disconnected, and nothing more is kept for it.
    cut: bool,
    waker: Option<Waker>,
}

impl Mailbox {
    fn new(id: u64) -> Mailbox {
        Mailbox {
            inbox: Mutex::new(Inbox::default()),
            id,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Leaves a message; past `limit` bytes waiting, the client is cut off instead (a message
    /// larger than the limit still goes to an empty mailbox).
    fn push(&self, frame: &Bytes, limit: usize) {
        let mut inbox = self.lock();
        if inbox.cut {
            return;
        }
        if !inbox.frames.is_empty() && inbox.bytes + frame.len() > limit {
            inbox.cut = true;
            inbox.frames = VecDeque::new();
            inbox.bytes = 0;
        } else {
            inbox.bytes += frame.len();
            inbox.frames.push_back(frame.clone());
        }
        if let Some(waker) = inbox.waker.take() {
            waker.wake();
        }
    }

    /// Ready once a message is waiting or the client was cut off.
    pub(crate) fn poll_mail(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inbox = self.lock();
        if inbox.cut || !inbox.frames.is_empty() {
            return Poll::Ready(());
        }
        match &inbox.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inbox.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Whether a message is waiting or the client was cut off.
    pub(crate) fn has_mail(&self) -> bool {
        let inbox = self.lock();
        inbox.cut || !inbox.frames.is_empty()
    }

    /// Takes every waiting message. `Err(())` when the client was cut off at the limit.
    #[allow(clippy::result_unit_err, reason = "one reason only")]
    pub(crate) fn take(&self) -> Result<VecDeque<Bytes>, ()> {
        let mut inbox = self.lock();
        if inbox.cut {
            return Err(());
        }
        inbox.bytes = 0;
        Ok(std::mem::take(&mut inbox.frames))
    }
}

/// Appends a message frame (RESP2, as the server sent it) for a client of `proto`: a RESP3
/// client gets the same array as a push (`>`).
pub(crate) fn put_message(out: &mut BytesMut, frame: &[u8], proto: Proto) {
    match (proto, frame.split_first()) {
        (Proto::Resp3, Some((b'*', rest))) => {
            out.extend_from_slice(b">");
            out.extend_from_slice(rest);
        }
        _ => out.extend_from_slice(frame),
    }
}

// ---------------------------------------------------------------------------------------------
// The hub.

/// A subscription made on a server, awaited by the clients whose replies depend on it.
#[derive(Default)]
struct Confirm {
    done: AtomicBool,
    notify: Notify,
}

impl Confirm {
    fn fire(&self) {
        self.done.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.done.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// One channel, shard channel or pattern with local subscribers.
struct Topic {
    /// The server it is subscribed on; none for a pattern (every server).
    server: Option<Arc<str>>,
    clients: Vec<Arc<Mailbox>>,
    /// Fired once the server(s) confirmed the subscription (or the link failed).
    confirmed: Vec<Arc<Confirm>>,
}

/// A command for a link: a frame and the number of replies it gets, and what to fire once they
/// are in.
struct Cmd {
    frame: Bytes,
    replies: usize,
    confirm: Option<Arc<Confirm>>,
}

/// The handle of one server's subscriber connection task. Dropping it ends the task, whose
/// connection closes (and the server forgets its subscriptions).
struct Link {
    tx: mpsc::UnboundedSender<Cmd>,
    /// The pool it was started on: a swap that gives its server another pool (a new address
    /// or connection settings) replaces the link.
    pool: Arc<Pool>,
}

#[derive(Default)]
struct State {
    /// Per space: name -> topic. Keyed by the name alone, so that a message's name is looked
    /// up without a copy.
    channels: HashMap<Bytes, Topic>,
    shards: HashMap<Bytes, Topic>,
    patterns: HashMap<Bytes, Topic>,
    links: HashMap<Arc<str>, Link>,
}

impl State {
    fn topics(&self, space: Space) -> &HashMap<Bytes, Topic> {
        match space {
            Space::Channel => &self.channels,
            Space::Shard => &self.shards,
            Space::Pattern => &self.patterns,
        }
    }

    fn topics_mut(&mut self, space: Space) -> &mut HashMap<Bytes, Topic> {
        match space {
            Space::Channel => &mut self.channels,
            Space::Shard => &mut self.shards,
            Space::Pattern => &mut self.patterns,
        }
    }
}

/// Every subscription of this Keyway's clients, and one subscriber connection per server.
pub(crate) struct Hub {
    state: Mutex<State>,
    topology: Arc<TopologyHandle>,
    /// `limits.max_client_output`: what a mailbox holds at most.
    limit: usize,
    metrics: Arc<Metrics>,
    /// Itself, for the link tasks (which must not keep it alive).
    this: Weak<Hub>,
}

impl Hub {
    pub(crate) fn new(
        topology: Arc<TopologyHandle>,
        limit: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Hub> {
        let hub = Arc::new_cyclic(|this| Hub {
            state: Mutex::default(),
            topology: topology.clone(),
            limit,
            metrics,
            this: this.clone(),
        });
        tokio::spawn(follow_swaps(Arc::downgrade(&hub), topology.watch()));
        hub
    }

    /// Brings the subscriptions in line with a new topology: a channel or shard channel whose
    /// slot now lives on another server is subscribed there, then unsubscribed from the old
    /// one, so its subscribers keep receiving without subscribing again; links to servers gone
    /// from the pool (or now at another address) close; a server new to the pool gets every
    /// pattern. A message published during the move, on the old server after the
    /// unsubscription or on the new one before the subscription, is lost, as any message
    /// published while a subscriber is not connected.
    fn rehome(&self, topo: &Topology) {
        let mut state = self.lock();
        let state = &mut *state;
        let current: HashMap<&str, &Arc<Pool>> = topo
            .servers
            .iter()
            .map(|s| (s.name.as_str(), &s.pool))
            .collect();
        let before = state.links.len();
        state.links.retain(|name, link| {
            current
                .get(name.as_ref())
                .is_some_and(|pool| Arc::ptr_eq(pool, &link.pool))
        });
        let closed = before - state.links.len();
        let mut moved = 0usize;
        for space in [Space::Channel, Space::Shard] {
            // (name, old server, new server and its pool)
            let mut moves: Vec<(Bytes, Option<Arc<str>>, Home)> = Vec::new();
            for (name, topic) in state.topics(space) {
                let Some(to) = topo.server(super::plan::channel_server(topo, name)) else {
                    continue;
                };
                if topic.server.as_deref() != Some(to.name.as_str()) {
                    let to_name: Arc<str> = Arc::from(to.name.as_str());
                    moves.push((
                        name.clone(),
                        topic.server.clone(),
                        (to_name, to.pool.clone()),
                    ));
                }
            }
            for (name, from, (to, pool)) in moves {
                let confirm = Arc::new(Confirm::default());
                let mut frame = BytesMut::new();
                write_command(&mut frame, &[space.subscribe(), name.as_ref()]);
                if let Some(topic) = state.topics_mut(space).get_mut(&name) {
                    topic.server = Some(to.clone());
                    topic.confirmed = vec![confirm.clone()];
                }
                let link = self.link(state, &to, &pool);
                let cmd = Cmd {
                    frame: frame.freeze(),
                    replies: 1,
                    confirm: Some(confirm.clone()),
                };
                if link.tx.send(cmd).is_err() {
                    confirm.fire();
                }
                if let Some(old) = from.and_then(|from| state.links.get(&from)) {
                    let mut frame = BytesMut::new();
                    write_command(&mut frame, &[space.unsubscribe(), name.as_ref()]);
                    let _ = old.tx.send(Cmd {
                        frame: frame.freeze(),
                        replies: 1,
                        confirm: None,
                    });
                }
                moved += 1;
            }
        }
        // Patterns live on every server; a new link subscribes to them when it connects.
        if !state.patterns.is_empty() {
            for server in &topo.servers {
                self.link(state, &Arc::from(server.name.as_str()), &server.pool);
            }
        }
        // Servers with subscriptions left but no link (their link was replaced): a new one.
        let homes: HashSet<Arc<str>> = [Space::Channel, Space::Shard]
            .into_iter()
            .flat_map(|space| state.topics(space).values())
            .filter_map(|topic| topic.server.clone())
            .collect();
        for home in homes {
            if let Some(server) = topo.servers.iter().find(|s| s.name.as_str() == &*home) {
                self.link(state, &home, &server.pool);
            }
        }
        if moved > 0 || closed > 0 {
            tracing::info!(
                version = topo.version,
                channels_moved = moved,
                links_closed = closed,
                "pub/sub: subscriptions follow the new topology"
            );
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `mailbox` to the subscribers of `name`. When the topic is new, the link(s) of
    /// `servers` subscribe to it; returns what confirms the subscription, if it is not yet.
    fn join(&self, space: Space, name: &Bytes, mailbox: &Arc<Mailbox>) -> Vec<Arc<Confirm>> {
        let mut state = self.lock();
        let key = name.clone();
        if let Some(topic) = state.topics_mut(space).get_mut(&key) {
            topic.clients.push(mailbox.clone());
            return topic
                .confirmed
                .iter()
                .filter(|c| !c.done.load(Ordering::Acquire))
                .cloned()
                .collect();
        }
        // The topology is read under the hub's lock, so a swap's [`Hub::rehome`] either comes
        // after (and moves this topic if it must) or came before (and this reads its snapshot).
        let servers = homes(&self.topology.load(), space, name);
        let mut frame = BytesMut::new();
        write_command(&mut frame, &[space.subscribe(), name.as_ref()]);
        let frame = frame.freeze();
        let mut confirmed = Vec::with_capacity(servers.len());
        for (server, pool) in &servers {
            let confirm = Arc::new(Confirm::default());
            let link = self.link(&mut state, server, pool);
            let cmd = Cmd {
                frame: frame.clone(),
                replies: 1,
                confirm: Some(confirm.clone()),
            };
            if link.tx.send(cmd).is_err() {
                confirm.fire();
            }
            confirmed.push(confirm);
        }
        let server = match space {
            Space::Pattern => None,
            Space::Channel | Space::Shard => servers.first().map(|(s, _)| s.clone()),
        };
        state.topics_mut(space).insert(
            key,
            Topic {
                server,
                clients: vec![mailbox.clone()],
                confirmed: confirmed.clone(),
            },
        );
        confirmed
    }

    /// Removes client `id` from the subscribers of `name`; the last one leaving unsubscribes
    /// the server(s).
    fn leave(&self, space: Space, name: &Bytes, id: u64) {
        let mut state = self.lock();
        let Some(topic) = state.topics_mut(space).get_mut(name) else {
            return;
        };
        if let Some(at) = topic.clients.iter().position(|m| m.id == id) {
            topic.clients.swap_remove(at);
        }
        if !topic.clients.is_empty() {
            return;
        }
        let server = topic.server.clone();
        state.topics_mut(space).remove(name);
        let mut frame = BytesMut::new();
        write_command(&mut frame, &[space.unsubscribe(), name.as_ref()]);
        let frame = frame.freeze();
        let send = |link: &Link| {
            let _ = link.tx.send(Cmd {
                frame: frame.clone(),
                replies: 1,
                confirm: None,
            });
        };
        match server {
            Some(server) => {
                if let Some(link) = state.links.get(&server) {
                    send(link);
                }
            }
            None => state.links.values().for_each(send),
        }
    }

    /// The link to `server`, started if there is none.
    fn link<'s>(&self, state: &'s mut State, server: &Arc<str>, pool: &Arc<Pool>) -> &'s Link {
        state.links.entry(server.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(link_task(
                self.this.clone(),
                server.clone(),
                pool.clone(),
                rx,
            ));
            Link {
                tx,
                pool: pool.clone(),
            }
        })
    }

    /// What a link to `server` subscribes to after it (re)connects: one `SUBSCRIBE`,
    /// `SSUBSCRIBE` or `PSUBSCRIBE` per batch of names, with its reply count.
    fn resubscribe(&self, server: &str) -> Vec<(Bytes, usize)> {
        let state = self.lock();
        let mut frames = Vec::new();
        for space in Space::ALL {
            let names: Vec<&Bytes> = state
                .topics(space)
                .iter()
                .filter(|(_, topic)| match &topic.server {
                    Some(s) => s.as_ref() == server,
                    None => true,
                })
                .map(|(name, _)| name)
                .collect();
            for batch in names.chunks(RESUBSCRIBE_BATCH) {
                let mut args: Vec<&[u8]> = Vec::with_capacity(batch.len() + 1);
                args.push(space.subscribe());
                args.extend(batch.iter().map(|n| n.as_ref()));
                let mut frame = BytesMut::new();
                write_command(&mut frame, &args);
                frames.push((frame.freeze(), batch.len()));
            }
        }
        frames
    }

    /// Hands a message of `name` to each of its subscribers.
    fn deliver(&self, space: Space, name: &[u8], frame: &Bytes) {
        let state = self.lock();
        if let Some(topic) = state.topics(space).get(name) {
            for mailbox in &topic.clients {
                mailbox.push(frame, self.limit);
            }
            self.metrics
                .pubsub_delivered
                .inc_by(topic.clients.len() as u64);
        }
    }
}

/// A server's name and pool.
type Home = (Arc<str>, Arc<Pool>);

/// The server(s) a topic is subscribed on: every server for a pattern, the channel's server
/// (by its slot) for a channel or shard channel.
fn homes(topo: &Topology, space: Space, name: &[u8]) -> Vec<Home> {
    match space {
        Space::Pattern => topo
            .servers
            .iter()
            .map(|s| (Arc::<str>::from(s.name.as_str()), s.pool.clone()))
            .collect(),
        Space::Channel | Space::Shard => topo
            .server(super::plan::channel_server(topo, name))
            .map(|s| vec![(Arc::<str>::from(s.name.as_str()), s.pool.clone())])
            .unwrap_or_default(),
    }
}

/// Moves the hub's subscriptions after each topology swap, for as long as the hub lives.
async fn follow_swaps(hub: Weak<Hub>, mut swaps: tokio::sync::watch::Receiver<u64>) {
    while swaps.changed().await.is_ok() {
        let Some(hub) = hub.upgrade() else { return };
        let topo = hub.topology.load();
        hub.rehome(&topo);
    }
}

// ---------------------------------------------------------------------------------------------
// Links: one subscriber connection per server.

/// One server's subscriber connection, for as long as the hub lives: connects (RESP2, with
/// Keyway's credentials), subscribes to everything the hub maps to this server, then writes the
/// hub's commands and hands each message to the hub. On a failure, whatever waits for a
/// confirmation is released (the subscription stays, and is made again on the next
/// connection), and it reconnects with backoff.
async fn link_task(
    hub: Weak<Hub>,
    server: Arc<str>,
    mut pool: Arc<Pool>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        // The pool of the current topology's server of that name, if it changed address.
        if let Some(hub) = hub.upgrade() {
            let topo = hub.topology.load();
            if let Some(s) = topo.servers.iter().find(|s| *s.name == *server) {
                pool = s.pool.clone();
            }
        } else {
            return;
        }
        let stream = match pool.subscriber().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(server = %server, error = %e, "pub/sub link: cannot connect");
                // Nothing waits on a server that cannot be reached.
                let until = tokio::time::sleep(backoff);
                tokio::pin!(until);
                loop {
                    tokio::select! {
                        () = &mut until => break,
                        cmd = rx.recv() => match cmd {
                            Some(cmd) => if let Some(c) = cmd.confirm { c.fire() },
                            None => return,
                        },
                    }
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        match serve_link(&hub, &server, stream, &mut rx).await {
            Ok(()) => return,
            Err(reason) => {
                tracing::warn!(server = %server, %reason, "pub/sub link lost; subscribing again once the server is back (messages published meanwhile are lost)");
                if let Some(hub) = hub.upgrade() {
                    hub.metrics.pubsub_link_failures.inc();
                }
            }
        }
    }
}

/// Runs one connection of a link until it fails (`Err`, why) or the hub is gone (`Ok`).
async fn serve_link(
    hub: &Weak<Hub>,
    server: &Arc<str>,
    mut stream: crate::tls::Conn,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
) -> Result<(), String> {
    // Replies awaited, in order: how many each command still has coming, and what to fire.
    let mut awaited: VecDeque<(usize, Option<Arc<Confirm>>)> = VecDeque::new();
    let release = |awaited: &mut VecDeque<(usize, Option<Arc<Confirm>>)>| {
        for (_, confirm) in awaited.drain(..) {
            if let Some(c) = confirm {
                c.fire();
            }
        }
    };
    let mut out = BytesMut::new();
    {
        let Some(h) = hub.upgrade() else {
            return Ok(());
        };
        for (frame, replies) in h.resubscribe(server) {
            out.extend_from_slice(&frame);
            awaited.push_back((replies, None));
        }
    }
    let mut decoder = ReplyDecoder::new(Limits::for_replies());
    let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
    let result = loop {
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out).await {
                break Err(e.to_string());
            }
            out.clear();
        }
        if inbuf.capacity() - inbuf.len() < READ_MIN {
            // Frames are split off the front: without room, reads would come 64 bytes at a time.
            inbuf.reserve(READ_CHUNK);
        }
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(cmd) => {
                    out.extend_from_slice(&cmd.frame);
                    awaited.push_back((cmd.replies, cmd.confirm));
                    // Take every queued command into the same write.
                    while let Ok(cmd) = rx.try_recv() {
                        out.extend_from_slice(&cmd.frame);
                        awaited.push_back((cmd.replies, cmd.confirm));
                    }
                }
                None => break Ok(()),
            },
            read = stream.read_buf(&mut inbuf) => {
                match read {
                    Ok(0) => break Err("the server closed the connection".to_owned()),
                    Ok(_) => {}
                    Err(e) => break Err(e.to_string()),
                }
                let Some(h) = hub.upgrade() else { break Ok(()) };
                loop {
                    match decoder.decode(&mut inbuf) {
                        Ok(Some(frame)) => on_frame(&h, &frame, &mut awaited),
                        Ok(None) => break,
                        Err(e) => return {
                            release(&mut awaited);
                            Err(format!("malformed reply: {e}"))
                        },
                    }
                }
            }
        }
    };
    release(&mut awaited);
    // Commands queued meanwhile: released too (the next connection subscribes to everything).
    while let Ok(cmd) = rx.try_recv() {
        if let Some(c) = cmd.confirm {
            c.fire();
        }
    }
    result
}

/// One frame from a subscriber connection: a message for the hub, or the reply to a command.
fn on_frame(hub: &Hub, frame: &Bytes, awaited: &mut VecDeque<(usize, Option<Arc<Confirm>>)>) {
    if let Some((space, name)) = message_of(frame) {
        hub.deliver(space, name, frame);
        return;
    }
    // A (un)subscribe confirmation, or an error reply to one.
    if let Some((left, _)) = awaited.front_mut() {
        *left = left.saturating_sub(1);
        if *left == 0 {
            if let Some((_, Some(c))) = awaited.pop_front() {
                c.fire();
            }
        }
    }
}

/// The space and name a message frame is for: `message channel payload`, `smessage channel
/// payload`, `pmessage pattern channel payload` (RESP2 arrays of bulk strings).
fn message_of(frame: &[u8]) -> Option<(Space, &[u8])> {
    let (space, rest) = if let Some(rest) = frame.strip_prefix(b"*3\r\n$7\r\nmessage\r\n") {
        (Space::Channel, rest)
    } else if let Some(rest) = frame.strip_prefix(b"*3\r\n$8\r\nsmessage\r\n") {
        (Space::Shard, rest)
    } else if let Some(rest) = frame.strip_prefix(b"*4\r\n$8\r\npmessage\r\n") {
        (Space::Pattern, rest)
    } else {
        return None;
    };
    let rest = rest.strip_prefix(b"$")?;
    let end = rest.iter().position(|&b| b == b'\r')?;
    let len: usize = std::str::from_utf8(rest.get(..end)?).ok()?.parse().ok()?;
    let name = rest.get(end + 2..end + 2 + len)?;
    Some((space, name))
}

// ---------------------------------------------------------------------------------------------
// A client's subscriptions.

/// What one client is subscribed to, and its mailbox. Dropped with the client (or by `RESET`),
/// which leaves every topic.
pub(crate) struct Subs {
    hub: Arc<Hub>,
    pub(crate) mailbox: Arc<Mailbox>,
    channels: HashSet<Bytes>,
    shards: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
}

impl Subs {
    fn set(&mut self, space: Space) -> &mut HashSet<Bytes> {
        match space {
            Space::Channel => &mut self.channels,
            Space::Shard => &mut self.shards,
            Space::Pattern => &mut self.patterns,
        }
    }

    /// The count a (un)subscribe reply of `space` shows, as redis-server counts: channels and
    /// patterns together, shard channels apart.
    fn count(&self, space: Space) -> usize {
        match space {
            Space::Shard => self.shards.len(),
            Space::Channel | Space::Pattern => self.channels.len() + self.patterns.len(),
        }
    }

    /// Whether the client is subscribed to anything (RESP2: subscribed mode).
    pub(crate) fn active(&self) -> bool {
        !(self.channels.is_empty() && self.shards.is_empty() && self.patterns.is_empty())
    }
}

impl Drop for Subs {
    fn drop(&mut self) {
        let id = self.mailbox.id;
        for (space, set) in [
            (Space::Channel, &self.channels),
            (Space::Shard, &self.shards),
            (Space::Pattern, &self.patterns),
        ] {
            for name in set {
                self.hub.leave(space, name, id);
            }
        }
    }
}

/// Whether a client is in subscribed mode (subscribed to anything).
pub(crate) fn subscribed(client: &ClientState) -> bool {
    client.pubsub.as_ref().is_some_and(|s| s.active())
}

/// redis-server's refusal of a command in RESP2 subscribed mode.
pub(crate) fn not_in_context(name: &str) -> ReplyError {
    ReplyError::new(
        ErrorKind::Refused,
        format!("Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"),
    )
}

/// One (un)subscribe reply: `[kind, name, count]`, a push for a RESP3 client; `name` null for
/// an unsubscribe from nothing.
fn put_ack(out: &mut BytesMut, proto: Proto, kind: &[u8], name: Option<&[u8]>, count: usize) {
    match proto {
        Proto::Resp3 => out.extend_from_slice(b">3\r\n"),
        Proto::Resp2 => write_array_header(out, 3),
    }
    write_bulk(out, kind);
    match (name, proto) {
        (Some(name), _) => write_bulk(out, name),
        (None, Proto::Resp3) => out.extend_from_slice(b"_\r\n"),
        (None, Proto::Resp2) => out.extend_from_slice(b"$-1\r\n"),
    }
    write_integer(out, count as i64);
}

/// `SUBSCRIBE`, `SSUBSCRIBE`, `PSUBSCRIBE`, `UNSUBSCRIBE`, `SUNSUBSCRIBE`, `PUNSUBSCRIBE`.
/// The replies are Keyway's; a subscription new on a server is answered once the server
/// confirmed it (within `pool.timeout`).
pub(crate) fn subscribe(
    what: PubSub,
    args: Args<'_>,
    topo: &Arc<Topology>,
    client: &mut ClientState,
    hub: &Arc<Hub>,
) -> Pending {
    let (space, joins) = match what {
        PubSub::Subscribe => (Space::Channel, true),
        PubSub::SSubscribe => (Space::Shard, true),
        PubSub::PSubscribe => (Space::Pattern, true),
        PubSub::Unsubscribe => (Space::Channel, false),
        PubSub::SUnsubscribe => (Space::Shard, false),
        PubSub::PUnsubscribe => (Space::Pattern, false),
        PubSub::Publish | PubSub::Channels | PubSub::NumSub | PubSub::NumPat => {
            return Pending::Ready(Err(ReplyError::new(
                ErrorKind::Internal,
                "keyway: not a subscription command",
            )))
        }
    };
    let proto = client.proto;
    let mut out = BytesMut::new();
    if !joins {
        let Some(subs) = client.pubsub.as_deref_mut() else {
            if args.len() == 1 {
                put_ack(&mut out, proto, space.unsubscribe(), None, 0);
            }
            for name in args.iter().skip(1) {
                put_ack(&mut out, proto, space.unsubscribe(), Some(name), 0);
            }
            return Pending::Ready(Ok(out.freeze()));
        };
        let names: Vec<Bytes> = if args.len() > 1 {
            args.iter().skip(1).map(Bytes::copy_from_slice).collect()
        } else {
            subs.set(space).iter().cloned().collect()
        };
        if names.is_empty() {
            put_ack(
                &mut out,
                proto,
                space.unsubscribe(),
                None,
                subs.count(space),
            );
        }
        for name in names {
            if subs.set(space).remove(&name) {
                hub.leave(space, &name, subs.mailbox.id);
            }
            put_ack(
                &mut out,
                proto,
                space.unsubscribe(),
                Some(&name),
                subs.count(space),
            );
        }
        return Pending::Ready(Ok(out.freeze()));
    }
    let subs = client.pubsub.get_or_insert_with(|| {
        Box::new(Subs {
            hub: hub.clone(),
            mailbox: Arc::new(Mailbox::new(client.id)),
            channels: HashSet::new(),
            shards: HashSet::new(),
            patterns: HashSet::new(),
        })
    });
    let mut waits: Vec<Arc<Confirm>> = Vec::new();
    for name in args.iter().skip(1) {
        let name = Bytes::copy_from_slice(name);
        if !subs.set(space).contains(&name) {
            waits.extend(hub.join(space, &name, &subs.mailbox));
            subs.set(space).insert(name.clone());
        }
        put_ack(
            &mut out,
            proto,
            space.subscribe(),
            Some(&name),
            subs.count(space),
        );
    }
    let out = out.freeze();
    if waits.is_empty() {
        return Pending::Ready(Ok(out));
    }
    let timeout = topo.config.timeout;
    Pending::Merge(Box::pin(async move {
        let all = async {
            for c in &waits {
                c.wait().await;
            }
        };
        // A server slower than the request deadline: answer all the same (the subscription
        // stands, and is made when the server answers).
        let _ = tokio::time::timeout(timeout, all).await;
        Ok(out)
    }))
}

// ---------------------------------------------------------------------------------------------
// PUBSUB listings.

/// Merges every server's reply to `PUBSUB CHANNELS|SHARDCHANNELS|NUMSUB|SHARDNUMSUB|NUMPAT` as
/// one redis-server holding all of their subscribers would answer: the union of the channel
/// lists, per channel the sum of the counts, and for NUMPAT the largest count (a Keyway
/// subscribes each pattern on every server, so each server counts it once).
pub(crate) fn merge_listing(what: PubSub, replies: Vec<Reply>) -> Reply {
    let mut values = Vec::with_capacity(replies.len());
    for reply in replies {
        let frame = reply?;
        match Value::parse(&frame) {
            Ok(Value::Error(_)) => return Ok(frame),
            Ok(v) => values.push(v),
            Err(e) => {
                return Err(ReplyError::new(
                    ErrorKind::BadReply,
                    format!("keyway: bad reply from server: {e}"),
                ))
            }
        }
    }
    let bad = || {
        Err(ReplyError::new(
            ErrorKind::BadReply,
            "keyway: unexpected reply to PUBSUB from a server",
        ))
    };
    let mut out = BytesMut::new();
    match what {
        PubSub::NumPat => {
            let mut most = 0;
            for v in values {
                match v {
                    Value::Integer(n) => most = most.max(n),
                    _ => return bad(),
                }
            }
            write_integer(&mut out, most);
        }
        PubSub::Channels => {
            let mut seen = HashSet::new();
            let mut names = Vec::new();
            for v in values {
                let (Value::Array(items) | Value::Set(items)) = v else {
                    return bad();
                };
                for item in items {
                    if let Value::Bulk(name) = item {
                        if seen.insert(name.clone()) {
                            names.push(name);
                        }
                    }
                }
            }
            write_array_header(&mut out, names.len());
            for name in names {
                write_bulk(&mut out, &name);
            }
        }
        PubSub::NumSub => {
            // Every server lists the same channels in the client's order.
            let mut merged: Vec<(Bytes, i64)> = Vec::new();
            for v in values {
                let (Value::Array(items) | Value::Map(items)) = v else {
                    return bad();
                };
                for (i, pair) in items.chunks(2).enumerate() {
                    let [Value::Bulk(name), Value::Integer(n)] = pair else {
                        return bad();
                    };
                    match merged.get_mut(i) {
                        Some((_, sum)) => *sum = sum.saturating_add(*n),
                        None => merged.push((name.clone(), *n)),
                    }
                }
            }
            write_array_header(&mut out, merged.len() * 2);
            for (name, n) in merged {
                write_bulk(&mut out, &name);
                write_integer(&mut out, n);
            }
        }
        _ => return bad(),
    }
    Ok(out.freeze())
}
