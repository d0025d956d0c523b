//! Carrying plans out: the only code of `server/` that sends to the servers' pools.
//!
//! [`dispatch`] takes a [`Plan`] from the planner and the request it was made for, queues the
//! request bytes on the servers it names, and returns the [`Pending`] reply the session keeps in
//! request order. The walks that need one server's answer before asking the next (RANDOMKEY,
//! a read retried on another replica, the warm-up GET) are futures here; what they compute from
//! the replies is in `merge`.

use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::client;
use super::client::ClientState;
use super::info;
use super::local::{self, After, Facts};
use super::merge;
use super::merge::Missed;
use super::multi;
use super::plan;
use super::plan::{Plan, Route, Split};
use super::reply::{forwarded, resolve, Pending};
use super::scripts::Role;
use super::shared::Shared;
use crate::backend::Gather;
use crate::backend::Pick;
use crate::command::{Local, Merge};
use crate::error::{ErrorKind, Reply, ReplyError};
use crate::protocol::{
    is_error_reply, is_null_reply, write_bulk, write_verbatim, Args, NumberLine, Request, Value,
};
use crate::topology::Topology;
use crate::txn;

/// Where a plan runs: the snapshot it was made on, the client, what every session shares.
pub(crate) struct Context<'a> {
    /// The command, when the table knows it.
    pub(crate) spec: Option<&'static crate::command::CommandSpec>,
    /// The command runs a script or function (`Traits::SCRIPT`): its error replies are not the
    /// server's words about its health.
    pub(crate) script: bool,
    /// What the command does to the script cache (`EVALSHA`, `SCRIPT LOAD`, ...; mostly none).
    pub(crate) cache: Role,
    pub(crate) topo: &'a Arc<Topology>,
    pub(crate) client: &'a mut ClientState,
    pub(crate) shared: &'a Arc<Shared>,
}

/// Carries out `plan`, made for `request`. Returns the pending reply and what the session does
/// once it is out.
pub(crate) fn dispatch(
    plan: Plan<'_, '_>,
    request: &Request,
    cx: &mut Context<'_>,
) -> (Pending, After) {
    let pending = match plan {
        Plan::Local(Local::Info) => return (info(cx, request), After::Continue),
        Plan::Local(command) => {
            let facts = Facts {
                topo: cx.topo,
                shared: cx.shared,
            };
            let (reply, after) = local::answer(command, request.args(), cx.client, &facts);
            return (Pending::Ready(reply), after);
        }
        Plan::Refuse(e) => Pending::Ready(Err(e)),
        Plan::Route(route) => {
            // EVALSHA's SHA1, FCALL's function: what a reload looks for.
            let called = request.args().get(1).unwrap_or_default();
            send_route(cx, route, request.frame(), called)
        }
        Plan::WarmGet { new, old } => warm_get(cx, new, old, request),
        Plan::Split(split) => send_split(cx, split, request.args()),
        Plan::All(how) => all(cx.topo, cx.client.pick(), how, request.frame()),
        Plan::RandomKey { start } => {
            let topo = cx.topo.clone();
            let frame = request.frame().clone();
            let pick = cx.client.pick();
            Pending::Merge(Box::pin(random_key(topo, start, pick, frame)))
        }
        Plan::Scan { server, cursor } => scan(cx, server, cursor, request.args()),
        Plan::TwoPhase(plan) => two_phase(cx, plan),
        Plan::Guarded(route) => guarded_read(cx, route, request),
        Plan::Multi(step) => transaction(cx, step, request),
        Plan::Block { server, replay } => match cx.spec {
            Some(spec) => super::blocking::dispatch(cx, spec, server, replay, request),
            None => internal_routing_error(),
        },
        Plan::Subscribe(what) => {
            super::pubsub::subscribe(what, request.args(), cx.topo, cx.client, &cx.shared.hub)
        }
        Plan::Listing(what) => listing(cx.topo, cx.client.pick(), what, request.frame()),
        // The session closes the connection before dispatching (see `Active::request`).
        Plan::CrossProtocol => return (Pending::Ready(Ok(Bytes::new())), After::Close),
    };
    let pending = match cx.cache {
        Role::None | Role::CallScript | Role::CallFunction => pending,
        role => remember(cx.shared.clone(), role, request.args(), pending),
    };
    (pending, After::Continue)
}

fn internal_routing_error() -> Pending {
    Pending::Ready(Err(ReplyError::new(
        ErrorKind::Internal,
        "keyway: internal routing error (no such server)",
    )))
}

/// Sends a plain command's frame to the server at a slot-table index.
fn send_to(topo: &Topology, server: u16, pick: Pick, frame: Bytes) -> Pending {
    send_as(topo, server, pick, frame, false)
}

/// Sends a frame to the server at a slot-table index, as a script call or a plain command.
fn send_as(topo: &Topology, server: u16, pick: Pick, frame: Bytes, script: bool) -> Pending {
    match topo.server(server) {
        Some(s) if script => Pending::Forward(s.pool.send_script(pick, frame)),
        Some(s) => Pending::Forward(s.pool.send(pick, frame)),
        None => internal_routing_error(),
    }
}

/// Sends a frame where `route` says; `called` is the script or function an `EVALSHA` or `FCALL`
/// names (see [`send_call`]).
fn send_route(cx: &Context<'_>, route: Route<'_>, frame: &Bytes, called: &[u8]) -> Pending {
    let (topo, pick, script) = (cx.topo, cx.client.pick(), cx.script);
    match route {
        Route::One(server) => send_call(cx, server, frame, called),
        Route::Read { server, alternate } => {
            let first = send_call(cx, server, frame, called);
            Pending::Merge(Box::pin(read_with_retry(
                first,
                topo.clone(),
                alternate,
                pick,
                frame.clone(),
                script,
            )))
        }
        Route::FanOut {
            targets,
            need,
            skip_down,
        } => {
            let replies = fan_targets(topo, targets, skip_down, |t| {
                send_call(cx, t, frame, called)
            });
            Pending::Merge(Box::pin(fan_out(replies, need)))
        }
    }
}

/// A fan-out write's replicas, by name, each with its reply to come from `send`; with
/// `skip_down`, a replica the health checks mark down is not sent the write (`None`).
fn fan_targets(
    topo: &Topology,
    targets: &[u16],
    skip_down: bool,
    mut send: impl FnMut(u16) -> Pending,
) -> Vec<(String, Option<Pending>)> {
    let mut replies = Vec::with_capacity(targets.len());
    for &t in targets {
        let name = topo.server(t).map_or_else(String::new, |s| s.name.clone());
        let sent = (!skip_down || topo.is_up(t)).then(|| send(t));
        replies.push((name, sent));
    }
    replies
}

/// Sends a frame to one server; `EVALSHA` and `FCALL` as calls that load the script or library
/// `called` when the server lacks it, and are sent once more (see `scripts`). The call then
/// runs after what the client pipelined behind it on that server, as it would after a client's
/// own fallback to `EVAL`.
fn send_call(cx: &Context<'_>, server: u16, frame: &Bytes, called: &[u8]) -> Pending {
    let (topo, pick, frame) = (cx.topo, cx.client.pick(), frame.clone());
    if !matches!(cx.cache, Role::CallScript | Role::CallFunction) {
        return send_as(topo, server, pick, frame, cx.script);
    }
    let name = Bytes::copy_from_slice(called);
    let first = send_as(topo, server, pick, frame.clone(), true);
    let (topo, shared, role) = (topo.clone(), cx.shared.clone(), cx.cache);
    Pending::Merge(Box::pin(async move {
        let reply = resolve(first).await;
        let loads = match &reply {
            Ok(f) if role == Role::CallScript && f.starts_with(b"-NOSCRIPT") => shared
                .scripts
                .script(&name)
                .map(|body| vec![Request::from_args(&[&b"SCRIPT"[..], b"LOAD", &body])])
                .unwrap_or_default(),
            Ok(f) if role == Role::CallFunction && f.starts_with(b"-ERR Function not found") => {
                shared
                    .scripts
                    .libraries()
                    .iter()
                    .map(|code| Request::from_args(&[&b"FUNCTION"[..], b"LOAD", code]))
                    .collect()
            }
            _ => return reply,
        };
        if loads.is_empty() {
            return reply;
        }
        for load in loads {
            // A library already there answers an error: fine, the call below tells.
            if resolve(send_to(&topo, server, pick, load.frame().clone()))
                .await
                .is_err()
            {
                return reply;
            }
        }
        shared.metrics.scripts_reloaded.inc();
        resolve(send_as(&topo, server, pick, frame, true)).await
    }))
}

/// `SCRIPT LOAD`, `FUNCTION LOAD` and what flushes or deletes them: once the servers agreed,
/// the script cache remembers or forgets.
fn remember(shared: Arc<Shared>, role: Role, args: Args<'_>, pending: Pending) -> Pending {
    // SCRIPT LOAD body; FUNCTION LOAD [REPLACE] code; FUNCTION DELETE name.
    let arg = match role {
        Role::LoadScript | Role::ForgetFunction => args.get(2),
        Role::LoadFunction => args.len().checked_sub(1).and_then(|i| args.get(i)),
        _ => None,
    };
    let arg = Bytes::copy_from_slice(arg.unwrap_or_default());
    Pending::Merge(Box::pin(async move {
        let reply = resolve(pending).await;
        let Ok(frame) = &reply else {
            return reply;
        };
        if is_error_reply(frame) {
            return reply;
        }
        let cache = &shared.scripts;
        match role {
            Role::LoadScript => {
                if let Some(sha) = bulk_body(frame) {
                    cache.add_script(sha, arg);
                }
            }
            Role::LoadFunction => {
                if let Some(name) = bulk_body(frame) {
                    cache.add_library(name, arg);
                }
            }
            Role::ForgetScripts => cache.forget_scripts(),
            Role::ForgetFunction => cache.forget_library(&arg),
            Role::ForgetFunctions => cache.forget_libraries(),
            Role::None | Role::CallScript | Role::CallFunction => {}
        }
        reply
    }))
}

/// The body of a bulk string reply (`$n\r\nbody\r\n`).
fn bulk_body(frame: &[u8]) -> Option<&[u8]> {
    let rest = frame.strip_prefix(b"$")?;
    let end = rest.iter().position(|&b| b == b'\r')?;
    let len: usize = std::str::from_utf8(rest.get(..end)?).ok()?.parse().ok()?;
    rest.get(end + 2..end + 2 + len)
}

/// Appends the arguments in `range`, encoded: one copy of their span of the frame.
fn put_args(out: &mut BytesMut, args: Args<'_>, range: std::ops::Range<usize>) {
    match args.encoded(range.clone()) {
        Some(span) => out.extend_from_slice(span),
        None => {
            for i in range {
                write_bulk(out, args.get(i).unwrap_or_default());
            }
        }
    }
}

/// Sends each part of a split command, copied from the client's frame: the name, then each of
/// its keys' runs. A part for one server is written straight into that connection's outgoing
/// bytes, its reply gathered with the others'; a part for a replica set (which the write mode
/// may fan out) is built as a frame first and routed.
fn send_split(cx: &Context<'_>, split: Split<'_, '_>, args: Args<'_>) -> Pending {
    let (topo, pick) = (cx.topo, cx.client.pick());
    let Split {
        how,
        group,
        parts,
        runs,
    } = split;
    let name = args.encoded(0..1);
    let name_len = name.map_or(0, <[u8]>::len);
    let write_part = |out: &mut BytesMut, index: usize, keys: usize| {
        out.extend_from_slice(NumberLine::array(1 + keys * group).as_bytes());
        match name {
            Some(name) => out.extend_from_slice(name),
            None => put_args(out, args, 0..1),
        }
        for (k, &(part, run)) in runs.iter().enumerate() {
            if part as usize != index {
                continue;
            }
            match run {
                Some(run) => out.extend_from_slice(run),
                None => {
                    let at = 1 + k * group;
                    put_args(out, args, at..at + group);
                }
            }
        }
    };
    // Only an array merge (MGET) needs to know which part carried each key.
    let owner: Vec<u32> = if how == Merge::Array {
        runs.iter().map(|&(part, _)| part).collect()
    } else {
        Vec::new()
    };
    // Under two_phase a read's parts each check their keys' locks first (see `guarded_read`).
    let guard = cx.topo.write == crate::config::WriteMode::TwoPhase
        && cx.spec.is_some_and(|spec| !spec.is_write());
    if !guard && parts.iter().all(|p| matches!(p.route, Route::One(_))) {
        // One server per part: the replies are gathered in one place, the session woken once
        // when the last is in.
        let gather = Gather::new(parts.len());
        for (index, p) in parts.iter().enumerate() {
            let part = gather.part(index);
            let server = match p.route {
                Route::One(server) => topo.server(server),
                Route::Read { .. } | Route::FanOut { .. } => None,
            };
            match server {
                Some(s) => s
                    .pool
                    .send_part(pick, part, |out| write_part(out, index, p.keys)),
                // Not reached (routes name servers of this topology); a part dropped unsent
                // completes with an error for the client, not a hang.
                None => drop(part),
            }
        }
        return Pending::Gather { gather, how, owner };
    }
    if guard {
        let mut reads = Vec::with_capacity(parts.len());
        for (index, p) in parts.iter().enumerate() {
            let mut frame = BytesMut::with_capacity(16 + name_len + p.len);
            write_part(&mut frame, index, p.keys);
            let keys = runs
                .iter()
                .enumerate()
                .filter(|(_, &(part, _))| part as usize == index)
                .filter_map(|(k, _)| args.get(1 + k * group));
            let Some(at) = ReadAt::of(p.route) else {
                return internal_routing_error();
            };
            reads.push(GuardedRead {
                at,
                frame: frame.freeze(),
                check: txn::lock_check(keys),
            });
        }
        // What a locked read needs if validation keeps failing: each key, in the client's
        // order, with the server its part reads.
        let locked = (group == 1).then(|| LockedRead {
            name: args.bytes(0).unwrap_or_default(),
            how,
            keys: runs
                .iter()
                .enumerate()
                .filter_map(|(k, &(part, _))| {
                    let key = args.bytes(1 + k * group)?;
                    Some((key, reads.get(part as usize)?.at.server))
                })
                .collect(),
        });
        let (topo, pick, shared) = (cx.topo.clone(), cx.client.pick(), cx.shared.clone());
        return Pending::Merge(Box::pin(async move {
            let metrics = &shared.metrics;
            match snapshot(&topo, pick, &reads).await {
                Some(Ok(frames)) => {
                    if reads.len() > 1 {
                        metrics.snapshot_read("validated");
                    }
                    merge::split(how, frames, &owner)
                }
                Some(Err(e)) => Err(e),
                None => {
                    let reply = match locked {
                        Some(locked) => locked.run(topo, pick, &shared).await,
                        None => Err(ReplyError::new(ErrorKind::TryAgain, SNAPSHOT_GAVE_UP)),
                    };
                    metrics.snapshot_read(if reply.is_ok() { "locked" } else { "failed" });
                    reply
                }
            }
        }));
    }
    // Pushed into a vector sized up front. (A `collect` from an owning iterator over the parts
    // would reuse their allocation and shrink it with a `realloc` per request.)
    let mut replies = Vec::with_capacity(parts.len());
    for (index, p) in parts.iter().enumerate() {
        // 16: room for the `*N\r\n` header.
        let mut frame = BytesMut::with_capacity(16 + name_len + p.len);
        write_part(&mut frame, index, p.keys);
        replies.push(send_route(cx, p.route, &frame.freeze(), b""));
    }
    Pending::Merge(Box::pin(async move {
        let mut frames = Vec::with_capacity(replies.len());
        for p in replies {
            frames.push(resolve(p).await);
        }
        merge::split(how, frames, &owner)
    }))
}

/// DBSIZE, FLUSHDB, KEYS, SCRIPT LOAD, ...: the same frame to every server.
fn all(topo: &Arc<Topology>, pick: Pick, how: Merge, frame: &Bytes) -> Pending {
    if how == Merge::AnyKilled {
        return kill(topo, frame);
    }
    let mut replies = Vec::with_capacity(topo.servers.len());
    for s in &topo.servers {
        replies.push(Pending::Forward(s.pool.send(pick, frame.clone())));
    }
    let topo = topo.clone();
    Pending::Merge(Box::pin(async move {
        let mut frames = Vec::with_capacity(replies.len());
        for p in replies {
            let reply = resolve(p).await;
            // The first failure is the answer: no need to wait for the rest.
            if merge::is_failure(&reply) {
                return reply;
            }
            frames.push(reply);
        }
        merge::all(how, frames, &topo)
    }))
}

/// `PUBSUB CHANNELS|NUMSUB|NUMPAT|SHARDCHANNELS|SHARDNUMSUB`: the same frame to every server,
/// the replies merged as one server holding every subscriber would answer.
fn listing(
    topo: &Arc<Topology>,
    pick: Pick,
    what: crate::command::PubSub,
    frame: &Bytes,
) -> Pending {
    let mut replies = Vec::with_capacity(topo.servers.len());
    for s in &topo.servers {
        replies.push(Pending::Forward(s.pool.send(pick, frame.clone())));
    }
    Pending::Merge(Box::pin(async move {
        let mut frames = Vec::with_capacity(replies.len());
        for p in replies {
            frames.push(resolve(p).await);
        }
        super::pubsub::merge_listing(what, frames)
    }))
}

/// SCRIPT KILL, FUNCTION KILL: to every server at once, each over a connection opened for it.
/// Not over the shared connections: redis-server reads nothing more from the connection whose
/// script runs until the script ends, and Keyway's connection to that server may be the one
/// that sent it. Opening a connection (and its `AUTH`) is allowed while a server is busy.
fn kill(topo: &Arc<Topology>, frame: &Bytes) -> Pending {
    /// Kill connections open at once, over all clients and servers: a client that pipelines
    /// thousands of `SCRIPT KILL`s waits for its turn instead of opening thousands of
    /// connections.
    static CONNECTIONS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16);
    let tasks: Vec<_> = topo
        .servers
        .iter()
        .map(|s| {
            let pool = s.pool.clone();
            let frame = frame.clone();
            tokio::spawn(async move {
                let _permit = CONNECTIONS.acquire().await;
                let mut lease = pool.lease(crate::protocol::Proto::Resp2).await?;
                lease.call(&frame, 1).await
            })
        })
        .collect();
    Pending::Merge(Box::pin(async move {
        let mut replies = Vec::with_capacity(tasks.len());
        for task in tasks {
            replies.push(match task.await {
                Ok(reply) => reply.map_err(ReplyError::from),
                Err(_) => Err(ReplyError::new(
                    ErrorKind::Internal,
                    "keyway: the kill request to a server was cancelled",
                )),
            });
        }
        merge::killed(replies)
    }))
}

/// SCAN on one server, its cursor put in place of the client's.
fn scan(cx: &Context<'_>, server: u16, cursor: u64, args: Args<'_>) -> Pending {
    let mut sub: Vec<Bytes> = args.to_vec();
    if let Some(c) = sub.get_mut(1) {
        *c = Bytes::from(cursor.to_string());
    }
    let frame = Request::from_args(&sub).frame().clone();
    let reply = send_to(cx.topo, server, cx.client.pick(), frame);
    let topo = cx.topo.clone();
    Pending::Merge(Box::pin(async move {
        merge::scan(resolve(reply).await, usize::from(server), &topo)
    }))
}

/// A two-phase transaction, as a task of its own: it starts now, and it finishes even if the
/// client goes away (an abandoned transaction would hold its locks until recovery).
fn two_phase(cx: &Context<'_>, plan: txn::Plan) -> Pending {
    let topo = cx.topo.clone();
    let pick = cx.client.pick();
    let shared = cx.shared.clone();
    let options = txn::TxOptions {
        lock_timeout: topo.config.two_phase.lock_timeout,
        retries: topo.config.two_phase.retries,
    };
    Pending::Task(tokio::spawn(async move {
        // The engine runs over connections of the client's protocol and answers in it.
        txn::execute(topo, pick, plan, &options, &shared.metrics).await
    }))
}

/// A step of a MULTI/EXEC transaction: the client's queue changes, and EXEC sends it.
fn transaction(cx: &mut Context<'_>, step: multi::Step, request: &Request) -> Pending {
    let ok = || Pending::Ready(Ok(Bytes::from_static(b"+OK\r\n")));
    match step {
        multi::Step::Begin => {
            set_multi(cx.client, 0);
            cx.client.multi = Some(Box::new(client::Multi {
                // A watched transaction stays on the watched keys' slot.
                slot: cx.client.watch.as_ref().map(|w| w.slot),
                ..client::Multi::default()
            }));
            ok()
        }
        multi::Step::Queue { slot, write } => {
            if let Some(m) = cx.client.multi.as_deref_mut() {
                multi::push(m, request);
                let n = m.count as i64;
                if let Some(entry) = &cx.client.entry {
                    entry.multi.store(n, std::sync::atomic::Ordering::Relaxed);
                }
                m.slot = m.slot.or(slot);
                m.writes |= write;
            }
            Pending::Ready(Ok(Bytes::from_static(b"+QUEUED\r\n")))
        }
        multi::Step::Dirty(e) => {
            if let Some(m) = cx.client.multi.as_deref_mut() {
                m.dirty = true;
            }
            Pending::Ready(Err(e))
        }
        multi::Step::Discard => {
            set_multi(cx.client, -1);
            cx.client.multi = None;
            // DISCARD unwatches: the held connection goes, and its watches with it.
            cx.client.watch = None;
            ok()
        }
        multi::Step::Unwatch => {
            cx.client.watch = None;
            ok()
        }
        multi::Step::Watch { slot } => watch(cx, slot, request),
        multi::Step::Exec => match cx.client.multi.take().inspect(|_| set_multi(cx.client, -1)) {
            Some(m) => exec(cx, *m),
            None => Pending::Ready(Err(ReplyError::new(
                ErrorKind::Transaction,
                "EXEC without MULTI",
            ))),
        },
    }
}

/// CLIENT LIST's `multi` field: commands queued, or -1 outside a transaction.
fn set_multi(client: &client::ClientState, n: i64) {
    if let Some(entry) = &client.entry {
        entry.multi.store(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// EXEC: the queued transaction, on its slot's server (each replica's, for a write under
/// `all`/`quorum`), or as a two-phase transaction.
fn exec(cx: &mut Context<'_>, m: client::Multi) -> Pending {
    // EXEC unwatches, whatever its outcome.
    let watch = cx.client.watch.take();
    if m.dirty {
        return Pending::Ready(Err(ReplyError::new(
            ErrorKind::ExecAbort,
            "Transaction discarded because of previous errors.",
        )));
    }
    if m.count == 0 {
        return Pending::Ready(Ok(Bytes::from_static(b"*0\r\n")));
    }
    if cx.topo.write == crate::config::WriteMode::TwoPhase {
        let queued = match multi::queued(&m.frame, cx.shared.limits) {
            Ok(queued) => queued,
            Err(e) => return Pending::Ready(Err(e)),
        };
        match multi::two_phase_plan(&queued, cx.topo) {
            Some(Ok(plan)) => return two_phase(cx, plan),
            Some(Err(e)) => return Pending::Ready(Err(e)),
            // Reads only: a plain MULTI/EXEC on the slot's primary.
            None => {}
        }
    }
    let replies = m.count + 2;
    let frame = multi::exec_frame(m.frame);
    let pick = cx.client.pick();
    let topo = cx.topo;
    if let Some(watch) = watch {
        return watched_exec(cx, *watch, frame, replies, m.writes);
    }
    let route = match m.slot {
        // Nothing keyed: the server the client's keyless commands go to.
        None => Ok(Route::One(
            (cx.client.id as usize % topo.servers.len().max(1)) as u16,
        )),
        Some(slot) => match topo.placement(slot) {
            Ok(placement) => {
                let write = m.writes && topo.write != crate::config::WriteMode::TwoPhase;
                plan::route(topo, cx.client, placement, write)
            }
            Err(e) => return Pending::Ready(Err(e.into())),
        },
    };
    let send = |server: u16| match topo.server(server) {
        Some(s) => Pending::Forward(s.pool.send_transaction(pick, frame.clone(), replies)),
        None => internal_routing_error(),
    };
    match route {
        Ok(Route::One(server) | Route::Read { server, .. }) => send(server),
        Ok(Route::FanOut {
            targets,
            need,
            skip_down,
        }) => {
            let replies = fan_targets(topo, targets, skip_down, send);
            Pending::Merge(Box::pin(fan_out(replies, need)))
        }
        Err(e) => Pending::Ready(Err(e)),
    }
}

/// The server a slot's writes go to first (its primary, or the replica failover chose).
fn first_for(topo: &Topology, slot: crate::routing::Slot) -> Result<u16, ReplyError> {
    match topo.placement(slot)? {
        crate::topology::Placement::One(server) => Ok(server),
        crate::topology::Placement::Replicas(set) => set
            .first()
            .copied()
            .ok_or_else(|| ReplyError::new(ErrorKind::Internal, "keyway: empty replica set")),
    }
}

/// WATCH: on the connection held for the client (opened now if it holds none), to the server
/// of the watched keys' slot.
fn watch(cx: &mut Context<'_>, slot: crate::routing::Slot, request: &Request) -> Pending {
    let server = match first_for(cx.topo, slot) {
        Ok(server) => server,
        Err(e) => return Pending::Ready(Err(e)),
    };
    let held = cx
        .client
        .watch
        .get_or_insert_with(|| {
            Box::new(client::Watch {
                slot,
                held: Arc::default(),
            })
        })
        .held
        .clone();
    let topo = cx.topo.clone();
    let leases = cx.shared.leases.clone();
    let proto = cx.client.proto;
    let frame = request.frame().clone();
    Pending::Merge(Box::pin(async move {
        let mut held = held.lock().await;
        if held.is_none() {
            let Some(s) = topo.server(server) else {
                return Err(ReplyError::new(
                    ErrorKind::Internal,
                    "keyway: no such server",
                ));
            };
            let Ok(permit) = leases.try_acquire_owned() else {
                return Err(ReplyError::new(
                    ErrorKind::TryAgain,
                    "keyway: too many clients hold a server connection for WATCH (limits.max_transactions); retry later",
                ));
            };
            let lease = s.pool.lease(proto).await.map_err(ReplyError::from)?;
            *held = Some(client::Held {
                lease,
                server,
                _permit: permit,
            });
        }
        let Some(h) = held.as_mut() else {
            return Err(ReplyError::new(
                ErrorKind::Internal,
                "keyway: no held connection",
            ));
        };
        let reply = forwarded(Ok(h.lease.call(&frame, 1).await));
        if reply.is_err() {
            // A connection that failed watches nothing: the next WATCH opens another.
            *held = None;
        }
        reply
    }))
}

/// EXEC of a watched transaction: on the held connection, which watched its keys; then, for a
/// write under `all`/`quorum` with replicas, on the slot's other replicas (without the watch:
/// the primary's outcome decides).
fn watched_exec(
    cx: &mut Context<'_>,
    watch: client::Watch,
    frame: Bytes,
    replies: usize,
    writes: bool,
) -> Pending {
    let topo = cx.topo.clone();
    let pick = cx.client.pick();
    let fan = writes && topo.replicas > 1 && topo.write != crate::config::WriteMode::Primary;
    Pending::Merge(Box::pin(async move {
        let held = watch.held.lock().await.take();
        let Some(mut held) = held else {
            // The WATCH failed (its error was the answer): nothing is watched.
            let server = first_for(&topo, watch.slot)?;
            let Some(s) = topo.server(server) else {
                return Err(ReplyError::new(
                    ErrorKind::Internal,
                    "keyway: no such server",
                ));
            };
            return forwarded(s.pool.send_transaction(pick, frame, replies).await);
        };
        let first = forwarded(Ok(held.lease.call(&frame, replies).await));
        let applied = matches!(&first, Ok(f) if !is_null_reply(f) && !is_error_reply(f));
        if !fan || !applied {
            return first;
        }
        let set = topo.replica_set(watch.slot);
        let need = match topo.write {
            crate::config::WriteMode::Quorum => set.len() / 2 + 1,
            _ => set.len(),
        };
        let mut all = Vec::with_capacity(set.len());
        let name = |i: u16| topo.server(i).map_or_else(String::new, |s| s.name.clone());
        all.push((name(held.server), Some(Pending::Ready(first))));
        // Replicas the health checks mark down are not sent the write (unless all are).
        let skip_down = set.iter().any(|&t| topo.is_up(t));
        for &t in set.iter().filter(|&&t| t != held.server) {
            if let Some(s) = topo.server(t) {
                let sent = (!skip_down || topo.is_up(t)).then(|| {
                    Pending::Forward(s.pool.send_transaction(pick, frame.clone(), replies))
                });
                all.push((name(t), sent));
            }
        }
        fan_out(all, need).await
    }))
}

/// INFO: each server's memory, stats and keyspace, then the text over the pool.
fn info(cx: &mut Context<'_>, request: &Request) -> Pending {
    let frame = Request::from_args(info::SERVER_INFO).frame().clone();
    // Over RESP2 connections: the text comes as a bulk string.
    let pick = Pick::from(cx.client.pick().conn);
    let asks: Vec<_> = cx
        .topo
        .servers
        .iter()
        .map(|s| s.pool.send(pick, frame.clone()))
        .collect();
    let topo = cx.topo.clone();
    let shared = cx.shared.clone();
    let proto = cx.client.proto;
    let request = request.clone();
    Pending::Merge(Box::pin(async move {
        let mut servers = Vec::with_capacity(asks.len());
        for ask in asks {
            let fields = match ask.await {
                Ok(Ok(frame)) => match Value::parse(&frame) {
                    Ok(Value::Bulk(text)) => Some(info::parse(&text)),
                    _ => None,
                },
                _ => None,
            };
            servers.push(fields);
        }
        let facts = Facts {
            topo: &topo,
            shared: &shared,
        };
        let text = info::text(request.args(), &facts, &servers);
        let mut out = BytesMut::with_capacity(text.len() + 16);
        write_verbatim(&mut out, text.as_bytes(), proto);
        Ok(out.freeze())
    }))
}

/// RANDOMKEY: starting at `start`, the first server that has any key answers.
async fn random_key(topo: Arc<Topology>, start: usize, pick: Pick, frame: Bytes) -> Reply {
    let n = topo.servers.len();
    let mut last = None;
    for i in 0..n {
        let Some(server) = topo.servers.get((start + i) % n) else {
            break;
        };
        let reply = forwarded(server.pool.send(pick, frame.clone()).await);
        // A null: this server is empty; anything else (a key or an error) is the answer.
        if !matches!(&reply, Ok(frame) if is_null_reply(frame)) {
            return reply;
        }
        last = Some(reply);
    }
    last.unwrap_or_else(|| Err(ReplyError::new(ErrorKind::Internal, "keyway: no servers")))
}

/// A read retried once on another replica when the first failed on a connection error (the
/// server never answered: unavailable or timed out). Redis error replies are answers, not
/// failures, and are passed through.
/// A read under `write = "two_phase"`: `MGET` of its keys' lock keys, then the read, pipelined
/// on one connection (a commit removes its locks in the script that applies it, so a read after
/// a check that found none sees every commit acknowledged before it began). A lock found is
/// settled (`txn::settle`: rolled forward if its transaction passed its commit point) and the
/// read sent once more; a lock of a transaction not yet committed leaves the value read as it
/// is, since that write is not acknowledged to anyone. A connection error tries `alternate`.
fn guarded_read(cx: &Context<'_>, route: Route<'_>, request: &Request) -> Pending {
    let mut positions = Vec::new();
    let check = match cx
        .spec
        .map(|spec| crate::command::key_indexes(spec, request.args(), &mut positions))
    {
        Some(Ok(())) => txn::lock_check(positions.iter().filter_map(|&i| request.args().get(i))),
        _ => return internal_routing_error(),
    };
    guarded(cx, route, request.frame().clone(), check)
}

/// Sends `frame` after its lock check `check` where `route` says (see [`guarded_read`]).
fn guarded(cx: &Context<'_>, route: Route<'_>, frame: Bytes, check: Bytes) -> Pending {
    let Some(at) = ReadAt::of(route) else {
        return internal_routing_error();
    };
    let read = GuardedRead { at, frame, check };
    let (topo, pick) = (cx.topo.clone(), cx.client.pick());
    let Some(sent) = read.send(&topo, pick, at.server) else {
        return internal_routing_error();
    };
    Pending::Merge(Box::pin(
        async move { read.finish(&topo, pick, sent).await.0 },
    ))
}

/// Where a guarded read goes: a server, and the replica tried once after a connection error.
#[derive(Debug, Clone, Copy)]
struct ReadAt {
    server: u16,
    alternate: Option<u16>,
}

impl ReadAt {
    fn of(route: Route<'_>) -> Option<ReadAt> {
        match route {
            Route::One(server) => Some(ReadAt {
                server,
                alternate: None,
            }),
            Route::Read { server, alternate } => Some(ReadAt {
                server,
                alternate: Some(alternate),
            }),
            Route::FanOut { .. } => None,
        }
    }
}

/// A read under `write = "two_phase"` (or one server's part of one): its frame, and the `MGET`
/// of its keys' locks sent just before it on the same connection.
struct GuardedRead {
    at: ReadAt,
    frame: Bytes,
    check: Bytes,
}

type Sent = (
    oneshot::Receiver<crate::backend::Reply>,
    oneshot::Receiver<crate::backend::Reply>,
);

impl GuardedRead {
    /// Sends the lock check and the read, pipelined, to `server`.
    fn send(&self, topo: &Topology, pick: Pick, server: u16) -> Option<Sent> {
        let s = topo.server(server)?;
        Some((
            s.pool.send(pick, self.check.clone()),
            s.pool.send(pick, self.frame.clone()),
        ))
    }

    /// The read's reply once its locks are settled, and whether the check met a lock.
    async fn finish(&self, topo: &Topology, pick: Pick, sent: Sent) -> (Reply, bool) {
        let mut at = self.at.server;
        let (mut locks, mut read) = sent;
        loop {
            let checked = forwarded(locks.await);
            let reply = forwarded(read.await);
            match (checked, self.at.alternate) {
                // The server could not be asked: once more on the alternate replica.
                (Err(_), Some(other)) if at != other => {
                    at = other;
                    match self.send(topo, pick, other) {
                        Some(next) => (locks, read) = next,
                        None => return (reply, false),
                    }
                }
                (Err(e), _) => return (Err(e), false),
                (Ok(checked), _) => {
                    let holders = txn::lock_holders(&checked);
                    if holders.is_empty() {
                        return (reply, false);
                    }
                    if let Err(e) = txn::settle(topo, pick, at, holders).await {
                        return (Err(e), true);
                    }
                    let Some(s) = topo.server(at) else {
                        return (reply, true);
                    };
                    return (forwarded(s.pool.send(pick, self.frame.clone()).await), true);
                }
            }
        }
    }
}

/// Rounds of a read spread over servers before it reads under locks (see [`snapshot`]).
const SNAPSHOT_ROUNDS: usize = 3;

const SNAPSHOT_GAVE_UP: &str = "keyway: the keys were rewritten by two-phase writes faster than a read over several servers could see them at one instant; nothing was read, retry";

/// The parts of a read spread over servers under `write = "two_phase"`, as of one instant, or
/// `None` when writes kept changing them for [`SNAPSHOT_ROUNDS`] rounds (then [`LockedRead`]).
///
/// Each part alone is consistent (see [`guarded_read`]), but parts read on different servers at
/// different moments can straddle a cross-server transaction's commit: one part before its
/// commit point, another after it (read skew). So the parts are read again, all of them after
/// every part of the first round answered, until a round finds no lock on any part and every
/// part answering exactly what it answered in the round before. Then each part's value held
/// from its first read to its second, and these intervals share the instant the last first read
/// ran; no transaction was half applied at that instant, since a half-applied transaction holds
/// a lock on the servers it has not yet committed on. So the reply is what every server held at
/// one instant with no transaction in flight. (A value changed and changed back between the two
/// reads of a part would go unseen.)
///
/// Costs a second round per read spread over servers; a read of one server is a snapshot by
/// itself (one command of one server) and takes one round.
async fn snapshot(
    topo: &Topology,
    pick: Pick,
    reads: &[GuardedRead],
) -> Option<Result<Vec<Reply>, ReplyError>> {
    let mut before: Option<Vec<Bytes>> = None;
    for _ in 0..SNAPSHOT_ROUNDS {
        let mut sent = Vec::with_capacity(reads.len());
        for r in reads {
            sent.push(r.send(topo, pick, r.at.server));
        }
        let mut frames = Vec::with_capacity(reads.len());
        let mut met_lock = false;
        for (r, sent) in reads.iter().zip(sent) {
            let Some(sent) = sent else {
                return Some(Err(ReplyError::new(
                    ErrorKind::Internal,
                    "keyway: internal routing error (no such server)",
                )));
            };
            let (reply, locked) = r.finish(topo, pick, sent).await;
            met_lock |= locked;
            // A part that failed is the answer, as it is for every split read.
            match reply {
                Ok(frame) => frames.push(frame),
                Err(e) => return Some(Err(e)),
            }
        }
        // One server's part is atomic by itself (one command of one server).
        let single = reads.len() == 1;
        if single || (!met_lock && before.as_ref().is_some_and(|b| *b == frames)) {
            return Some(Ok(frames.into_iter().map(Ok).collect()));
        }
        before = Some(frames);
    }
    None
}

/// A read over servers (MGET, EXISTS, TOUCH) run as a two-phase transaction of one read per
/// key, each on the server its part read: under the transaction's locks, so that no other
/// two-phase writer changes a key between the reads. For keys rewritten so often that
/// [`snapshot`]'s validation keeps failing; it writes the engine's bookkeeping like any
/// transaction and may itself meet writers' locks (`-TRYAGAIN` after the engine's retries).
struct LockedRead {
    name: Bytes,
    how: Merge,
    keys: Vec<(Bytes, u16)>,
}

impl LockedRead {
    async fn run(self, topo: Arc<Topology>, pick: Pick, shared: &Shared) -> Reply {
        let array = self.how == Merge::Array;
        // MGET answers a null for a key of another type; GET inside the script would fail.
        let name = if array {
            Bytes::from_static(b"GET")
        } else {
            self.name.clone()
        };
        let plan = txn::plan::locked_read(&name, &self.keys, !array);
        let options = txn::TxOptions {
            lock_timeout: topo.config.two_phase.lock_timeout,
            retries: topo.config.two_phase.retries,
        };
        let reply = txn::execute(topo, pick, plan, &options, &shared.metrics).await?;
        if !array {
            return Ok(reply);
        }
        // EXEC's array of GET replies is MGET's, but for a key of another type (WRONGTYPE
        // there, a null from MGET). Any other error (a read that got no result) is the
        // reply: a null in its place would claim the key is absent.
        match Value::parse(&reply) {
            Ok(Value::Array(items)) if items.iter().any(Value::is_error) => {
                let null = match pick.proto {
                    crate::protocol::Proto::Resp3 => Value::Null,
                    crate::protocol::Proto::Resp2 => Value::Nil,
                };
                let mut out = BytesMut::new();
                let other = items.iter().find(|v| match v {
                    Value::Error(text) | Value::BlobError(text) => !text.starts_with(b"WRONGTYPE"),
                    _ => false,
                });
                if let Some(error) = other {
                    error.encode(&mut out);
                    return Ok(out.freeze());
                }
                let items = items
                    .into_iter()
                    .map(|v| if v.is_error() { null.clone() } else { v })
                    .collect();
                Value::Array(items).encode(&mut out);
                Ok(out.freeze())
            }
            _ => Ok(reply),
        }
    }
}

async fn read_with_retry(
    first: Pending,
    topo: Arc<Topology>,
    alternate: u16,
    pick: Pick,
    frame: Bytes,
    script: bool,
) -> Reply {
    let failed = match resolve(first).await {
        // Keyway's errors for a forwarded request are all failures to get a reply.
        Err(e) => e,
        answered => return answered,
    };
    match send_as(&topo, alternate, pick, frame, script) {
        Pending::Forward(rx) => forwarded(rx.await),
        _ => Err(failed),
    }
}

/// A write sent to several replicas (`None`: not sent, the replica is down): done once `need`
/// of them acknowledged (all for `write = all`, a majority for `quorum`), without waiting for
/// the others; the answer is `merge::fan_out`'s.
async fn fan_out(replies: Vec<(String, Option<Pending>)>, need: usize) -> Reply {
    let total = replies.len();
    // (replica index, reply): the reply given is the first replica's in the set's order among
    // those that acknowledged (the primary's under `all`), not the fastest one's, so a reply
    // that differs per server (PUBLISH's receiver count in a transaction) is the primary's.
    let mut acked: Vec<(usize, Bytes)> = Vec::new();
    let mut failed: Vec<(usize, Missed)> = Vec::new();
    let (names, mut slots): (Vec<String>, Vec<Option<Pending>>) = replies.into_iter().unzip();
    for (i, slot) in slots.iter().enumerate() {
        if slot.is_none() {
            failed.push((i, Missed::NotSent("down by the health checks".to_string())));
        }
    }
    poll_fn(|cx| {
        for (i, slot) in slots.iter_mut().enumerate() {
            if let Some(p) = slot {
                if let Poll::Ready(ack) = poll_ack(p, cx) {
                    *slot = None;
                    match ack {
                        Ok(frame) => acked.push((i, frame)),
                        Err(missed) => failed.push((i, missed)),
                    }
                }
            }
        }
        // Done at success, or once every replica answered: a failed write waits for all of
        // them, so that its error can say exactly how many took it.
        if acked.len() >= need || slots.iter().all(Option::is_none) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    failed.sort_by_key(|&(i, _)| i);
    acked.sort_by_key(|&(i, _)| i);
    let acked = acked.into_iter().map(|(_, frame)| frame).collect();
    let failed = failed
        .into_iter()
        .map(|(i, m)| (names.get(i).map_or("?", String::as_str), m))
        .collect();
    merge::fan_out(acked, failed, total, need)
}

/// One replica's reply to a fan-out write: its acknowledgement, or what is known of the write
/// there. A server's own failure to answer is read as the backend reported it, which says
/// whether the write was sent ([`crate::backend::BackendError::may_have_run`]).
fn poll_ack(p: &mut Pending, cx: &mut std::task::Context<'_>) -> Poll<Result<Bytes, Missed>> {
    let classify = |frame: Bytes| {
        if is_error_reply(&frame) {
            Err(Missed::Refused(frame))
        } else {
            Ok(frame)
        }
    };
    match p {
        Pending::Forward(rx) => std::pin::Pin::new(rx).poll(cx).map(|reply| match reply {
            Ok(Ok(frame)) => classify(frame),
            Ok(Err(e)) if e.may_have_run() => Err(Missed::Unknown(e.detail())),
            Ok(Err(e)) => Err(Missed::NotSent(e.detail())),
            Err(_) => Err(Missed::Unknown(
                "its connection ended before the reply".to_string(),
            )),
        }),
        // A call that loaded a script first, or a reply already in: Keyway's error says no
        // more than its text, so the outcome is taken as unknown.
        other => other.poll_reply(cx).map(|reply| match reply {
            Ok(frame) => classify(frame),
            Err(e) => Err(Missed::Unknown(e.message().to_string())),
        }),
    }
}

/// GET during the warm-up after a swap: a miss on the slot's new primary is tried on its
/// previous one, and a hit is returned and copied to the new primary with its TTL.
fn warm_get(cx: &Context<'_>, new: u16, old: u16, request: &Request) -> Pending {
    let pick = cx.client.pick();
    let first = send_to(cx.topo, new, pick, request.frame().clone());
    let key = request.args().bytes(1).unwrap_or_default();
    let topo = cx.topo.clone();
    Pending::Merge(Box::pin(async move {
        let reply = resolve(first).await;
        if !matches!(&reply, Ok(frame) if is_null_reply(frame)) {
            return reply;
        }
        let (Some(old_server), Some(new_server)) = (topo.server(old), topo.server(new)) else {
            return reply;
        };
        let get = Request::from_args(&[Bytes::from_static(b"GET"), key.clone()]);
        let pttl = Request::from_args(&[Bytes::from_static(b"PTTL"), key.clone()]);
        let value_rx = old_server.pool.send(pick, get.frame().clone());
        let ttl_rx = old_server.pool.send(pick, pttl.frame().clone());
        let value = match value_rx.await {
            Ok(Ok(v)) => v,
            // The old owner cannot help: the miss stands.
            _ => return reply,
        };
        let Ok(Value::Bulk(data)) = Value::parse(&value) else {
            return reply;
        };
        let ttl = match ttl_rx.await {
            Ok(Ok(t)) => match Value::parse(&t) {
                Ok(Value::Integer(ms)) => ms,
                _ => -1,
            },
            _ => -1,
        };
        if ttl == -2 {
            // Expired between the two reads.
            return reply;
        }
        // Copy with NX, so that a write that reached the new owner meanwhile wins.
        let mut set = vec![Bytes::from_static(b"SET"), key, data];
        if ttl > 0 {
            set.push(Bytes::from_static(b"PX"));
            set.push(Bytes::from(ttl.to_string()));
        }
        set.push(Bytes::from_static(b"NX"));
        // Sent; the client's reply does not wait for the copy.
        drop(
            new_server
                .pool
                .send(pick, Request::from_args(&set).frame().clone()),
        );
        Ok(value)
    }))
}
