//! The planner: where a command goes, decided as a value.
//!
//! [`plan`] is a pure function of the request, the topology snapshot and the client's state: it
//! sends nothing and awaits nothing. It looks the command up in the command table, finds its
//! keys and returns a [`Plan`]:
//!
//! - [`Plan::Route`]: the client's frame as it is, to one server ([`Route::One`]), to one
//!   replica with a retry on another ([`Route::Read`]), or to several replicas ([`Route::FanOut`]);
//! - [`Plan::Split`]: MGET, MSET, DEL, UNLINK, EXISTS, TOUCH over keys of several servers: one
//!   sub-command per server or replica set, replies merged (MGET in key order, counts summed);
//! - [`Plan::All`]: DBSIZE, FLUSHDB, KEYS, SCRIPT LOAD, ...: the same frame to every server;
//! - [`Plan::Scan`], [`Plan::RandomKey`], [`Plan::WarmGet`]: walks over servers;
//! - [`Plan::TwoPhase`]: a write under `write = "two_phase"`, as a transaction (`txn::plan`);
//! - [`Plan::Local`]: answered by Keyway itself; [`Plan::Refuse`]: an error for the client.
//!
//! `dispatch` carries a plan out. Commands whose keys span slots and that cannot be split get a
//! `CROSSSLOT` error that points at hash tags.

use crate::command::{self, CommandSpec, Kind, Local, Merge, PubSub, Traits};
use crate::config::WriteMode;
use crate::error::{ErrorKind, ReplyError};
use crate::protocol::{Args, Proto, Request};
use crate::routing::{alternate, choose_read, key_slot, Slot};
use crate::topology::{Placement, PlacementError, Topology};
use crate::txn;

use super::client::{Auth, ClientState};
use super::multi;

/// What to do with one request.
#[derive(Debug)]
pub(crate) enum Plan<'r, 't> {
    /// Answered by Keyway itself.
    Local(Local),
    /// An error for the client; nothing is sent.
    Refuse(ReplyError),
    /// The client's frame, unchanged, where the route says.
    Route(Route<'t>),
    /// A GET during the warm-up after a swap: a miss on the slot's new primary `new` is tried
    /// on its previous one `old`, and a hit copied to `new`.
    WarmGet { new: u16, old: u16 },
    /// A multi-key command split per server or replica set.
    Split(Split<'r, 't>),
    /// The same frame to every server, replies merged.
    All(Merge),
    /// RANDOMKEY: servers in turn from `start` until one has a key.
    RandomKey { start: usize },
    /// SCAN on server `server` at that server's `cursor`.
    Scan { server: u16, cursor: u64 },
    /// A write under `write = "two_phase"`.
    TwoPhase(txn::Plan),
    /// A read of keys under `write = "two_phase"`, where the route says, after a check of its
    /// keys' two-phase locks in the same pipeline: a lock of a transaction past its commit point
    /// is rolled forward and the read sent again, so that no read returns a value older than
    /// one already acknowledged (see `txn::settle`).
    Guarded(Route<'t>),
    /// A step of a MULTI/EXEC transaction (see `multi`).
    Multi(super::multi::Step),
    /// A command that blocks (`BLPOP`, `XREAD ... BLOCK`, ...): on a server connection of its
    /// own to `server`, the slot's primary; then, for a pop under `write = all|quorum`, what it
    /// popped removed on the slot's other replicas `replay` (see `blocking`).
    Block { server: u16, replay: &'t [u16] },
    /// `(P|S)SUBSCRIBE`, `(P|S)UNSUBSCRIBE`: the client's subscriptions (see `pubsub`).
    Subscribe(PubSub),
    /// `PUBSUB CHANNELS|NUMSUB|NUMPAT|SHARDCHANNELS|SHARDNUMSUB`: to every server, merged.
    Listing(PubSub),
    /// HTTP sent to the client port (a `POST` request line, a `Host:` header): the connection
    /// is closed without a reply, as redis-server does, so that a request forged by a browser or
    /// an SSRF cannot run the commands in its body.
    CrossProtocol,
}

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'t> {
    /// One server (a slot's placement, or any server for a keyless command).
    One(u16),
    /// A read on `server`, retried once on `alternate` after a connection error.
    Read { server: u16, alternate: u16 },
    /// A write to every server of `targets`, done once `need` acknowledged. With `skip_down`,
    /// a target the health checks mark down is not sent the write (and counts as not
    /// acknowledged): some are down, and enough are up.
    FanOut {
        targets: &'t [u16],
        need: usize,
        skip_down: bool,
    },
}

/// A split command: its parts, and for each key (in the client's order) its part and its run of
/// encoded arguments.
#[derive(Debug)]
pub(crate) struct Split<'r, 't> {
    /// How the parts' replies merge.
    pub(crate) how: Merge,
    /// Arguments per key (the key and its values).
    pub(crate) group: usize,
    /// One per distinct placement.
    pub(crate) parts: Vec<SubCommand<'t>>,
    /// Per key: the index of its part, and its arguments as encoded in the client's frame
    /// (`$len\r\nkey\r\n...`; `None` when they are not contiguous, as after an inline command).
    pub(crate) runs: Vec<(u32, Option<&'r [u8]>)>,
}

/// One server's (or replica set's) share of a split command.
#[derive(Debug)]
pub(crate) struct SubCommand<'t> {
    pub(crate) placement: Placement<'t>,
    /// Where the part goes (from its placement and the pool's policies).
    pub(crate) route: Route<'t>,
    /// Keys it carries.
    pub(crate) keys: usize,
    /// Bytes their encoded arguments take.
    pub(crate) len: usize,
    /// The part goes to its server as the primary of a key's slot, found up: later keys with
    /// the same primary join it without a health check of their own.
    primary: bool,
}

/// Keys in one SCAN cursor are `server cursor << SCAN_SHIFT | server index`.
pub(crate) const SCAN_SHIFT: u32 = 10;

pub(crate) const CROSSSLOT: &str = "Keys in request don't hash to the same slot \
     (keyway shards keys by slot; put a hash tag in the keys, e.g. {user1}.a and {user1}.b, \
     to keep them on one server)";

pub(crate) const RESERVED: &str = "keys starting with '__keyway:' are keyway's own bookkeeping \
     (two-phase locks, intents and decisions); clients cannot read or write them";

/// Whether a key is one of Keyway's own (`__keyway:*`), which no client command may name.
fn is_reserved(key: &[u8]) -> bool {
    key.starts_with(crate::txn::RESERVED_PREFIX)
}

pub(crate) const RESERVED_PATTERN: &str = "SORT BY and GET patterns that could name keys \
     starting with '__keyway:' (keyway's own bookkeeping) are refused: begin the pattern with \
     fixed text, e.g. weight_* or user:*->name";

/// Whether a SORT or SORT_RO `BY`/`GET` pattern may name one of Keyway's keys. redis-server
/// reads the key a pattern makes of each element (its first `*` replaced by the element; a
/// pattern without `*` reads nothing), so a pattern whose text before that `*` starts with
/// `__keyway:`, or could be completed into it by an element (`*`, `__key*`), reaches them;
/// one whose fixed start differs (`weight_*`, `user:*->name`) cannot.
fn sort_pattern_is_reserved(pattern: &[u8]) -> bool {
    let Some(star) = pattern.iter().position(|&b| b == b'*') else {
        return false;
    };
    let fixed = pattern.get(..star).unwrap_or_default();
    fixed.starts_with(crate::txn::RESERVED_PREFIX) || crate::txn::RESERVED_PREFIX.starts_with(fixed)
}

/// Whether SORT's arguments (from the third on: options) hold a `BY` or `GET` pattern that
/// may name one of Keyway's keys (see [`sort_pattern_is_reserved`]).
fn sort_reaches_reserved(args: Args<'_>) -> bool {
    let mut i = 2;
    while let Some(arg) = args.get(i) {
        if arg.eq_ignore_ascii_case(b"LIMIT") {
            i += 3;
        } else if arg.eq_ignore_ascii_case(b"BY") || arg.eq_ignore_ascii_case(b"GET") {
            if args.get(i + 1).is_some_and(sort_pattern_is_reserved) {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

const KEYLESS_WRITE: &str = "a script or function called without keys may write, and would \
     run on one server only, while this pool writes every replica (write = all, quorum or \
     two_phase); pass the keys it writes, or call it read-only (EVAL_RO, EVALSHA_RO, FCALL_RO)";

const RANDOM_FANOUT: &str = "SPOP picks members at random, so replicas would pop different \
     members; keyway refuses it when writes go to several replicas (write = all or quorum)";

impl From<PlacementError> for ReplyError {
    fn from(e: PlacementError) -> ReplyError {
        ReplyError::new(ErrorKind::TryAgain, e.to_string())
    }
}

/// Plans one request: its command (when the table knows it) and what to do with it. `keys` is
/// scratch space for key positions, reused across requests.
pub(crate) fn plan<'r, 't>(
    request: &'r Request,
    topo: &'t Topology,
    client: &mut ClientState,
    keys: &mut Vec<usize>,
) -> (Option<&'static CommandSpec>, Plan<'r, 't>) {
    let args = request.args();
    match command::resolve(args) {
        Ok(spec) => {
            if let Err(e) = admit(spec, args, client, keys) {
                if client.multi.is_some() {
                    return (Some(spec), Plan::Multi(multi::Step::Dirty(e)));
                }
                return (Some(spec), Plan::Refuse(e));
            }
            if client.proto == Proto::Resp2
                && super::pubsub::subscribed(client)
                && !allowed_subscribed(spec.kind)
            {
                return (
                    Some(spec),
                    Plan::Refuse(super::pubsub::not_in_context(spec.name)),
                );
            }
            if let Kind::Transaction(tx) = spec.kind {
                let watching = client.watch.as_ref().map(|w| w.slot);
                let step = multi::control(tx, args, topo, client.multi.as_deref(), watching, keys);
                return (Some(spec), step.map_or_else(Plan::Refuse, Plan::Multi));
            }
            // RESET and QUIT act at once inside a transaction too, as in redis-server.
            let immediate = matches!(spec.kind, Kind::Local(Local::Reset | Local::Quit));
            if let Some(m) = client.multi.as_deref().filter(|_| !immediate) {
                return (
                    Some(spec),
                    Plan::Multi(multi::queue(spec, request, topo, m, keys)),
                );
            }
            (Some(spec), plan_command(spec, args, topo, client, keys))
        }
        // Neither is a command, so only a name the table does not know is looked at.
        Err(_) if is_http(request.name()) => (None, Plan::CrossProtocol),
        Err(e) => {
            let known = std::str::from_utf8(request.name())
                .ok()
                .and_then(command::lookup);
            if client.multi.is_some() {
                return (known, Plan::Multi(multi::Step::Dirty(multi::refusal(e))));
            }
            (known, Plan::Refuse(e.into()))
        }
    }
}

const NOAUTH: &str = "Authentication required.";

/// Whether the client's user may run the command (client authentication, `[[users]]`): as
/// redis-server, after the command is known and its arity checked, a client that has not
/// authenticated may run only commands flagged `no_auth` (AUTH, HELLO, QUIT, RESET), and an
/// authenticated one what its user's rules allow (command, keys, channels: `acl::User::check`).
/// Without users, one comparison.
#[inline]
fn admit(
    spec: &'static CommandSpec,
    args: Args<'_>,
    client: &ClientState,
    keys: &mut Vec<usize>,
) -> Result<(), ReplyError> {
    match &client.auth {
        Auth::Open => Ok(()),
        Auth::User(user) => user
            .check(spec, args, keys)
            .map_err(|d| ReplyError::new(ErrorKind::NoPerm, d.message(spec))),
        Auth::Required if spec.flags.contains(command::Flags::NO_AUTH) => Ok(()),
        Auth::Required => Err(ReplyError::new(ErrorKind::NoAuth, NOAUTH)),
    }
}

/// Whether a RESP2 client in subscribed mode may send a command of this kind: only
/// `(P|S)SUBSCRIBE`, `(P|S)UNSUBSCRIBE`, `PING`, `QUIT` and `RESET`, as in redis-server.
fn allowed_subscribed(kind: Kind) -> bool {
    match kind {
        Kind::PubSub(p) => p.subscribes(),
        Kind::Local(Local::Ping | Local::Quit | Local::Reset) => true,
        _ => false,
    }
}

/// The server a channel (or shard channel) lives on: its slot's primary in the slot table, by
/// hash tag as keys are. Health does not move it, so that `PUBLISH` and the subscriptions of
/// every Keyway agree on it: while that server is down, publishing to its channels fails.
pub(crate) fn channel_server(topo: &Topology, channel: &[u8]) -> u16 {
    topo.table.primary(key_slot(channel, topo.hash_tag))
}

/// Whether a request's name is what an HTTP request sends first: a `POST` request line or a
/// `Host:` header (a GET request line is a Redis GET with the wrong arity).
fn is_http(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"post") || name.eq_ignore_ascii_case(b"host:")
}

/// Plans a command the table resolved.
fn plan_command<'r, 't>(
    spec: &'static CommandSpec,
    args: Args<'r>,
    topo: &'t Topology,
    client: &mut ClientState,
    keys: &mut Vec<usize>,
) -> Plan<'r, 't> {
    match spec.kind {
        Kind::Local(local) => Plan::Local(local),
        Kind::Keyed => keyed(spec, args, topo, client, keys),
        Kind::Split { merge, group } => split(spec, args, topo, client, merge, group),
        Kind::AllServers(merge) => all_servers(spec, topo, merge),
        Kind::AnyServer => any_server(topo),
        Kind::RandomKey => Plan::RandomKey {
            start: rand::random_range(0..topo.servers.len().max(1)),
        },
        Kind::Scan => scan(args, topo),
        Kind::PubSub(PubSub::Publish) => match args.get(1) {
            Some(channel) => Plan::Route(Route::One(channel_server(topo, channel))),
            None => Plan::Refuse(command::CommandError::Arity { name: spec.name }.into()),
        },
        Kind::PubSub(what) if what.subscribes() => Plan::Subscribe(what),
        Kind::PubSub(what) => Plan::Listing(what),
        // `resolve` turns these away; answer as it would.
        Kind::Refused(reason) => Plan::Refuse(
            command::CommandError::Refused {
                name: spec.name,
                reason,
            }
            .into(),
        ),
        Kind::Container => Plan::Refuse(command::CommandError::Arity { name: spec.name }.into()),
        // `plan` handles these before.
        Kind::Transaction(_) => Plan::Refuse(ReplyError::new(
            ErrorKind::Internal,
            "keyway: transaction command planned as a command",
        )),
    }
}

fn refuse(kind: ErrorKind, message: &'static str) -> Plan<'static, 'static> {
    Plan::Refuse(ReplyError::new(kind, message))
}

/// A command whose keys must share one slot.
fn keyed<'r, 't>(
    spec: &'static CommandSpec,
    args: Args<'r>,
    topo: &'t Topology,
    client: &mut ClientState,
    keys: &mut Vec<usize>,
) -> Plan<'r, 't> {
    keys.clear();
    if let Err(e) = command::key_indexes(spec, args, keys) {
        return Plan::Refuse(e.into());
    }
    if spec.traits.contains(Traits::PATTERNS) && sort_reaches_reserved(args) {
        return refuse(ErrorKind::Refused, RESERVED_PATTERN);
    }
    let mut slot = None;
    for &i in keys.iter() {
        let Some(key) = args.get(i) else { continue };
        if is_reserved(key) {
            return refuse(ErrorKind::Refused, RESERVED);
        }
        let s = key_slot(key, topo.hash_tag);
        match slot {
            None => slot = Some(s),
            Some(first) if first != s => return refuse(ErrorKind::CrossSlot, CROSSSLOT),
            Some(_) => {}
        }
    }
    // EVAL with numkeys 0 and the like: any server will do, unless it may write where writes
    // must reach every replica (a keyless script reaches one server, outside any transaction).
    let Some(slot) = slot else {
        if spec.is_write() && (fans_out(topo) || topo.write == WriteMode::TwoPhase) {
            return refuse(ErrorKind::Refused, KEYLESS_WRITE);
        }
        return client_server(topo, client);
    };
    let write = spec.is_write();
    if write && topo.write == WriteMode::TwoPhase {
        // Blocking writes are refused here: they cannot run inside a script.
        return match txn::plan::keyed(spec, args, keys, &counted_first(topo, slot)) {
            Ok(plan) => Plan::TwoPhase(plan),
            Err(e) => Plan::Refuse(e),
        };
    }
    if super::blocking::blocks(spec, args) {
        return block(topo, slot, write);
    }
    if write && spec.traits.contains(Traits::RANDOM) && fans_out(topo) {
        return refuse(ErrorKind::Refused, RANDOM_FANOUT);
    }
    let placement = match topo.placement(slot) {
        Ok(placement) => placement,
        Err(e) => return Plan::Refuse(e.into()),
    };
    if let (Placement::One(new), false, true) =
        (placement, write, spec.traits.contains(Traits::WARM))
    {
        if let Some(old) = topo.warm_from(slot).filter(|&old| old != new) {
            return Plan::WarmGet { new, old };
        }
    }
    let route = match route(topo, client, placement, write) {
        Ok(route) => route,
        Err(e) => return Plan::Refuse(e),
    };
    if !write && topo.write == WriteMode::TwoPhase && !spec.traits.contains(Traits::SCRIPT) {
        return Plan::Guarded(route);
    }
    Plan::Route(route)
}

/// A blocking command on keys of `slot`: to the slot's primary (the server failover chose for
/// it when `replicas = 1`), where every write lands first. A pop under `write = all|quorum` is
/// then replayed on the other replicas.
fn block<'t>(topo: &'t Topology, slot: Slot, write: bool) -> Plan<'static, 't> {
    match topo.placement(slot) {
        Ok(Placement::One(server)) => Plan::Block {
            server,
            replay: &[],
        },
        Ok(Placement::Replicas(set)) => match set.split_first() {
            Some((&server, rest)) => Plan::Block {
                server,
                replay: if write && fans_out(topo) { rest } else { &[] },
            },
            None => refuse(ErrorKind::Internal, "keyway: empty replica set"),
        },
        Err(e) => Plan::Refuse(e.into()),
    }
}

/// Whether writes go to more than one server.
fn fans_out(topo: &Topology) -> bool {
    topo.replicas > 1 && topo.write != WriteMode::Primary
}

/// Where a frame for a slot of `placement` goes, by the pool's read and write policies.
///
/// # Errors
///
/// A write that cannot succeed because replicas it needs are down by the health checks (see
/// [`write_route`]): refused at once, before anything is sent.
pub(crate) fn route<'t>(
    topo: &'t Topology,
    client: &mut ClientState,
    placement: Placement<'t>,
    write: bool,
) -> Result<Route<'t>, ReplyError> {
    let set = match placement {
        Placement::One(server) => return Ok(Route::One(server)),
        Placement::Replicas(set) => set,
    };
    if write {
        return write_route(topo, set);
    }
    // Reads skip a recovering replica (restarted or back empty, not yet resynced) while another
    // member is readable; with none readable, any member that is up serves (the guard).
    let readable = set.iter().any(|&i| topo.is_readable(i));
    let serves = |i| {
        if readable {
            topo.is_readable(i)
        } else {
            topo.is_up(i)
        }
    };
    let load = |i| topo.server(i).map_or(i64::MAX, |s| s.pool.in_flight());
    let server = choose_read(topo.read, set, serves, load, &mut client.rr);
    // A read that fails on a connection error is retried once on the next healthy replica:
    // reads are idempotent.
    Ok(match alternate(set, server, serves) {
        Some(alternate) => Route::Read { server, alternate },
        None => Route::One(server),
    })
}

/// A slot's replica set for a two-phase write, the replica whose results make the client's reply
/// first: the slot's primary, unless it is recovering (restarted, being resynced: a value its
/// resync restores may be older than one a commit applied, so its read-back could repeat a
/// count) and another replica is readable; then that one. Allocates only in that case.
pub(crate) fn counted_first(topo: &Topology, slot: Slot) -> std::borrow::Cow<'_, [u16]> {
    let set = topo.replica_set(slot);
    match set.first() {
        Some(&first) if !topo.is_readable(first) => {
            match set.iter().position(|&i| topo.is_readable(i)) {
                Some(at) => {
                    let mut set = set.to_vec();
                    set.swap(0, at);
                    std::borrow::Cow::Owned(set)
                }
                None => std::borrow::Cow::Borrowed(set),
            }
        }
        _ => std::borrow::Cow::Borrowed(set),
    }
}

/// Where a write to a slot's replica set `set` goes under `primary`, `all` or `quorum`, failing
/// fast on servers the health checks mark down: none is sent a write, nor waited for. A write
/// that needs more replicas than are up (`all` with one down, `quorum` without a majority up,
/// `primary` with its primary down) is refused at once, and nothing is written anywhere, so
/// that the replicas do not diverge; `quorum` with a majority up goes to the replicas that are
/// up. The guard: when the whole set looks down, the health view is more likely wrong than every
/// replica dead, so the write goes out as if all were up (and fails fast if they really are).
fn write_route<'t>(topo: &'t Topology, set: &'t [u16]) -> Result<Route<'t>, ReplyError> {
    let targets: &[u16] = match topo.write {
        WriteMode::Primary => set.get(..1).unwrap_or(set),
        // Two-phase writes are planned as transactions; this is never reached for them.
        WriteMode::All | WriteMode::Quorum | WriteMode::TwoPhase => set,
    };
    let need = match topo.write {
        WriteMode::Quorum => targets.len() / 2 + 1,
        _ => targets.len(),
    };
    let down = targets.iter().filter(|&&t| !topo.is_up(t)).count();
    let skip_down = down > 0 && set.iter().any(|&s| topo.is_up(s));
    if skip_down && targets.len() - down < need {
        return Err(write_refused(topo, targets, need));
    }
    Ok(match targets {
        [only] => Route::One(*only),
        _ => Route::FanOut {
            targets,
            need,
            skip_down,
        },
    })
}

/// A command for every server (KEYS, DBSIZE, FLUSHALL, SCRIPT LOAD, ...): refused at once,
/// sent nowhere, while the health checks mark a server down, since its answer would lack that
/// server's part (or, for a write, leave the servers different). SCRIPT KILL and FUNCTION KILL
/// still go everywhere (each server answers for itself). As for writes, when every server looks
/// down the health view is more likely wrong: the command goes out.
fn all_servers<'r, 't>(spec: &'static CommandSpec, topo: &Topology, merge: Merge) -> Plan<'r, 't> {
    let n = u16::try_from(topo.servers.len()).unwrap_or(u16::MAX);
    let up = (0..n).filter(|&t| topo.is_up(t)).count();
    if merge == Merge::AnyKilled || up == usize::from(n) || up == 0 {
        return Plan::All(merge);
    }
    Plan::Refuse(all_refused(spec, topo))
}

/// The error for a command for every server refused because some are down.
#[cold]
fn all_refused(spec: &CommandSpec, topo: &Topology) -> ReplyError {
    let down: Vec<String> = (0..u16::try_from(topo.servers.len()).unwrap_or(u16::MAX))
        .filter(|&t| !topo.is_up(t))
        .map(|t| format!("'{}'", topo.server(t).map_or("?", |s| s.name.as_str())))
        .collect();
    let (who, back) = match down.as_slice() {
        [one] => (format!("server {one} is"), "it is"),
        many => (format!("servers {} are", many.join(", ")), "they are"),
    };
    ReplyError::new(
        ErrorKind::TryAgain,
        format!(
            "keyway: {who} down; '{}' needs every server, so it was sent to none; retry when {back} back",
            spec.name.to_ascii_lowercase()
        ),
    )
}

/// The error for a write refused because servers it needs are down: names them, says what the
/// write mode needs, and that nothing was written.
#[cold]
fn write_refused(topo: &Topology, targets: &[u16], need: usize) -> ReplyError {
    let down: Vec<String> = targets
        .iter()
        .filter(|&&t| !topo.is_up(t))
        .map(|&t| format!("'{}'", topo.server(t).map_or("?", |s| s.name.as_str())))
        .collect();
    let (who, back) = match down.as_slice() {
        [one] => (format!("server {one}"), "it is"),
        many => (format!("servers {}", many.join(", ")), "they are"),
    };
    let text = match topo.write {
        WriteMode::Primary => format!(
            "keyway: {who}, the primary of these keys, is down; write = primary writes there only, so nothing was written; writes to these keys resume when {back} back"
        ),
        WriteMode::Quorum => format!(
            "keyway: {who} holding replicas of these keys {} down; write = quorum needs {need} of {} replicas, so nothing was written; writes to these keys resume when a majority is up",
            if down.len() == 1 { "is" } else { "are" },
            targets.len()
        ),
        WriteMode::All | WriteMode::TwoPhase => format!(
            "keyway: {who} holding a replica of these keys {} down; write = all needs every replica, so nothing was written; writes to these keys resume when {back} back",
            if down.len() == 1 { "is" } else { "are" },
        ),
    };
    ReplyError::new(ErrorKind::TryAgain, text)
}

/// The index in `parts` of the part that carries a key of `slot`, added if it is new.
///
/// Most keys' slots are served by their primary: a key whose primary already has a part, found
/// up, joins it with one table lookup and no health check. Other keys take the slot's placement
/// (health, failover policy, replica set).
fn part_for<'t>(
    parts: &mut Vec<SubCommand<'t>>,
    topo: &'t Topology,
    slot: Slot,
) -> Result<usize, PlacementError> {
    let single = topo.replicas == 1;
    let primary = topo.table.primary(slot);
    if single {
        let known = parts
            .iter()
            .position(|p| p.primary && p.placement == Placement::One(primary));
        if let Some(i) = known {
            return Ok(i);
        }
    }
    let placement = topo.placement(slot)?;
    let i = match parts.iter().position(|p| p.placement == placement) {
        Some(i) => i,
        None => {
            parts.push(SubCommand {
                placement,
                // Set once every key is placed (see `split`).
                route: Route::One(primary),
                keys: 0,
                len: 0,
                primary: false,
            });
            parts.len() - 1
        }
    };
    // Only a primary that is up: when none of a slot's servers is, its placement is its primary
    // all the same, which says nothing of other slots.
    if single && placement == Placement::One(primary) && topo.is_up(primary) {
        if let Some(p) = parts.get_mut(i) {
            p.primary = true;
        }
    }
    Ok(i)
}

/// MGET, MSET, DEL, ...: one sub-command per server or replica set holding some of the keys.
fn split<'r, 't>(
    spec: &'static CommandSpec,
    args: Args<'r>,
    topo: &'t Topology,
    client: &mut ClientState,
    how: Merge,
    group: usize,
) -> Plan<'r, 't> {
    let group = group.max(1);
    if args.len() < 1 + group || !(args.len() - 1).is_multiple_of(group) {
        return Plan::Refuse(command::CommandError::Arity { name: spec.name }.into());
    }
    let write = spec.is_write();
    if write && topo.write == WriteMode::TwoPhase {
        if (1..args.len())
            .step_by(group)
            .any(|at| is_reserved(args.get(at).unwrap_or_default()))
        {
            return refuse(ErrorKind::Refused, RESERVED);
        }
        let replica_set = |key: &[u8]| topo.replica_set(key_slot(key, topo.hash_tag));
        return Plan::TwoPhase(txn::plan::split(how, args, group, replica_set));
    }
    // One sub-command per distinct placement. Each key's run of arguments (`$len\r\nkey\r\n` and
    // its values, already encoded in the client's frame) is looked up once; each part counts its
    // keys (for its header) and bytes (to size the frame of a part that goes to a replica set).
    let mut runs: Vec<(u32, Option<&[u8]>)> = Vec::with_capacity((args.len() - 1) / group);
    let mut parts: Vec<SubCommand<'t>> = Vec::with_capacity(topo.servers.len().min(8));
    for at in (1..args.len()).step_by(group) {
        let key = args.get(at).unwrap_or_default();
        if is_reserved(key) {
            return refuse(ErrorKind::Refused, RESERVED);
        }
        let slot = key_slot(key, topo.hash_tag);
        let run = args.encoded(at..at + group);
        let part = match part_for(&mut parts, topo, slot) {
            Ok(i) => i,
            Err(e) => return Plan::Refuse(e.into()),
        };
        if let Some(p) = parts.get_mut(part) {
            p.keys += 1;
            p.len += run.map_or(0, <[u8]>::len);
        }
        // Parts are distinct servers or replica sets, far fewer than u32::MAX.
        runs.push((part as u32, run));
    }
    for p in &mut parts {
        p.route = match route(topo, client, p.placement, write) {
            Ok(route) => route,
            // Nothing is sent for any part: a split write is refused whole.
            Err(e) => return Plan::Refuse(e),
        };
    }
    if let [only] = &parts[..] {
        return Plan::Route(only.route);
    }
    Plan::Split(Split {
        how,
        group,
        parts,
        runs,
    })
}

/// A keyless command any one server can answer (TIME, CONFIG GET, SCRIPT EXISTS, ...): the
/// first server in topology order that is up, so that every client gets the same server's
/// answer (CONFIG GET twice gives one answer) until that server goes down.
fn any_server<'t>(topo: &'t Topology) -> Plan<'static, 't> {
    let n = u16::try_from(topo.servers.len()).unwrap_or(u16::MAX);
    let first_up = (0..n).find(|&i| topo.is_up(i)).unwrap_or(0);
    Plan::Route(Route::One(first_up))
}

/// A keyless script call (EVAL with numkeys 0 and the like): clients are spread over the servers
/// by id, each client at its own server (the next one up when it is down), so that one client's
/// calls run in order on one server.
fn client_server<'t>(topo: &'t Topology, client: &ClientState) -> Plan<'static, 't> {
    let n = topo.servers.len().max(1);
    // Truncation is fine: only the remainder modulo the pool size matters.
    let start = client.id as usize % n;
    let server = (0..n)
        .map(|i| (start + i) % n)
        .find_map(|i| u16::try_from(i).ok().filter(|&i| topo.is_up(i)))
        .unwrap_or(u16::try_from(start).unwrap_or(0));
    Plan::Route(Route::One(server))
}

/// SCAN cursor [MATCH p] [COUNT n] [TYPE t]: one server at a time, in topology order.
fn scan<'t>(args: Args<'_>, topo: &'t Topology) -> Plan<'static, 't> {
    let Some(cursor) = args
        .get(1)
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return refuse(ErrorKind::Syntax, "invalid cursor");
    };
    if topo.servers.len() > 1 << SCAN_SHIFT {
        return refuse(
            ErrorKind::Refused,
            "keyway's SCAN cursor addresses at most 1024 servers; use KEYS on smaller pools or SCAN each server directly",
        );
    }
    let index = (cursor & ((1 << SCAN_SHIFT) - 1)) as usize;
    if index >= topo.servers.len() {
        return refuse(ErrorKind::Syntax, "invalid cursor");
    }
    Plan::Scan {
        server: index as u16,
        cursor: cursor >> SCAN_SHIFT,
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
