//! Merging the replies of several servers into the one reply a client expects.
//!
//! Each function here is the body of a `Pending::Merge` future: it awaits the sub-replies (all
//! already sent) and builds the merged frame. An error from any server becomes the client's
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
    let mut out = Vec::with_capacity(replies.len());
    for p in replies {
        let frame = resolve(p).await;
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

/// Merges the replies of a split multi-key command. `positions[i]` lists the key numbers (in
/// the client's order) carried by sub-command `i`.
pub(crate) async fn split(
    how: Merge,
    replies: Vec<Pending>,
    positions: Vec<Vec<usize>>,
    n_keys: usize,
) -> Bytes {
    let values = match values(replies).await {
        Ok(v) => v,
        Err(e) => return e,
    };
    match how {
        Merge::Array => {
            let mut slots: Vec<Option<Value>> = vec![None; n_keys];
            for (v, ks) in values.into_iter().zip(positions) {
                let Value::Array(items) = v else {
                    return unexpected(&v);
                };
                if items.len() != ks.len() {
                    return error_bytes("keyway: a server answered a different number of keys");
                }
                for (item, k) in items.into_iter().zip(ks) {
                    if let Some(slot) = slots.get_mut(k) {
                        *slot = Some(item);
                    }
                }
            }
            frame(|out| {
                write_array_header(out, n_keys);
                for v in slots {
                    v.unwrap_or(Value::Nil).encode(out);
                }
            })
        }
        other => combine(other, values),
    }
}

/// Merges the replies of a command sent to every server.
pub(crate) async fn all(how: Merge, replies: Vec<Pending>) -> Bytes {
    match values(replies).await {
        Ok(values) => combine(how, values),
        Err(e) => e,
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
        let reply = server.pool.send(pick, frame.clone()).await.await;
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
pub(crate) async fn scan(reply: Pending, index: usize, servers: usize) -> Bytes {
    let raw = resolve(reply).await;
    let value = match Value::parse(&raw) {
        Ok(Value::Error(_)) => return raw,
        Ok(v) => v,
        Err(e) => return error_bytes(&format!("keyway: bad reply from server: {e}")),
    };
    let Value::Array(mut parts) = value else {
        return unexpected(&value);
    };
    let (Some(keys), Some(Value::Bulk(cursor))) = (parts.pop(), parts.pop()) else {
        return error_bytes("keyway: unexpected SCAN reply from server");
    };
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
