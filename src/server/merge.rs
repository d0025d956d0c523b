//! Merging the replies of several servers into the one reply a client expects. Pure functions
//! over reply frames: `dispatch` gathers the replies and calls these.
//!
//! A reply is a [`Reply`]: a server's frame (which may be a Redis error such as `-WRONGTYPE`,
//! forwarded as it came) or Keyway's own [`ReplyError`]. An error from any server becomes the
//! client's reply, since a partial answer presented as whole would be a lie.

use bytes::{Bytes, BytesMut};

use super::plan::SCAN_SHIFT;
use crate::command::Merge;
use crate::error::{ErrorKind, Reply, ReplyError};
use crate::protocol::{write_array_header, write_bulk, write_integer, write_simple, Value};
use crate::topology::Topology;

fn bad_reply(e: impl std::fmt::Display) -> ReplyError {
    ReplyError::new(
        ErrorKind::BadReply,
        format!("keyway: bad reply from server: {e}"),
    )
}

fn unexpected(v: &Value) -> Reply {
    Err(ReplyError::new(
        ErrorKind::BadReply,
        format!("keyway: unexpected reply from server: {v:?}"),
    ))
}

fn frame(build: impl FnOnce(&mut BytesMut)) -> Reply {
    let mut out = BytesMut::new();
    build(&mut out);
    Ok(out.freeze())
}

/// Each reply parsed; the first error (Keyway's, or a server's error frame as it came) is the
/// answer instead.
fn parse_all(replies: Vec<Reply>) -> Result<Vec<Value>, Reply> {
    let mut out = Vec::with_capacity(replies.len());
    for reply in replies {
        let frame = reply.map_err(Err)?;
        match Value::parse(&frame) {
            Ok(Value::Error(_)) => return Err(Ok(frame)),
            Ok(v) => out.push(v),
            Err(e) => return Err(Err(bad_reply(e))),
        }
    }
    Ok(out)
}

/// Merges the replies of a split multi-key command, one per part. For [`Merge::Array`],
/// `owner[k]` is the part (index into `replies`) that carried key number `k`, in the client's
/// order; the other merges do not look at it (it may be empty).
pub(crate) fn split(how: Merge, replies: Vec<Reply>, owner: &[u32]) -> Reply {
    if how == Merge::Ok {
        return all_ok(replies);
    }
    let values = match parse_all(replies) {
        Ok(v) => v,
        Err(e) => return e,
    };
    match how {
        Merge::Array => {
            // Each server answered its keys in the order they were sent: key k is the next
            // unread item of its sub-command's reply.
            let mut items = Vec::with_capacity(values.len());
            for (part, v) in values.into_iter().enumerate() {
                let Value::Array(xs) = v else {
                    return unexpected(&v);
                };
                let carried = owner.iter().filter(|&&p| p as usize == part).count();
                if xs.len() != carried {
                    return Err(ReplyError::new(
                        ErrorKind::BadReply,
                        "keyway: a server answered a different number of keys",
                    ));
                }
                items.push(xs.into_iter());
            }
            frame(|out| {
                write_array_header(out, owner.len());
                for &part in owner {
                    items
                        .get_mut(part as usize)
                        .and_then(Iterator::next)
                        .unwrap_or(Value::Nil)
                        .encode(out);
                }
            })
        }
        other => combine(other, values),
    }
}

/// `+OK` when every reply is `+OK` (MSET's parts): the first other reply otherwise, an error
/// as the server sent it.
fn all_ok(replies: Vec<Reply>) -> Reply {
    const OK: &[u8] = b"+OK\r\n";
    for reply in replies {
        let frame = reply?;
        if frame.as_ref() == OK {
            continue;
        }
        return match Value::parse(&frame) {
            Ok(Value::Error(_)) => Ok(frame),
            Ok(v) => unexpected(&v),
            Err(e) => Err(bad_reply(e)),
        };
    }
    Ok(Bytes::from_static(OK))
}

/// Merges the replies of a command sent to every server, in topology order.
///
/// With `replicas > 1` every key is stored on several servers, so listings keep a key only
/// from the server that [`Topology::owner`] names for its slot (each key once), and DBSIZE
/// divides the sum by the replica count (exact while the replicas hold the same keys).
pub(crate) fn all(how: Merge, replies: Vec<Reply>, topo: &Topology) -> Reply {
    if how == Merge::AnyKilled {
        return killed(replies);
    }
    let mut values = match parse_all(replies) {
        Ok(values) => values,
        Err(e) => return e,
    };
    if how == Merge::Concat {
        // Keyway's own bookkeeping (two-phase locks and intents) is not the client's data.
        for v in values.iter_mut() {
            if let Value::Array(keys) = v {
                keys.retain(|k| !is_internal(k));
            }
        }
    }
    if topo.replicas > 1 {
        match how {
            Merge::Concat => {
                for (index, v) in values.iter_mut().enumerate() {
                    if let Value::Array(keys) = v {
                        keys.retain(|k| owned_here(topo, k, index));
                    }
                }
            }
            Merge::SumInt => {
                let merged = combine(how, values)?;
                return match Value::parse(&merged) {
                    Ok(Value::Integer(n)) => {
                        frame(|out| write_integer(out, n / topo.replicas as i64))
                    }
                    _ => Ok(merged),
                };
            }
            _ => {}
        }
    }
    combine(how, values)
}

/// SCRIPT KILL, FUNCTION KILL over every server ([`Merge::AnyKilled`]): `+OK` if a server
/// killed a script; else the first other answer that is not `-NOTBUSY` (`-UNKILLABLE`, `-BUSY`
/// from a server running the other kind of script, a server that could not be reached); else
/// the servers' `-NOTBUSY`, as redis-server answers when nothing runs.
pub(crate) fn killed(replies: Vec<Reply>) -> Reply {
    let mut notbusy = None;
    let mut other = None;
    for reply in replies {
        match &reply {
            Ok(frame) if frame.as_ref() == b"+OK\r\n" => return reply,
            Ok(frame) if frame.starts_with(b"-NOTBUSY") => {
                notbusy.get_or_insert(reply);
            }
            _ => {
                other.get_or_insert(reply);
            }
        }
    }
    other
        .or(notbusy)
        .unwrap_or_else(|| Err(ReplyError::new(ErrorKind::Internal, "keyway: no servers")))
}

/// Whether a listed key is Keyway's own (`__keyway:*`: two-phase locks, intents, decisions).
fn is_internal(k: &Value) -> bool {
    matches!(k, Value::Bulk(key) if key.starts_with(crate::txn::RESERVED_PREFIX))
}

/// Whether server `index` is the one that lists key `k` (see [`Topology::owner`]).
fn owned_here(topo: &Topology, k: &Value, index: usize) -> bool {
    match k {
        Value::Bulk(key) => {
            let slot = crate::routing::key_slot(key, topo.hash_tag);
            usize::from(topo.owner(slot)) == index
        }
        _ => true,
    }
}

fn combine(how: Merge, values: Vec<Value>) -> Reply {
    match how {
        Merge::SumInt => {
            let mut sum: i64 = 0;
            for v in &values {
                match v {
                    Value::Integer(n) => sum = sum.saturating_add(*n),
                    other => return unexpected(other),
                }
            }
            frame(|out| write_integer(out, sum))
        }
        // AnyKilled only gets here without error replies ([`killed`] handles those).
        Merge::Ok | Merge::AllOk | Merge::AnyKilled => {
            for v in &values {
                if !matches!(v, Value::Simple(s) if s.as_ref() == b"OK") {
                    return unexpected(v);
                }
            }
            frame(|out| write_simple(out, "OK"))
        }
        Merge::Concat | Merge::Array => {
            let mut items = Vec::new();
            for v in values {
                match v {
                    Value::Array(xs) => items.extend(xs),
                    other => return unexpected(&other),
                }
            }
            frame(|out| Value::Array(items).encode(out))
        }
        Merge::LogicalAnd => {
            let mut acc: Option<Vec<Value>> = None;
            for v in values {
                let Value::Array(xs) = v else {
                    return unexpected(&v);
                };
                acc = Some(match acc {
                    None => xs,
                    Some(prev) => {
                        if prev.len() != xs.len() {
                            return Err(ReplyError::new(
                                ErrorKind::BadReply,
                                "keyway: servers answered arrays of different lengths",
                            ));
                        }
                        prev.into_iter()
                            .zip(xs)
                            .map(|(a, b)| match (a, b) {
                                (Value::Integer(x), Value::Integer(y)) => {
                                    Value::Integer(i64::from(x != 0 && y != 0))
                                }
                                (a, _) => a,
                            })
                            .collect()
                    }
                });
            }
            frame(|out| Value::Array(acc.unwrap_or_default()).encode(out))
        }
        Merge::SameReply => {
            let mut it = values.into_iter();
            let Some(first) = it.next() else {
                return Err(ReplyError::new(ErrorKind::Internal, "keyway: no servers"));
            };
            if it.any(|v| v != first) {
                return Err(ReplyError::new(
                    ErrorKind::BadReply,
                    "keyway: servers disagree on the reply",
                ));
            }
            frame(|out| first.encode(out))
        }
    }
}

/// SCAN: rewrites server `index`'s reply and cursor into Keyway's (server cursor and server
/// index), moving on to the next server when one is done.
pub(crate) fn scan(reply: Reply, index: usize, topo: &Topology) -> Reply {
    let raw = reply?;
    let value = match Value::parse(&raw) {
        Ok(Value::Error(_)) => return Ok(raw),
        Ok(v) => v,
        Err(e) => return Err(bad_reply(e)),
    };
    let Value::Array(mut parts) = value else {
        return unexpected(&value);
    };
    let (Some(mut keys), Some(Value::Bulk(cursor))) = (parts.pop(), parts.pop()) else {
        return Err(ReplyError::new(
            ErrorKind::BadReply,
            "keyway: unexpected SCAN reply from server",
        ));
    };
    if let Value::Array(ks) = &mut keys {
        ks.retain(|k| !is_internal(k));
        if topo.replicas > 1 {
            ks.retain(|k| owned_here(topo, k, index));
        }
    }
    let Some(server_cursor) = std::str::from_utf8(&cursor)
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return Err(ReplyError::new(
            ErrorKind::BadReply,
            "keyway: unexpected SCAN cursor from server",
        ));
    };
    let next: u64 = if server_cursor == 0 {
        if index + 1 < topo.servers.len() {
            (index + 1) as u64
        } else {
            0
        }
    } else if server_cursor >> (64 - SCAN_SHIFT) != 0 {
        return Err(ReplyError::new(
            ErrorKind::BadReply,
            "keyway: server SCAN cursor too large to combine",
        ));
    } else {
        (server_cursor << SCAN_SHIFT) | index as u64
    };
    frame(|out| {
        write_array_header(out, 2);
        write_bulk(out, next.to_string().as_bytes());
        keys.encode(out);
    })
}

/// Why a replica of a fan-out write did not acknowledge it: what is known of the write there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Missed {
    /// The replica answered an error (`-WRONGTYPE ...`).
    Refused(Bytes),
    /// The write was not sent to it (down by the health checks, unreachable): not applied.
    NotSent(String),
    /// Sent, and no reply came (a timeout, a lost connection): it may have applied the write.
    Unknown(String),
}

/// The answer to a write sent to `total` replicas, of which `acked` acknowledged (their replies)
/// and `failed` did not (replica name and what is known there), when `need` acknowledgements
/// were needed. When too few acknowledged, the error says how many did and, for each other
/// replica, what is known: it answered an error; the write was not sent to it; or its outcome
/// there is unknown (it did not answer in time: it may have applied the write). It says that
/// replicas may differ whenever one may hold the write and another not.
pub(crate) fn fan_out(
    acked: Vec<Bytes>,
    failed: Vec<(&str, Missed)>,
    total: usize,
    need: usize,
) -> Reply {
    let taken = acked.len();
    if taken >= need {
        if let Some(first) = acked.into_iter().next() {
            return Ok(first);
        }
        return Err(ReplyError::new(ErrorKind::Internal, "keyway: no replicas"));
    }
    // Every replica refused the same way (WRONGTYPE on all of them): that is the answer.
    if taken == 0 && failed.len() == total {
        if let Some((_, Missed::Refused(first))) = failed.first() {
            if failed
                .iter()
                .all(|(_, f)| matches!(f, Missed::Refused(r) if r == first))
            {
                return Ok(first.clone());
            }
        }
    }
    let mut text =
        format!("keyway: write acknowledged by {taken} of {total} replicas ({need} needed)");
    let mut differ = taken > 0;
    for (name, missed) in &failed {
        match missed {
            Missed::Refused(frame) => {
                let said = String::from_utf8_lossy(frame.get(1..).unwrap_or_default());
                text.push_str(&format!("; server '{name}' answered: {}", said.trim_end()));
            }
            Missed::NotSent(why) => {
                text.push_str(&format!("; not sent to server '{name}' ({why})"));
            }
            Missed::Unknown(why) => {
                differ = true;
                text.push_str(&format!(
                    "; outcome unknown on server '{name}' ({why}): it may have applied the write"
                ));
            }
        }
    }
    if differ {
        text.push_str("; replicas may differ until the key is written again");
    }
    Err(ReplyError::new(ErrorKind::Partial, text))
}

/// Whether a reply failed: Keyway's error or a server's error frame.
pub(crate) fn is_failure(reply: &Reply) -> bool {
    match reply {
        Ok(frame) => frame.first() == Some(&b'-'),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &'static [u8]) -> Reply {
        Ok(Bytes::from_static(s))
    }

    #[test]
    fn mget_parts_are_put_back_in_key_order() {
        // Keys 0 and 2 went to part 0, key 1 to part 1.
        let merged = split(
            Merge::Array,
            vec![ok(b"*2\r\n$1\r\na\r\n$1\r\nc\r\n"), ok(b"*1\r\n$-1\r\n")],
            &[0, 1, 0],
        );
        assert_eq!(
            merged.unwrap().as_ref(),
            b"*3\r\n$1\r\na\r\n$-1\r\n$1\r\nc\r\n"
        );
    }

    #[test]
    fn a_part_that_answers_fewer_keys_is_a_bad_reply() {
        let merged = split(Merge::Array, vec![ok(b"*1\r\n$1\r\na\r\n")], &[0, 0]);
        assert_eq!(merged.unwrap_err().kind(), ErrorKind::BadReply);
    }

    #[test]
    fn a_kill_is_ok_if_one_server_killed_else_the_first_other_answer_else_notbusy() {
        let notbusy = || ok(b"-NOTBUSY No scripts in execution right now.\r\n");
        let unkillable = || ok(b"-UNKILLABLE Sorry the script already executed write commands\r\n");
        let down = || {
            Err(ReplyError::new(
                ErrorKind::Unavailable,
                "server 's1' is unavailable",
            ))
        };
        let killed_one = killed(vec![notbusy(), down(), ok(b"+OK\r\n"), unkillable()]);
        assert_eq!(&killed_one.unwrap()[..], b"+OK\r\n");
        let none = killed(vec![notbusy(), notbusy()]);
        assert_eq!(none.unwrap(), notbusy().unwrap());
        let stuck = killed(vec![notbusy(), unkillable(), down()]);
        assert_eq!(stuck.unwrap(), unkillable().unwrap());
        assert!(killed(vec![notbusy(), down()]).is_err());
        assert!(killed(vec![]).is_err());
    }

    #[test]
    fn counts_are_summed_and_the_first_error_wins() {
        let merged = split(Merge::SumInt, vec![ok(b":2\r\n"), ok(b":3\r\n")], &[]);
        assert_eq!(merged.unwrap().as_ref(), b":5\r\n");
        let merged = split(
            Merge::SumInt,
            vec![ok(b":2\r\n"), ok(b"-WRONGTYPE no\r\n")],
            &[],
        );
        assert_eq!(merged.unwrap().as_ref(), b"-WRONGTYPE no\r\n");
        let down = ReplyError::new(ErrorKind::Unavailable, "server 's1' is unavailable");
        let merged = split(Merge::Ok, vec![ok(b"+OK\r\n"), Err(down.clone())], &[]);
        assert_eq!(merged, Err(down));
    }

    #[test]
    fn a_write_on_too_few_replicas_says_how_many_took_it_and_what_is_known_elsewhere() {
        let failed = vec![(
            "b",
            Missed::Unknown("did not answer within 500ms".to_string()),
        )];
        let e = fan_out(vec![Bytes::from_static(b"+OK\r\n")], failed, 2, 2).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Partial);
        assert_eq!(
            e.message(),
            "keyway: write acknowledged by 1 of 2 replicas (2 needed); outcome unknown on server 'b' (did not answer within 500ms): it may have applied the write; replicas may differ until the key is written again"
        );
        // Nothing acknowledged, one refused, one never sent: nothing differs.
        let failed = vec![
            (
                "a",
                ok(b"-OOM command not allowed\r\n")
                    .map(Missed::Refused)
                    .unwrap(),
            ),
            (
                "b",
                Missed::NotSent("down by the health checks".to_string()),
            ),
        ];
        let e = fan_out(Vec::new(), failed, 2, 2).unwrap_err();
        assert_eq!(
            e.message(),
            "keyway: write acknowledged by 0 of 2 replicas (2 needed); server 'a' answered: OOM command not allowed; not sent to server 'b' (down by the health checks)"
        );
        let same = vec![
            (
                "a",
                Missed::Refused(Bytes::from_static(b"-WRONGTYPE x\r\n")),
            ),
            (
                "b",
                Missed::Refused(Bytes::from_static(b"-WRONGTYPE x\r\n")),
            ),
        ];
        assert_eq!(fan_out(Vec::new(), same, 2, 2), ok(b"-WRONGTYPE x\r\n"));
        let quorum = fan_out(
            vec![Bytes::from_static(b":1\r\n"), Bytes::from_static(b":1\r\n")],
            vec![(
                "c",
                Missed::NotSent("down by the health checks".to_string()),
            )],
            3,
            2,
        );
        assert_eq!(quorum, ok(b":1\r\n"));
    }
}
