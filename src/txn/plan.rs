//! Two-phase plans: how a client's write becomes a transaction's parts. Pure: the planner
//! (`server::plan`) calls these with the command, its arguments and the replica sets of its
//! keys' slots, and gets a [`Plan`] for [`super::execute`], or the reason the write cannot be
//! staged.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{Part, Plan, ReplyShape, Step};
use crate::command::{CommandSpec, Flags, Merge, Traits};
use crate::error::{ErrorKind, ReplyError};
use crate::protocol::Args;

/// Most arguments of one staged command: scripts apply it with Lua's `unpack`, which fails past
/// about 8000 values (an error no `pcall` can catch).
pub const MAX_STAGED_ARGS: usize = 7000;

/// Why a write cannot be staged in a two-phase transaction, if it cannot.
pub fn not_stageable(spec: &CommandSpec) -> Option<ReplyError> {
    let why = if spec.flags.contains(Flags::NOSCRIPT) {
        "it cannot run inside a script"
    } else if spec.flags.contains(Flags::BLOCKING) {
        "it blocks"
    } else if spec.traits.contains(Traits::RANDOM) {
        "it picks members at random, so replicas would differ"
    } else {
        return None;
    };
    Some(ReplyError::new(
        ErrorKind::Refused,
        format!(
            "command '{}' is refused under write = two_phase: {why}",
            spec.name
        ),
    ))
}

/// A keyed write: the whole command staged on every replica of its slot (`set`, primary first).
/// `keys` are the positions of its keys in `args`.
///
/// # Errors
///
/// [`ErrorKind::Refused`] for a command that cannot run in a script, blocks, picks at random,
/// or has more than [`MAX_STAGED_ARGS`] arguments.
pub fn keyed(
    spec: &CommandSpec,
    args: Args<'_>,
    keys: &[usize],
    set: &[u16],
) -> Result<Plan, ReplyError> {
    if let Some(why) = not_stageable(spec) {
        return Err(why);
    }
    if args.len() > MAX_STAGED_ARGS {
        return Err(ReplyError::new(
            ErrorKind::Refused,
            format!(
                "command '{}' with {} arguments is refused under write = two_phase: a staged command may have at most {MAX_STAGED_ARGS} (split it)",
                spec.name,
                args.len()
            ),
        ));
    }
    let keys: Vec<Bytes> = keys.iter().filter_map(|&i| args.bytes(i)).collect();
    // Counters come back exact: their value is read back as a string (Lua numbers are doubles).
    let readback: Vec<Bytes> = match (args.bytes(1), args.bytes(2)) {
        (Some(key), _) if spec.traits.contains(Traits::READBACK_KEY) => {
            vec![Bytes::from_static(b"GET"), key]
        }
        (Some(key), Some(field)) if spec.traits.contains(Traits::READBACK_FIELD) => {
            vec![Bytes::from_static(b"HGET"), key, field]
        }
        _ => Vec::new(),
    };
    let reply = if readback.is_empty() {
        ReplyShape::Single
    } else {
        ReplyShape::Integer
    };
    let primary = set.first().copied().unwrap_or(0);
    let parts = set
        .iter()
        .map(|&server| {
            let part = Part {
                keys: keys.clone(),
                steps: vec![Step {
                    command: args.to_vec(),
                    readback: readback.clone(),
                    counts: server == primary,
                    index: 0,
                }],
            };
            (server, part)
        })
        .collect();
    Ok(Plan {
        parts,
        primary,
        reply,
    })
}

/// A MULTI/EXEC transaction under `write = "two_phase"`: the plans of its commands (each made
/// by [`keyed`], [`split`] or [`read`]) as one transaction, whose reply is EXEC's array.
pub fn transaction(commands: Vec<Plan>) -> Plan {
    let mut parts: BTreeMap<u16, Part> = BTreeMap::new();
    let mut primary = None;
    let mut shapes = Vec::with_capacity(commands.len());
    for (index, plan) in commands.into_iter().enumerate() {
        primary.get_or_insert(plan.primary);
        shapes.push(plan.reply);
        for (server, part) in plan.parts {
            let whole = parts.entry(server).or_default();
            whole.keys.extend(part.keys);
            whole
                .steps
                .extend(part.steps.into_iter().map(|s| Step { index, ..s }));
        }
    }
    Plan {
        parts,
        primary: primary.unwrap_or(0),
        reply: ReplyShape::Exec(shapes),
    }
}

/// A read inside a two-phase MULTI: staged on its slot's primary only, where it runs at commit,
/// after the transaction's earlier steps there, under the transaction's locks on its keys.
pub fn read(args: Args<'_>, keys: &[usize], set: &[u16]) -> Plan {
    let primary = set.first().copied().unwrap_or(0);
    let part = Part {
        keys: keys.iter().filter_map(|&i| args.bytes(i)).collect(),
        steps: vec![Step {
            command: args.to_vec(),
            readback: Vec::new(),
            counts: true,
            index: 0,
        }],
    };
    Plan {
        parts: BTreeMap::from([(primary, part)]),
        primary,
        reply: ReplyShape::Single,
    }
}

/// A split write (MSET, DEL, UNLINK): one transaction over the union of the keys' replica sets,
/// one staged step per key and replica. `group` arguments per key; `replica_set` gives a key's
/// replica set, primary first. MSET's parts are `SET`s answered `+OK`; the others' results are
/// summed.
pub fn split<'t>(
    how: Merge,
    args: Args<'_>,
    group: usize,
    replica_set: impl Fn(&[u8]) -> &'t [u16],
) -> Plan {
    let (step_name, reply) = match how {
        Merge::Ok => (Bytes::from_static(b"SET"), ReplyShape::Ok),
        _ => (args.bytes(0).unwrap_or_default(), ReplyShape::Sum),
    };
    let mut parts: BTreeMap<u16, Part> = BTreeMap::new();
    let mut primary = None;
    for at in (1..args.len()).step_by(group.max(1)) {
        let Some(key) = args.bytes(at) else { continue };
        let set = replica_set(&key);
        let key_primary = set.first().copied().unwrap_or(0);
        primary.get_or_insert(key_primary);
        for &server in set {
            let part = parts.entry(server).or_default();
            part.keys.push(key.clone());
            let mut command = vec![step_name.clone()];
            command.extend((at..at + group).filter_map(|i| args.bytes(i)));
            part.steps.push(Step {
                command,
                readback: Vec::new(),
                counts: server == key_primary,
                index: 0,
            });
        }
    }
    Plan {
        parts,
        primary: primary.unwrap_or(0),
        reply,
    }
}

/// A read of several keys over servers as one transaction, for a snapshot that validation could
/// not get (`server::dispatch`): `name key` for each key, staged on the server given with it,
/// where it runs at commit under the transaction's locks. The reply is EXEC's array of the
/// reads' replies, or with `sum` their sum (EXISTS, TOUCH).
pub fn locked_read(name: &Bytes, keys: &[(Bytes, u16)], sum: bool) -> Plan {
    let plans = keys
        .iter()
        .map(|(key, server)| Plan {
            parts: BTreeMap::from([(
                *server,
                Part {
                    keys: vec![key.clone()],
                    steps: vec![Step {
                        command: vec![name.clone(), key.clone()],
                        readback: Vec::new(),
                        counts: true,
                        index: 0,
                    }],
                },
            )]),
            primary: *server,
            reply: ReplyShape::Single,
        })
        .collect();
    let mut plan = transaction(plans);
    if sum {
        plan.reply = ReplyShape::Sum;
    }
    plan
}
