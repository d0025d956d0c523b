//! Blocking commands (`BLPOP`, `BRPOP`, `BRPOPLPUSH`, `BLMOVE`, `BLMPOP`, `BZPOPMIN`,
//! `BZPOPMAX`, `BZMPOP`, `XREAD ... BLOCK`, `XREADGROUP ... BLOCK`): each runs on a server
//! connection of its own while it blocks, so that no other client's pipeline waits behind it.
//!
//! The planner sends one to its slot's primary ([`super::plan::Plan::Block`]); [`dispatch`]
//! takes a connection from the server's pool of blocking connections ([`Pool::block`]: an idle
//! one, or a new one; at most `limits.max_blocked_per_server` at once), sends the command and
//! waits for as long as the server takes: the command's own timeout decides, not
//! `pool.timeout`. Once answered, the connection goes back to the pool for the next blocking
//! command. A client that leaves while blocked drops its pending reply and with it the
//! connection, which closes at once: the server unblocks that client and pops nothing for it.
//!
//! Under `write = all|quorum` with `replicas > 1`, what a pop took is then removed on the
//! slot's other replicas ([`replay`]): `LREM` of each popped value (from the end it was popped
//! from), `ZREM` of each popped member, the push of a moved value, or `XREADGROUP` without its
//! `BLOCK` option. The client gets the primary's reply whatever the replicas answer: the element
//! is already popped, and an error would lose it (a failure is logged and counted).

use std::sync::Arc;

use bytes::Bytes;

use super::reply::Pending;
use crate::backend::{BlockError, Pick, Pool};
use crate::command::{CommandSpec, Flags, Traits};
use crate::error::{ErrorKind, ReplyError};
use crate::protocol::{is_error_reply, is_null_reply, Args, Request, Value};

/// Whether `args` make `spec` block: every command flagged `blocking` but XREAD and
/// XREADGROUP, which block only with a `BLOCK` option.
pub(crate) fn blocks(spec: &CommandSpec, args: Args<'_>) -> bool {
    if !spec.flags.contains(Flags::BLOCKING) {
        return false;
    }
    !spec.traits.contains(Traits::BLOCK_OPTION) || block_option(args).is_some()
}

/// Where XREAD's or XREADGROUP's `BLOCK` option is, read as the server reads the options before
/// `STREAMS` (so that a consumer or stream named `block` is not taken for it).
fn block_option(args: Args<'_>) -> Option<usize> {
    let mut i = 1;
    if args
        .get(1)
        .is_some_and(|a| a.eq_ignore_ascii_case(b"GROUP"))
    {
        i = 4;
    }
    while let Some(arg) = args.get(i) {
        if arg.eq_ignore_ascii_case(b"STREAMS") {
            return None;
        }
        if arg.eq_ignore_ascii_case(b"BLOCK") {
            return Some(i);
        }
        i += if arg.eq_ignore_ascii_case(b"COUNT") {
            2
        } else {
            1
        };
    }
    None
}

/// The replicas a pop is replayed on, and what the replay needs of the request.
struct Replay {
    targets: Vec<(String, Arc<Pool>)>,
    traits: Traits,
    write: bool,
    /// The request's arguments, copied (the client's read buffer is not kept alive by them).
    args: Vec<Bytes>,
    pick: Pick,
}

/// Sends a blocking command to `server` on a connection of its own, and replays a pop on the
/// `replay` servers. Returns the pending reply, which the session keeps as a barrier (nothing
/// of the client runs after it until it is answered, as in redis-server).
pub(crate) fn dispatch(
    cx: &super::dispatch::Context<'_>,
    spec: &'static CommandSpec,
    server: u16,
    replay: &[u16],
    request: &Request,
) -> Pending {
    let (topo, pick) = (cx.topo, cx.client.pick());
    let limit = cx.shared.client_limits.max_blocked_per_server;
    let metrics = cx.shared.metrics.clone();
    let Some(pool) = topo.server(server).map(|s| s.pool.clone()) else {
        return Pending::Ready(Err(ReplyError::new(
            ErrorKind::Internal,
            "keyway: internal routing error (no such server)",
        )));
    };
    let replay = (!replay.is_empty()).then(|| Replay {
        targets: replay
            .iter()
            .filter_map(|&t| topo.server(t))
            .map(|s| (s.name.clone(), s.pool.clone()))
            .collect(),
        traits: spec.traits,
        write: spec.is_write(),
        args: request.args().iter().map(Bytes::copy_from_slice).collect(),
        pick,
    });
    // A copy: the client's read buffer goes back to its kit while the command blocks.
    let frame = Bytes::copy_from_slice(request.frame());
    let proto = pick.proto;
    Pending::Blocked(Box::pin(async move {
        let mut lease = pool.block(proto, limit).await.map_err(|e| match e {
            BlockError::Limit { server, limit } => ReplyError::new(
                ErrorKind::TryAgain,
                format!(
                    "keyway: {limit} clients already block on server '{server}' \
                     (limits.max_blocked_per_server); retry later"
                ),
            ),
            BlockError::Backend(e) => ReplyError::from(e),
        })?;
        let gauge = Gauge::up(metrics.clone());
        let reply = lease.call(&frame).await;
        drop(gauge);
        drop(frame);
        let reply = match reply {
            Ok(reply) => {
                pool.unblock(lease);
                reply
            }
            Err(e) => return Err(ReplyError::from(e)),
        };
        if let Some(replay) = replay {
            if !is_error_reply(&reply) && !is_null_reply(&reply) {
                let failed = run_replay(&replay, &reply).await;
                if failed > 0 {
                    metrics.blocking_replays_failed.inc_by(failed);
                }
            }
        }
        Ok(reply)
    }))
}

/// `keyway_blocked_clients`, up while a command blocks (also when its client goes).
struct Gauge(Arc<crate::metrics::Metrics>);

impl Gauge {
    fn up(metrics: Arc<crate::metrics::Metrics>) -> Gauge {
        metrics.blocked_clients.inc();
        Gauge(metrics)
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.blocked_clients.dec();
    }
}

/// Sends what the pop took to each replica; returns how many replicas did not take it.
async fn run_replay(replay: &Replay, reply: &Bytes) -> u64 {
    let frames = replay_frames(replay.traits, replay.write, &replay.args, reply);
    if frames.is_empty() {
        return 0;
    }
    let mut failed = 0;
    for (name, pool) in &replay.targets {
        // A replica the health checks mark down is not waited for: the client has its element,
        // and the replica misses the removal (counted, logged) as it misses any write while
        // down.
        if !pool.health().is_up() {
            tracing::warn!(server = %name, "a blocking pop's removal was not sent to a replica marked down");
            failed += 1;
            continue;
        }
        // One connection of the pool (the client's pick), so that the frames run in order.
        let sent: Vec<_> = frames
            .iter()
            .map(|f| pool.send(replay.pick, f.clone()))
            .collect();
        let mut ok = true;
        for rx in sent {
            match rx.await {
                Ok(Ok(frame)) if !is_error_reply(&frame) && frame.as_ref() != b":0\r\n" => {}
                Ok(Ok(frame)) => {
                    ok = false;
                    tracing::warn!(server = %name, reply = %String::from_utf8_lossy(&frame).trim_end(), "a blocking pop's removal was not taken by a replica");
                }
                Ok(Err(e)) => {
                    ok = false;
                    tracing::warn!(server = %name, error = %e, "a blocking pop's removal did not reach a replica");
                }
                Err(_) => ok = false,
            }
        }
        failed += u64::from(!ok);
    }
    failed
}

/// The commands that make a replica lose what the primary's pop took (`reply`), from the
/// command's traits and arguments.
fn replay_frames(traits: Traits, write: bool, args: &[Bytes], reply: &Bytes) -> Vec<Bytes> {
    let Ok(value) = Value::parse(reply) else {
        return Vec::new();
    };
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let is_left = |b: &Bytes| b.eq_ignore_ascii_case(b"LEFT");
    let frame = |parts: &[Bytes]| Request::from_args(parts).frame().clone();
    let lrem = |key: &Bytes, left: bool, value: Bytes| {
        let count = Bytes::from_static(if left { b"1" } else { b"-1" });
        frame(&[Bytes::from_static(b"LREM"), key.clone(), count, value])
    };
    let mut out = Vec::new();
    if traits.contains(Traits::POPS_LEFT) || traits.contains(Traits::POPS_RIGHT) {
        // [key, value]
        if let Value::Array(kv) = value {
            if let [Value::Bulk(key), Value::Bulk(v)] = kv.as_slice() {
                out.push(lrem(key, traits.contains(Traits::POPS_LEFT), v.clone()));
            }
        }
    } else if traits.contains(Traits::POPS_WHERE) {
        // BLMPOP timeout numkeys key.. LEFT|RIGHT [COUNT n] -> [key, [value..]]
        let numkeys: usize = std::str::from_utf8(&arg(2))
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let left = is_left(&arg(3 + numkeys));
        if let Value::Array(kv) = value {
            if let [Value::Bulk(key), Value::Array(values)] = kv.as_slice() {
                for v in values {
                    if let Value::Bulk(v) = v {
                        out.push(lrem(key, left, v.clone()));
                    }
                }
            }
        }
    } else if traits.contains(Traits::MOVES_LIST) || traits.contains(Traits::MOVES_RIGHT_LEFT) {
        // BLMOVE src dst LEFT|RIGHT LEFT|RIGHT timeout; BRPOPLPUSH src dst timeout -> value
        let (from_left, to_left) = if traits.contains(Traits::MOVES_LIST) {
            (is_left(&arg(3)), is_left(&arg(4)))
        } else {
            (false, true)
        };
        if let Value::Bulk(v) = value {
            out.push(lrem(&arg(1), from_left, v.clone()));
            let push = Bytes::from_static(if to_left { b"LPUSH" } else { b"RPUSH" });
            out.push(frame(&[push, arg(2), v]));
        }
    } else if traits.contains(Traits::POPS_ZSET) {
        // BZPOPMIN/BZPOPMAX -> [key, member, score]; BZMPOP -> [key, [[member, score]..]]
        if let Value::Array(items) = value {
            let mut zrem = vec![Bytes::from_static(b"ZREM")];
            match items.as_slice() {
                [Value::Bulk(key), Value::Bulk(member), _] => {
                    zrem.push(key.clone());
                    zrem.push(member.clone());
                }
                [Value::Bulk(key), Value::Array(pairs)] => {
                    zrem.push(key.clone());
                    for pair in pairs {
                        if let Value::Array(pair) = pair {
                            if let Some(Value::Bulk(member)) = pair.first() {
                                zrem.push(member.clone());
                            }
                        }
                    }
                }
                _ => {}
            }
            if zrem.len() > 2 {
                out.push(frame(&zrem));
            }
        }
    } else if write && traits.contains(Traits::BLOCK_OPTION) {
        // XREADGROUP ... BLOCK ms ...: the same read without BLOCK delivers the same entries
        // to the group on a replica that holds them.
        let view = Request::from_args(args);
        if let Some(at) = block_option(view.args()) {
            let rest: Vec<Bytes> = args
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != at && i != at + 1)
                .map(|(_, a)| a.clone())
                .collect();
            out.push(frame(&rest));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<Bytes> {
        list.iter().map(|a| Bytes::from(a.to_string())).collect()
    }

    fn show(frames: &[Bytes]) -> Vec<String> {
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(f).replace("\r\n", " "))
            .collect()
    }

    fn spec(name: &str) -> &'static CommandSpec {
        crate::command::lookup(name).unwrap()
    }

    #[test]
    fn block_option_is_read_before_streams() {
        let blocks = |list: &[&str]| {
            let r = Request::from_args(&args(list));
            blocks(spec(&list[0].to_ascii_lowercase()), r.args())
        };
        assert!(blocks(&["XREAD", "BLOCK", "0", "STREAMS", "s", "$"]));
        assert!(blocks(&[
            "XREAD", "COUNT", "2", "block", "5", "STREAMS", "s", "$"
        ]));
        assert!(!blocks(&["XREAD", "STREAMS", "block", "0"]));
        assert!(!blocks(&["XREAD", "COUNT", "block", "STREAMS", "s", "0"]));
        assert!(!blocks(&[
            "XREADGROUP",
            "GROUP",
            "g",
            "BLOCK",
            "STREAMS",
            "s",
            ">"
        ]));
        assert!(blocks(&[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "NOACK",
            "BLOCK",
            "10",
            "STREAMS",
            "s",
            ">"
        ]));
        assert!(blocks(&["BLPOP", "q", "0"]));
        assert!(!blocks(&["LPOP", "q"]));
    }

    #[test]
    fn replays_remove_what_was_popped() {
        let t = |name: &str| spec(name).traits;
        let w = |name: &str| spec(name).is_write();
        let reply = |s: &str| Bytes::from(s.to_string());
        let frames = replay_frames(
            t("blpop"),
            true,
            &args(&["BLPOP", "a", "b", "0"]),
            &reply("*2\r\n$1\r\nb\r\n$2\r\nv1\r\n"),
        );
        assert_eq!(show(&frames), ["*4 $4 LREM $1 b $1 1 $2 v1 "]);
        let frames = replay_frames(
            t("brpop"),
            true,
            &args(&["BRPOP", "a", "0"]),
            &reply("*2\r\n$1\r\na\r\n$1\r\nx\r\n"),
        );
        assert_eq!(show(&frames), ["*4 $4 LREM $1 a $2 -1 $1 x "]);
        let frames = replay_frames(
            t("blmpop"),
            true,
            &args(&["BLMPOP", "0", "2", "a", "b", "RIGHT", "COUNT", "2"]),
            &reply("*2\r\n$1\r\na\r\n*2\r\n$1\r\nx\r\n$1\r\ny\r\n"),
        );
        assert_eq!(
            show(&frames),
            ["*4 $4 LREM $1 a $2 -1 $1 x ", "*4 $4 LREM $1 a $2 -1 $1 y "]
        );
        let frames = replay_frames(
            t("blmove"),
            true,
            &args(&["BLMOVE", "s", "d", "LEFT", "RIGHT", "0"]),
            &reply("$1\r\nx\r\n"),
        );
        assert_eq!(
            show(&frames),
            ["*4 $4 LREM $1 s $1 1 $1 x ", "*3 $5 RPUSH $1 d $1 x "]
        );
        let frames = replay_frames(
            t("brpoplpush"),
            true,
            &args(&["BRPOPLPUSH", "s", "d", "0"]),
            &reply("$1\r\nx\r\n"),
        );
        assert_eq!(
            show(&frames),
            ["*4 $4 LREM $1 s $2 -1 $1 x ", "*3 $5 LPUSH $1 d $1 x "]
        );
        // RESP3: the score is a double.
        let frames = replay_frames(
            t("bzpopmin"),
            true,
            &args(&["BZPOPMIN", "z", "0"]),
            &reply("*3\r\n$1\r\nz\r\n$1\r\nm\r\n,1.5\r\n"),
        );
        assert_eq!(show(&frames), ["*3 $4 ZREM $1 z $1 m "]);
        let frames = replay_frames(
            t("bzmpop"),
            true,
            &args(&["BZMPOP", "0", "1", "z", "MIN", "COUNT", "2"]),
            &reply(
                "*2\r\n$1\r\nz\r\n*2\r\n*2\r\n$1\r\na\r\n$1\r\n1\r\n*2\r\n$1\r\nb\r\n$1\r\n2\r\n",
            ),
        );
        assert_eq!(show(&frames), ["*4 $4 ZREM $1 z $1 a $1 b "]);
        let frames = replay_frames(
            t("xreadgroup"),
            w("xreadgroup"),
            &args(&[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "BLOCK",
                "0",
                "STREAMS",
                "s",
                ">",
            ]),
            &reply("*1\r\n*2\r\n$1\r\ns\r\n*0\r\n"),
        );
        assert_eq!(
            show(&frames),
            ["*7 $10 XREADGROUP $5 GROUP $1 g $1 c $7 STREAMS $1 s $1 > "]
        );
        // XREAD only reads: nothing to replay.
        let frames = replay_frames(
            t("xread"),
            w("xread"),
            &args(&["XREAD", "BLOCK", "0", "STREAMS", "s", "$"]),
            &reply("*1\r\n*2\r\n$1\r\ns\r\n*0\r\n"),
        );
        assert!(frames.is_empty());
    }
}
