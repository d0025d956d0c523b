//! Merging the replies of several servers into the one reply a client expects.
//!
//! Most functions here are the body of a `Pending::Merge` future: it awaits the sub-replies (all
//! already sent) and builds the merged frame; [`split_frames`] merges the parts of a split
//! command once a `Pending::Gather` has them all. An error from any server becomes the client's
//! reply, since a partial answer presented as whole would be a lie.

use std::future::poll_fn;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::plan::SCAN_SHIFT;
use super::session::{error_bytes, reply_bytes, Pending};
use crate::command::Merge;
use crate::protocol::{write_array_header, write_bulk, write_integer, write_simple, Value};
use crate::topology::Topology;

async fn resolve(mut p: Pending) -> Bytes {
    poll_fn(|cx| p.poll_bytes(cx)).await
}

async fn values(replies: Vec<Pending>) -> Result<Vec<Value>, Bytes> {
    let mut frames = Vec::with_capacity(replies.len());
    for p in replies {
        let frame = resolve(p).await;
        // The first error is the answer: no need to wait for the rest.
        if frame.first() == Some(&b'-') {
            return Err(frame);
        }
        frames.push(frame);
    }
    parse_all(frames)
}

/// Each frame parsed; the first error reply (or unparsable frame) is the answer instead.
fn parse_all(frames: Vec<Bytes>) -> Result<Vec<Value>, Bytes> {
    let mut out = Vec::with_capacity(frames.len());
    for frame in frames {
        match Value::parse(&frame) {
            Ok(Value::Error(_)) => return Err(frame),
            Ok(v) => out.push(v),
            Err(e) => return Err(error_bytes(&format!("keyway: bad reply from server: {e}"))),
        }
    }
    Ok(out)
}

fn unexpected(v: &Value) -> Bytes {
    error_bytes(&format!("keyway: unexpected reply from server: {v:?}"))
}

fn frame(build: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::new();
    build(&mut out);
    out.freeze()
}

/// Merges the replies of a split multi-key command, awaited in turn (parts sent to replica
/// sets, whose write mode may fan each out). See [`split_frames`].
pub(crate) async fn split(how: Merge, replies: Vec<Pending>, owner: Vec<u32>) -> Bytes {
    let mut frames = Vec::with_capacity(replies.len());
    for p in replies {
        frames.push(resolve(p).await);
    }
    split_frames(how, frames, &owner)
}

/// Merges the replies of a split multi-key command, one frame per part. For [`Merge::Array`],
/// `owner[k]` is the part (index into `frames`) that carried key number `k`, in the client's
/// order; the other merges do not look at it (it may be empty).
pub(crate) fn split_frames(how: Merge, frames: Vec<Bytes>, owner: &[u32]) -> Bytes {
    if how == Merge::Ok {
        return all_ok(frames);
    }
    let values = match parse_all(frames) {
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
                    return error_bytes("keyway: a server answered a different number of keys");
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
fn all_ok(frames: Vec<Bytes>) -> Bytes {
    const OK: &[u8] = b"+OK\r\n";
    match frames.into_iter().find(|f| f.as_ref() != OK) {
        None => Bytes::from_static(OK),
        Some(frame) => match Value::parse(&frame) {
            Ok(Value::Error(_)) => frame,
            Ok(v) => unexpected(&v),
            Err(e) => error_bytes(&format!("keyway: bad reply from server: {e}")),
        },
    }
}

/// Merges the replies of a command sent to every server.
///
/// With `replicas > 1` every key is stored on several servers, so listings keep a key only
/// from the server that [`Topology::owner`] names for its slot (each key once), and DBSIZE
/// divides the sum by the replica count (exact while the replicas hold the same keys).
pub(crate) async fn all(how: Merge, replies: Vec<Pending>, topo: Arc<Topology>) -> Bytes {
    let mut values = match values(replies).await {
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
                        keys.retain(|k| owned_here(&topo, k, index));
                    }
                }
            }
            Merge::SumInt => {
                let merged = combine(how, values);
                return match Value::parse(&merged) {
                    Ok(Value::Integer(n)) => {
                        frame(|out| write_integer(out, n / topo.replicas as i64))
                    }
                    _ => merged,
                };
            }
            _ => {}
        }
    }
    combine(how, values)
}

/// Whether a listed key is Keyway's own (`__keyway:*`: two-phase locks, intents, decisions).
fn is_internal(k: &Value) -> bool {
    matches!(k, Value::Bulk(key) if key.starts_with(b"__keyway:"))
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

fn combine(how: Merge, values: Vec<Value>) -> Bytes {
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
        Merge::Ok | Merge::AllOk => {
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
                            return error_bytes(
                                "keyway: servers answered arrays of different lengths",
                            );
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
                return error_bytes("keyway: no servers");
            };
            if it.any(|v| v != first) {
                return error_bytes("keyway: servers disagree on the reply");
            }
            frame(|out| first.encode(out))
        }
    }
}

/// RANDOMKEY: starting at `start`, the first server that has any key answers.
pub(crate) async fn random_key(
    topo: Arc<Topology>,
    start: usize,
    pick: usize,
    frame: Bytes,
) -> Bytes {
    let n = topo.servers.len();
    let mut last = Bytes::new();
    for i in 0..n {
        let Some(server) = topo.servers.get((start + i) % n) else {
            break;
        };
        let reply = server.pool.send(pick, frame.clone()).await;
        last = reply_bytes(reply);
        // `$-1`: this server is empty; anything else (a key or an error) is the answer.
        if last.as_ref() != b"$-1\r\n" {
            return last;
        }
    }
    if last.is_empty() {
        return error_bytes("keyway: no servers");
    }
    last
}

/// SCAN: rewrites the server's cursor into Keyway's (server cursor and server index), moving on
/// to the next server when one is done.
pub(crate) async fn scan(reply: Pending, index: usize, topo: Arc<Topology>) -> Bytes {
    let servers = topo.servers.len();
    let raw = resolve(reply).await;
    let value = match Value::parse(&raw) {
        Ok(Value::Error(_)) => return raw,
        Ok(v) => v,
        Err(e) => return error_bytes(&format!("keyway: bad reply from server: {e}")),
    };
    let Value::Array(mut parts) = value else {
        return unexpected(&value);
    };
    let (Some(mut keys), Some(Value::Bulk(cursor))) = (parts.pop(), parts.pop()) else {
        return error_bytes("keyway: unexpected SCAN reply from server");
    };
    if let Value::Array(ks) = &mut keys {
        ks.retain(|k| !is_internal(k));
        if topo.replicas > 1 {
            ks.retain(|k| owned_here(&topo, k, index));
        }
    }
    let Some(server_cursor) = std::str::from_utf8(&cursor)
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return error_bytes("keyway: unexpected SCAN cursor from server");
    };
    let next: u64 = if server_cursor == 0 {
        if index + 1 < servers {
            (index + 1) as u64
        } else {
            0
        }
    } else if server_cursor >> (64 - SCAN_SHIFT) != 0 {
        return error_bytes("keyway: server SCAN cursor too large to combine");
    } else {
        (server_cursor << SCAN_SHIFT) | index as u64
    };
    frame(|out| {
        write_array_header(out, 2);
        write_bulk(out, next.to_string().as_bytes());
        keys.encode(out);
    })
}

/// A read retried once on another replica when the first failed on a connection error (the
/// server never answered: unavailable or timed out). Redis error replies are answers, not
/// failures, and are passed through.
pub(crate) async fn read_with_retry(
    first: Pending,
    topo: Arc<Topology>,
    alternate: u16,
    pick: usize,
    frame: Bytes,
) -> Bytes {
    let mut first = first;
    let failed = match &mut first {
        Pending::Forward(rx) => match rx.await {
            Ok(Ok(reply)) => return reply,
            other => reply_bytes(other),
        },
        other => return resolve(std::mem::replace(other, Pending::Ready(Bytes::new()))).await,
    };
    match topo.server(alternate) {
        Some(server) => reply_bytes(server.pool.send(pick, frame).await),
        None => failed,
    }
}

/// A write sent to several replicas: done once `need` of them acknowledged (all for
/// `write = all`, a majority for `quorum`). When replicas disagree, the error says how many
/// took the write, so the client knows the replicas may differ.
pub(crate) async fn fan_out(replies: Vec<(String, Pending)>, need: usize) -> Bytes {
    let total = replies.len();
    let mut slots: Vec<Option<Pending>> = replies.iter().map(|_| None).collect();
    let mut names = Vec::with_capacity(total);
    for (i, (name, p)) in replies.into_iter().enumerate() {
        names.push(name);
        if let Some(s) = slots.get_mut(i) {
            *s = Some(p);
        }
    }
    let mut acked: Vec<Bytes> = Vec::new();
    let mut failed: Vec<(usize, Bytes)> = Vec::new();
    poll_fn(|cx| {
        for (i, slot) in slots.iter_mut().enumerate() {
            if let Some(p) = slot {
                if let std::task::Poll::Ready(reply) = p.poll_bytes(cx) {
                    *slot = None;
                    if reply.first() == Some(&b'-') {
                        failed.push((i, reply));
                    } else {
                        acked.push(reply);
                    }
                }
            }
        }
        // Done at success, or once every replica answered: a failed write waits for all of
        // them, so that its error can say exactly how many took it.
        let done = acked.len() >= need || slots.iter().all(Option::is_none);
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    if acked.len() >= need {
        return acked.swap_remove(0);
    }
    // Every replica refused the same way (WRONGTYPE on all of them): that is the answer.
    if acked.is_empty() && failed.len() == total {
        if let Some((_, first)) = failed.first() {
            if failed.iter().all(|(_, f)| f == first) {
                return first.clone();
            }
        }
    }
    let detail: Vec<String> = failed
        .iter()
        .map(|(i, e)| {
            let name = names.get(*i).map_or("?", String::as_str);
            let text = String::from_utf8_lossy(e.get(1..).unwrap_or_default());
            format!("{name}: {}", text.trim_end())
        })
        .collect();
    error_bytes(&format!(
        "keyway: write applied on {} of {} replicas ({} needed); replicas may differ until rewritten ({})",
        acked.len(),
        total,
        need,
        detail.join("; ")
    ))
}

/// The body of a warm-up GET (see `Planner::warm_get`).
pub(crate) async fn warm_get(
    first: Pending,
    topo: Arc<Topology>,
    new: u16,
    old: u16,
    pick: usize,
    key: Bytes,
) -> Bytes {
    let reply = resolve(first).await;
    if reply.as_ref() != b"$-1\r\n" {
        return reply;
    }
    let (Some(old_server), Some(new_server)) = (topo.server(old), topo.server(new)) else {
        return reply;
    };
    let get = crate::protocol::Request::from_args(&[Bytes::from_static(b"GET"), key.clone()]);
    let pttl = crate::protocol::Request::from_args(&[Bytes::from_static(b"PTTL"), key.clone()]);
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
    drop(new_server.pool.send(
        pick,
        crate::protocol::Request::from_args(&set).frame().clone(),
    ));
    value
}
