//! MULTI/EXEC: how a transaction is queued and where it runs. Pure, as the planner is.
//!
//! Keyway queues a client's transaction itself, checking each command as redis-server does while
//! queuing (unknown commands, arity, and Keyway's own refusals mark the transaction dirty, and
//! EXEC then answers `EXECABORT`), plus the one rule of a sharding proxy: the keys of a
//! transaction share one slot, or the command that breaks it gets `CROSSSLOT`, as Redis Cluster
//! answers. At EXEC the whole transaction (`MULTI`, the commands, `EXEC`) is written to the
//! slot's server at once, on the client's pipelined connection: nothing of another client comes
//! between, and the server runs it atomically. `PUBLISH`/`SPUBLISH` are queued too: a channel
//! lives on the server of its slot, so its channel counts as the command's key for that rule,
//! and the transaction runs where that slot's writes go (job queues such as Celery's result
//! backend store a result and announce it in one transaction). With `replicas > 1` and
//! `write = all|quorum` a
//! transaction that writes runs on each replica of its slot and the reply follows the write
//! policy. Under `write = "two_phase"`, a transaction's keys may span servers: its commands are
//! staged as one two-phase transaction (`txn::plan::transaction`), atomic across servers and
//! replicas.

use bytes::{Bytes, BytesMut};

use super::client::Multi;
use crate::command::{self, CommandSpec, Kind, Local, PubSub, Tx};
use crate::config::WriteMode;
use crate::error::{ErrorKind, ReplyError};
use crate::protocol::{Args, Request};
use crate::routing::{key_slot, Slot};
use crate::topology::Topology;
use crate::txn;

/// Most bytes a transaction may queue. A client may not make Keyway hold more for it.
pub(crate) const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// A step of a transaction, as the planner decides it.
#[derive(Debug)]
pub(crate) enum Step {
    /// `MULTI`: start queuing.
    Begin,
    /// Queue the request; its keys (or a PUBLISH's channel) are in `slot` (none for a keyless
    /// command). `write`: it changes the server's state, so the transaction goes where the
    /// slot's writes go. A PUBLISH counts as one: its channel is subscribed on the slot's
    /// primary, never on a read replica.
    Queue { slot: Option<Slot>, write: bool },
    /// Refuse the request and mark the transaction dirty.
    Dirty(ReplyError),
    /// `EXEC`.
    Exec,
    /// `DISCARD`.
    Discard,
    /// `WATCH` of keys of `slot`, on a connection held for the client.
    Watch { slot: Slot },
    /// `UNWATCH` outside a transaction (or DISCARD's and EXEC's end): the held connection goes.
    Unwatch,
}

fn err(kind: ErrorKind, message: &'static str) -> ReplyError {
    ReplyError::new(kind, message)
}

/// A transaction command (MULTI, EXEC, DISCARD, WATCH, UNWATCH), with redis-server's errors.
/// `watching` is the slot of the keys the client watches, if it does; `keys` is scratch space.
pub(crate) fn control(
    tx: Tx,
    args: Args<'_>,
    topo: &Topology,
    multi: Option<&Multi>,
    watching: Option<Slot>,
    keys: &mut Vec<usize>,
) -> Result<Step, ReplyError> {
    match (tx, multi.is_some()) {
        (Tx::Multi, true) => Err(err(ErrorKind::Transaction, "MULTI calls can not be nested")),
        (Tx::Multi, false) => Ok(Step::Begin),
        (Tx::Exec, true) => Ok(Step::Exec),
        (Tx::Exec, false) => Err(err(ErrorKind::Transaction, "EXEC without MULTI")),
        (Tx::Discard, true) => Ok(Step::Discard),
        (Tx::Discard, false) => Err(err(ErrorKind::Transaction, "DISCARD without MULTI")),
        (Tx::Watch, true) => Err(err(
            ErrorKind::Transaction,
            "WATCH inside MULTI is not allowed",
        )),
        (Tx::Watch, false) => watch(args, topo, watching, keys),
        // Queued as any keyless command: the server answers OK in EXEC's array.
        (Tx::Unwatch, true) => Ok(Step::Queue {
            slot: None,
            write: false,
        }),
        (Tx::Unwatch, false) => Ok(Step::Unwatch),
    }
}

/// `WATCH key..`: keys of one slot (the slot of keys watched before, if any).
fn watch(
    args: Args<'_>,
    topo: &Topology,
    watching: Option<Slot>,
    keys: &mut Vec<usize>,
) -> Result<Step, ReplyError> {
    if topo.write == WriteMode::TwoPhase {
        return Err(err(
            ErrorKind::Refused,
            "WATCH is not supported under write = two_phase: a two-phase transaction already \
             applies on every replica or none, under locks on its keys",
        ));
    }
    let spec = command::lookup("watch")
        .ok_or_else(|| err(ErrorKind::Internal, "keyway: no WATCH in the command table"))?;
    keys.clear();
    command::key_indexes(spec, args, keys).map_err(ReplyError::from)?;
    let mut slot = watching;
    for &i in keys.iter() {
        let Some(key) = args.get(i) else { continue };
        if key.starts_with(txn::RESERVED_PREFIX) {
            return Err(err(ErrorKind::Refused, super::plan::RESERVED));
        }
        let s = key_slot(key, topo.hash_tag);
        match slot {
            Some(first) if first != s => {
                return Err(err(ErrorKind::CrossSlot, super::plan::CROSSSLOT))
            }
            _ => slot = Some(s),
        }
    }
    slot.map(|slot| Step::Watch { slot })
        .ok_or_else(|| err(ErrorKind::Internal, "keyway: WATCH without keys"))
}

/// A command sent while a transaction is being queued: queue it, or refuse it (marking the
/// transaction dirty). `keys` is scratch space.
pub(crate) fn queue(
    spec: &'static CommandSpec,
    request: &Request,
    topo: &Topology,
    multi: &Multi,
    keys: &mut Vec<usize>,
) -> Step {
    if multi.frame.len().saturating_add(request.frame().len()) > MAX_QUEUED_BYTES {
        return Step::Dirty(ReplyError::new(
            ErrorKind::Refused,
            format!(
                "keyway: a transaction may queue at most {} MiB of commands",
                MAX_QUEUED_BYTES >> 20
            ),
        ));
    }
    match check(spec, request.args(), topo, multi, keys) {
        Ok(step) => step,
        Err(e) => Step::Dirty(e),
    }
}

const NO_MULTI: &str = "Command not allowed inside a transaction";

/// The error for a command the table refuses, sent inside a transaction: Redis's own refusal of
/// a `no-multi` command (SAVE, SYNC, SHUTDOWN) comes before Keyway's, as redis-server gives it.
pub(crate) fn refusal(e: command::CommandError) -> ReplyError {
    match e {
        command::CommandError::Refused { name, .. }
            if command::lookup(name)
                .is_some_and(|s| s.flags.contains(command::Flags::NO_MULTI)) =>
        {
            err(ErrorKind::Transaction, NO_MULTI)
        }
        e => e.into(),
    }
}

fn check(
    spec: &'static CommandSpec,
    args: Args<'_>,
    topo: &Topology,
    multi: &Multi,
    keys: &mut Vec<usize>,
) -> Result<Step, ReplyError> {
    let two_phase = topo.write == WriteMode::TwoPhase;
    let write = spec.is_write();
    match spec.kind {
        // The server answers these as Keyway would.
        Kind::Local(Local::Ping | Local::Echo) | Kind::AnyServer if !two_phase => {
            return Ok(Step::Queue { slot: None, write })
        }
        Kind::Local(_) | Kind::AnyServer => {
            return Err(ReplyError::new(
                ErrorKind::Refused,
                format!(
                    "keyway cannot queue '{}' in a transaction: it is not about keys{}",
                    spec.name,
                    if two_phase {
                        " (write = two_phase)"
                    } else {
                        ""
                    }
                ),
            ))
        }
        Kind::PubSub(PubSub::Publish) if !two_phase => return publish(spec, args, topo, multi),
        Kind::PubSub(PubSub::Publish) => {
            return Err(ReplyError::new(
                ErrorKind::Refused,
                format!(
                    "keyway cannot queue '{}' in a transaction under write = two_phase: a two-phase transaction applies on every replica, and a message must be published once",
                    spec.name
                ),
            ))
        }
        Kind::PubSub(_) => {
            return Err(ReplyError::new(
                ErrorKind::Refused,
                format!(
                    "keyway cannot queue '{}' in a transaction: publish/subscribe runs outside transactions through keyway",
                    spec.name
                ),
            ))
        }
        Kind::AllServers(_) | Kind::RandomKey | Kind::Scan => {
            return Err(ReplyError::new(
                ErrorKind::Refused,
                format!(
                    "keyway cannot queue '{}' in a transaction: it concerns every server",
                    spec.name
                ),
            ))
        }
        Kind::Refused(reason) => {
            return Err(command::CommandError::Refused {
                name: spec.name,
                reason,
            }
            .into())
        }
        Kind::Container => {
            return Err(command::CommandError::Arity { name: spec.name }.into());
        }
        Kind::Transaction(_) => {
            return Err(err(
                ErrorKind::Internal,
                "keyway: transaction command queued",
            ));
        }
        Kind::Keyed | Kind::Split { .. } => {}
    }
    if two_phase && write {
        if let Some(e) = txn::plan::not_stageable(spec) {
            return Err(e);
        }
    }
    keys.clear();
    command::key_indexes(spec, args, keys).map_err(ReplyError::from)?;
    // Blocking commands are queued as any other: inside EXEC the server runs them without
    // blocking, as redis-server does.
    let mut slot = multi.slot;
    for &i in keys.iter() {
        let Some(key) = args.get(i) else { continue };
        if key.starts_with(txn::RESERVED_PREFIX) {
            return Err(err(ErrorKind::Refused, super::plan::RESERVED));
        }
        let s = key_slot(key, topo.hash_tag);
        match slot {
            // Under two-phase, keys may be anywhere; each command's own keys still share one
            // slot unless the command is split (MSET, DEL, ...).
            Some(first) if first != s && !two_phase => {
                return Err(err(ErrorKind::CrossSlot, super::plan::CROSSSLOT))
            }
            _ => slot = Some(s),
        }
    }
    if two_phase && (matches!(spec.kind, Kind::Keyed) || !write) {
        let mut own = keys.iter().filter_map(|&i| args.get(i));
        if let Some(first) = own.next() {
            let s = key_slot(first, topo.hash_tag);
            if own.any(|k| key_slot(k, topo.hash_tag) != s) {
                return Err(err(ErrorKind::CrossSlot, super::plan::CROSSSLOT));
            }
        }
    }
    Ok(Step::Queue { slot, write })
}

/// `PUBLISH channel message` or `SPUBLISH shardchannel message` in a transaction: the channel
/// takes the place of a key. It must share the transaction's slot (else `CROSSSLOT`), so that
/// the message is published on the server where Keyway subscribes to that channel.
fn publish(
    spec: &'static CommandSpec,
    args: Args<'_>,
    topo: &Topology,
    multi: &Multi,
) -> Result<Step, ReplyError> {
    let channel = args
        .get(1)
        .ok_or(command::CommandError::Arity { name: spec.name })?;
    let slot = key_slot(channel, topo.hash_tag);
    match multi.slot {
        Some(first) if first != slot => Err(err(ErrorKind::CrossSlot, super::plan::CROSSSLOT)),
        _ => Ok(Step::Queue {
            slot: Some(slot),
            write: true,
        }),
    }
}

/// `MULTI`, as the first bytes of a transaction's frame.
const MULTI: &[u8] = b"*1\r\n$5\r\nMULTI\r\n";
/// `EXEC`, as its last.
const EXEC: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";

/// Appends a queued command's frame to a transaction's bytes, after `MULTI` for the first.
pub(crate) fn push(m: &mut Multi, request: &Request) {
    if m.frame.is_empty() {
        m.frame
            .reserve(MULTI.len() + request.frame().len() * 4 + EXEC.len());
        m.frame.extend_from_slice(MULTI);
    }
    m.frame.extend_from_slice(request.frame());
    m.count += 1;
}

/// The bytes that run a transaction on one server: `MULTI`, the queued frames, `EXEC`. Its
/// replies are `+OK`, one `+QUEUED` per command, then EXEC's (the client's reply).
pub(crate) fn exec_frame(mut frame: BytesMut) -> Bytes {
    frame.extend_from_slice(EXEC);
    frame.freeze()
}

/// The queued commands, decoded again from a transaction's bytes (for the two-phase plan).
/// They were decoded once already under `limits`, so this fails only on a bug.
pub(crate) fn queued(
    frame: &[u8],
    limits: crate::protocol::Limits,
) -> Result<Vec<Request>, ReplyError> {
    let mut buf = BytesMut::from(frame.get(MULTI.len()..).unwrap_or_default());
    let mut decoder = crate::protocol::RequestDecoder::new(limits);
    let mut out = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(request)) => out.push(request),
            Ok(None) if buf.is_empty() => return Ok(out),
            Ok(None) | Err(_) => {
                return Err(err(
                    ErrorKind::Internal,
                    "keyway: internal error: a queued command could not be read back",
                ))
            }
        }
    }
}

/// A transaction under `write = "two_phase"`: each queued command's plan, as one two-phase
/// transaction. `None` when it writes nothing (it then runs as a plain MULTI/EXEC).
pub(crate) fn two_phase_plan(
    queued: &[Request],
    topo: &Topology,
) -> Option<Result<txn::Plan, ReplyError>> {
    let mut plans = Vec::with_capacity(queued.len());
    let mut writes = false;
    let mut keys = Vec::new();
    for request in queued {
        let args = request.args();
        let spec = match command::resolve(args) {
            Ok(spec) => spec,
            Err(e) => return Some(Err(e.into())),
        };
        keys.clear();
        if let Err(e) = command::key_indexes(spec, args, &mut keys) {
            return Some(Err(e.into()));
        }
        let slot_of = |key: &[u8]| key_slot(key, topo.hash_tag);
        let plan = match spec.kind {
            Kind::Split { merge, group } if spec.is_write() => {
                writes = true;
                txn::plan::split(merge, args, group, |k| topo.replica_set(slot_of(k)))
            }
            _ => {
                let Some(first) = keys.first().and_then(|&i| args.get(i)) else {
                    return Some(Err(err(
                        ErrorKind::Refused,
                        "keyway cannot run a keyless command in a two-phase transaction",
                    )));
                };
                let set = topo.replica_set(slot_of(first));
                if spec.is_write() {
                    writes = true;
                    let counted = super::plan::counted_first(topo, slot_of(first));
                    match txn::plan::keyed(spec, args, &keys, &counted) {
                        Ok(plan) => plan,
                        Err(e) => return Some(Err(e)),
                    }
                } else {
                    txn::plan::read(args, &keys, set)
                }
            }
        };
        plans.push(plan);
    }
    writes.then(|| Ok(txn::plan::transaction(plans)))
}
