//! Blocking commands through Keyway (BLPOP, BRPOP, BRPOPLPUSH, BLMOVE, BLMPOP, BZPOPMIN,
//! BZPOPMAX, BZMPOP, XREAD/XREADGROUP ... BLOCK) against real redis-servers: replies byte for
//! byte as redis-server's (RESP2 and RESP3), each blocked client on a server connection of its
//! own (other clients' pipelines do not wait), Redis's timeouts (not `pool.timeout`), a client
//! that leaves while blocked frees its server connection at once, a server that dies names
//! itself, `limits.max_blocked_per_server`, MULTI, and the write policies with replicas.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::time::{Duration, Instant};

use support::*;

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "\\r\\n")
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
    }
    out.into_bytes()
}

/// Clients of `server` whose current command is `cmd` (CLIENT LIST's `cmd=` field).
fn clients_in(server: &RedisServer, cmd: &str) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut server.client())
        .unwrap();
    list.lines()
        .filter(|l| l.contains(&format!(" cmd={cmd} ")))
        .count()
}

fn blocked_on(server: &RedisServer) -> usize {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query(&mut server.client())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn three_with(pool: &str, limits: &str) -> (Vec<RedisServer>, Proxy) {
    let servers = servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let mut toml = config_toml(&refs, pool);
    if !limits.is_empty() {
        toml.push_str(&format!("\n[limits]\n{limits}\n"));
    }
    let proxy = Proxy::start_toml(&toml);
    (servers, proxy)
}

/// A BLPOP blocks on its own server connection: while it waits, other clients' commands to the
/// same server (over the one shared connection) are answered; a push wakes it with
/// redis-server's reply. A blocking command pipelined behind other commands runs after them,
/// and what follows it runs after it, as in redis-server.
#[test]
fn blpop_waits_without_stalling_others() {
    let (servers, proxy) = three_with("timeout = \"200ms\"", "");
    let q = key_on(&proxy, 1, "q");
    let other = key_on(&proxy, 1, "o");
    let mut a = RawClient::connect(proxy.addr);
    a.send(&encode(&["BLPOP", &q, "0"]));
    assert!(wait_until(Duration::from_secs(5), || blocked_on(
        &servers[1]
    ) == 1));
    let mut b = RawClient::connect(proxy.addr);
    for i in 0..100 {
        let v = i.to_string();
        assert_eq!(b.call(&["SET", &other, &v]), b"+OK\r\n");
    }
    // Longer than pool.timeout: the blocked command is not cut short.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(blocked_on(&servers[1]), 1);
    assert_eq!(b.call(&["RPUSH", &q, "v"]), b":1\r\n");
    let got = a.read_reply().unwrap();
    assert_eq!(
        show(&got),
        format!("*2\\r\\n${}\\r\\n{q}\\r\\n$1\\r\\nv\\r\\n", q.len())
    );
    // The same client goes on as usual.
    assert_eq!(a.call(&["GET", &other]), b"$2\r\n99\r\n");

    // Pipelined: RPUSH, then BLPOP (pops what RPUSH pushed), then LLEN (sees the pop).
    let direct = RedisServer::start();
    let script: Vec<u8> = [
        encode(&["DEL", &q]),
        encode(&["RPUSH", &q, "x"]),
        encode(&["BLPOP", &q, "0"]),
        encode(&["LLEN", &q]),
        encode(&["BLPOP", &q, "0.05"]),
        encode(&["PING"]),
    ]
    .concat();
    let mut replies = Vec::new();
    for addr in [direct.addr(), proxy.addr] {
        let mut c = RawClient::connect(addr);
        c.send(&script);
        let mut got = Vec::new();
        for _ in 0..6 {
            got.extend(c.read_reply().unwrap());
        }
        replies.push(show(&got));
    }
    assert_eq!(replies[0], replies[1]);
}

/// Every blocking command, woken by a write, answers as redis-server does, in RESP2 and
/// RESP3; and times out with redis-server's null.
#[test]
fn every_blocking_command_answers_as_redis() {
    let (_servers, proxy) = three_with("", "");
    let direct = RedisServer::start();
    // (setup, blocking command, the write that wakes it); keys share the {t} tag.
    let cases: &[(&[&str], &[&str], &[&str])] = &[
        (
            &[],
            &["BLPOP", "{t}a", "{t}b", "0"],
            &["RPUSH", "{t}b", "x", "y"],
        ),
        (&[], &["BRPOP", "{t}a", "0"], &["RPUSH", "{t}a", "x", "y"]),
        (
            &[],
            &["BRPOPLPUSH", "{t}a", "{t}d", "0"],
            &["RPUSH", "{t}a", "x"],
        ),
        (
            &[],
            &["BLMOVE", "{t}a", "{t}d", "LEFT", "RIGHT", "0"],
            &["RPUSH", "{t}a", "x"],
        ),
        (
            &[],
            &["BLMPOP", "0", "2", "{t}a", "{t}b", "RIGHT", "COUNT", "2"],
            &["RPUSH", "{t}b", "1", "2", "3"],
        ),
        (
            &[],
            &["BZPOPMIN", "{t}z", "0"],
            &["ZADD", "{t}z", "1.5", "m", "2", "n"],
        ),
        (
            &[],
            &["BZPOPMAX", "{t}z", "0"],
            &["ZADD", "{t}z", "1.5", "m", "2", "n"],
        ),
        (
            &[],
            &["BZMPOP", "0", "1", "{t}z", "MIN", "COUNT", "5"],
            &["ZADD", "{t}z", "1.5", "m", "2", "n"],
        ),
        (
            &["XADD", "{t}s", "1-1", "f", "v"],
            &["XREAD", "BLOCK", "0", "STREAMS", "{t}s", "$"],
            &["XADD", "{t}s", "2-1", "g", "w"],
        ),
        (
            &["XGROUP", "CREATE", "{t}s", "g", "$", "MKSTREAM"],
            &[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "BLOCK",
                "0",
                "STREAMS",
                "{t}s",
                ">",
            ],
            &["XADD", "{t}s", "3-1", "h", "u"],
        ),
    ];
    for proto in ["2", "3"] {
        for (setup, blocking, wake) in cases {
            let mut seen = Vec::new();
            for (addr, server) in [(direct.addr(), Some(&direct)), (proxy.addr, None)] {
                let mut c = RawClient::connect(addr);
                let mut w = RawClient::connect(addr);
                c.call(&["HELLO", proto]);
                w.call(&["DEL", "{t}a", "{t}b", "{t}d", "{t}z", "{t}s"]);
                if !setup.is_empty() {
                    w.call(setup);
                }
                c.send(&encode(blocking));
                // Wait until it blocks: on the server (direct), or through a second look
                // at Keyway's gauge.
                let blocked = wait_until(Duration::from_secs(5), || match server {
                    Some(s) => blocked_on(s) == 1,
                    None => metric(&proxy.metrics(), "keyway_blocked_clients") == Some(1.0),
                });
                assert!(blocked, "{blocking:?} did not block");
                w.call(wake);
                let reply = c.read_reply().unwrap();
                // Stream IDs are fixed, so the replies compare whole.
                seen.push(show(&reply));
                // A timeout: the null of the protocol.
                let mut timed = blocking.to_vec();
                if let Some(t) = timed.iter().position(|a| *a == "0") {
                    if blocking[0].starts_with('X') {
                        timed[t] = "10";
                    } else {
                        timed[t] = "0.01";
                    }
                }
                w.call(&["DEL", "{t}a", "{t}b", "{t}z"]);
                if !blocking[0].starts_with('X') {
                    seen.push(show(&c.call(&timed)));
                }
            }
            assert_eq!(
                seen[..seen.len() / 2],
                seen[seen.len() / 2..],
                "RESP{proto} {blocking:?}"
            );
        }
    }
}

/// Bad input: negative and non-numeric timeouts, a wrong numkeys, keys of several slots.
/// Redis's errors byte for byte (CROSSSLOT as Redis Cluster's), answered at once.
#[test]
fn bad_timeouts_are_redis_errors() {
    let (_servers, proxy) = three_with("", "");
    let direct = RedisServer::start();
    let cases: &[&[&str]] = &[
        &["BLPOP", "{t}q", "-1"],
        &["BLPOP", "{t}q", "abc"],
        &["BRPOP", "{t}q", "-0.5"],
        &["BLPOP", "{t}q", "inf"],
        &["BRPOPLPUSH", "{t}q", "{t}d", "-1"],
        &["BLMOVE", "{t}q", "{t}d", "LEFT", "UP", "0"],
        &["BLMOVE", "{t}q", "{t}d", "LEFT", "RIGHT", "x"],
        &["BLMPOP", "-1", "1", "{t}q", "LEFT"],
        &["BLMPOP", "0", "1", "{t}q", "MIDDLE"],
        &["BZPOPMIN", "{t}z", "-1"],
        &["BZPOPMAX", "{t}z", "nan"],
        &["BZMPOP", "0", "1", "{t}z", "MIN", "COUNT", "0"],
        &["XREAD", "BLOCK", "-1", "STREAMS", "{t}s", "$"],
        &["XREAD", "BLOCK", "abc", "STREAMS", "{t}s", "$"],
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "BLOCK",
            "-5",
            "STREAMS",
            "{t}s",
            ">",
        ],
        &["BLPOP", "{t}q"],
    ];
    for args in cases {
        let want = RawClient::connect(direct.addr()).call(args);
        let started = Instant::now();
        let got = RawClient::connect(proxy.addr).call(args);
        assert_eq!(show(&got), show(&want), "{args:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "{args:?}");
    }
    let crossslot = show(&RawClient::connect(proxy.addr).call(&["BLPOP", "a", "b", "c", "0"]));
    assert!(
        crossslot.starts_with("-CROSSSLOT Keys in request don't hash to the same slot"),
        "{crossslot}"
    );
    let crossslot =
        show(&RawClient::connect(proxy.addr).call(&["BLMOVE", "a", "b", "LEFT", "LEFT", "0"]));
    assert!(crossslot.starts_with("-CROSSSLOT"), "{crossslot}");
}

/// A client that disconnects while blocked: its server connection closes at once (the server
/// lists it no more), and a later push stays in the list (nothing popped for a client that
/// is gone). The connection of a command that ended is kept for the next one.
#[test]
fn a_client_that_leaves_while_blocked_frees_its_connection() {
    let (servers, proxy) = three_with("", "");
    let q = key_on(&proxy, 0, "q");
    let s0 = &servers[0];
    let mut a = RawClient::connect(proxy.addr);
    a.send(&encode(&["BLPOP", &q, "0"]));
    assert!(wait_until(Duration::from_secs(5), || clients_in(
        s0, "blpop"
    ) == 1));
    drop(a);
    assert!(wait_until(Duration::from_secs(5), || clients_in(
        s0, "blpop"
    ) == 0));
    assert!(wait_until(Duration::from_secs(5), || metric(
        &proxy.metrics(),
        "keyway_blocked_clients"
    ) == Some(0.0)));
    let mut b = RawClient::connect(proxy.addr);
    assert_eq!(b.call(&["RPUSH", &q, "v"]), b":1\r\n");
    assert_eq!(b.call(&["LLEN", &q]), b":1\r\n");

    // Commands pipelined behind the BLPOP wait for it; the client still leaves at once.
    let q2 = keys_on(&proxy, 0, "q", 2).pop().unwrap();
    let mut c = RawClient::connect(proxy.addr);
    c.send(&[encode(&["BLPOP", &q2, "0"]), encode(&["LLEN", &q2])].concat());
    assert!(wait_until(Duration::from_secs(5), || blocked_on(s0) == 1));
    drop(c);
    assert!(wait_until(Duration::from_secs(5), || clients_in(
        s0, "blpop"
    ) == 0));
    assert_eq!(b.call(&["RPUSH", &q2, "x"]), b":1\r\n");
    assert_eq!(b.call(&["LLEN", &q2]), b":1\r\n");

    // A command that ended leaves its connection open for the next blocking command.
    let mut d = RawClient::connect(proxy.addr);
    assert_eq!(
        show(&d.call(&["BLPOP", &q, "0"])),
        format!("*2\\r\\n${}\\r\\n{q}\\r\\n$1\\r\\nv\\r\\n", q.len())
    );
    assert_eq!(clients_in(s0, "blpop"), 1);
    assert_eq!(d.call(&["BLPOP", &q, "0.01"]), b"*-1\r\n");
    assert_eq!(
        clients_in(s0, "blpop"),
        1,
        "the kept connection is used again"
    );
    // While blocked and once more after, CLIENT KILL closes the client at once.
    let mut e = RawClient::connect(proxy.addr);
    let id = show(&e.call(&["CLIENT", "ID"]));
    let id = id
        .trim_start_matches(':')
        .trim_end_matches("\\r\\n")
        .to_string();
    e.send(&encode(&["BLPOP", &q, "0"]));
    assert!(wait_until(Duration::from_secs(5), || blocked_on(s0) == 1));
    assert_eq!(d.call(&["CLIENT", "KILL", "ID", &id]), b":1\r\n");
    assert!(e.read_to_close().is_empty());
    assert!(wait_until(Duration::from_secs(5), || blocked_on(s0) == 0));
}

/// A server that dies while a client blocks on it: the client gets an error naming the server;
/// health checks did not mark the server down while clients blocked on it.
#[test]
fn a_server_that_dies_while_blocking_is_named() {
    let (mut servers, proxy) = three_with(
        "timeout = \"100ms\"\n[pool.health]\ninterval = \"50ms\"\ntimeout = \"50ms\"\nfall = 2",
        "",
    );
    let q = key_on(&proxy, 2, "q");
    let mut a = RawClient::connect(proxy.addr);
    a.send(&encode(&["BLPOP", &q, "0"]));
    assert!(wait_until(Duration::from_secs(5), || blocked_on(
        &servers[2]
    ) == 1));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        proxy.shared.topology.load().is_up(2),
        "blocking marked the server down"
    );
    servers[2].kill();
    let reply = show(&a.read_reply().unwrap());
    assert!(
        reply.starts_with("-ERR") && reply.contains("server 's2'"),
        "{reply}"
    );
}

/// `limits.max_blocked_per_server`: past it a blocking command answers TRYAGAIN at once; other
/// servers are not concerned, and a freed place is taken again.
#[test]
fn blocked_clients_are_bounded_per_server() {
    let (_servers, proxy) = three_with("", "max_blocked_per_server = 2");
    let qs = keys_on(&proxy, 0, "q", 3);
    let elsewhere = key_on(&proxy, 1, "q");
    let mut held = Vec::new();
    for q in &qs[..2] {
        let mut c = RawClient::connect(proxy.addr);
        c.send(&encode(&["BLPOP", q, "0"]));
        held.push(c);
    }
    assert!(wait_until(Duration::from_secs(5), || metric(
        &proxy.metrics(),
        "keyway_blocked_clients"
    ) == Some(2.0)));
    let mut c = RawClient::connect(proxy.addr);
    let refused = show(&c.call(&["BLPOP", &qs[2], "0"]));
    assert!(
        refused.starts_with("-TRYAGAIN")
            && refused.contains("limits.max_blocked_per_server")
            && refused.contains("'s0'"),
        "{refused}"
    );
    assert_eq!(c.call(&["BLPOP", &elsewhere, "0.01"]), b"*-1\r\n");
    assert_eq!(c.call(&["RPUSH", &qs[0], "v"]), b":1\r\n");
    held[0].read_reply().unwrap();
    assert_eq!(c.call(&["BLPOP", &qs[2], "0.01"]), b"*-1\r\n");
}

/// Inside MULTI a blocking command is queued, and EXEC runs it without blocking, as in
/// redis-server.
#[test]
fn blocking_commands_in_multi_do_not_block() {
    let (_servers, proxy) = three_with("", "");
    let direct = RedisServer::start();
    let script: &[&[&str]] = &[
        &["MULTI"],
        &["BLPOP", "{m}q", "0"],
        &["XREAD", "BLOCK", "0", "STREAMS", "{m}s", "$"],
        &["RPUSH", "{m}q", "x"],
        &["BRPOP", "{m}q", "0"],
        &["EXEC"],
    ];
    let mut seen = Vec::new();
    for addr in [direct.addr(), proxy.addr] {
        let mut c = RawClient::connect(addr);
        let mut got = String::new();
        for args in script {
            got.push_str(&show(&c.call(args)));
        }
        seen.push(got);
    }
    assert_eq!(seen[0], seen[1]);
}

/// Replicas: under `write = all` a pop on the primary is removed on the other replica (the
/// lists stay equal); under `two_phase` blocking writes are refused with a clear error, and
/// XREAD BLOCK (a read) blocks as usual.
#[test]
fn replicas_follow_the_write_policy() {
    for write in ["all", "quorum"] {
        let (servers, proxy) = three_with(&format!("replicas = 2\nwrite = \"{write}\""), "");
        let key = "{r}q";
        let set = replica_set(&proxy, key);
        let mut c = RawClient::connect(proxy.addr);
        c.call(&["RPUSH", key, "a", "b", "a", "c"]);
        assert_eq!(
            show(&c.call(&["BRPOP", key, "0"])),
            "*2\\r\\n$4\\r\\n{r}q\\r\\n$1\\r\\nc\\r\\n"
        );
        assert_eq!(
            show(&c.call(&["BLPOP", key, "0"])),
            "*2\\r\\n$4\\r\\n{r}q\\r\\n$1\\r\\na\\r\\n"
        );
        // Blocked first, woken by a push that reaches both replicas.
        c.send(&encode(&["BLMOVE", "{r}e", "{r}d", "LEFT", "RIGHT", "0"]));
        assert!(wait_until(Duration::from_secs(5), || blocked_on(
            &servers[set[0]]
        ) == 1));
        let mut w = RawClient::connect(proxy.addr);
        w.call(&["RPUSH", "{r}e", "m"]);
        assert_eq!(c.read_reply().unwrap(), b"$1\r\nm\r\n");
        c.call(&["ZADD", "{r}z", "1", "x", "2", "y"]);
        c.call(&["BZPOPMIN", "{r}z", "0"]);
        for &i in &set {
            let mut s = servers[i].client();
            let list: Vec<String> = redis::cmd("LRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query(&mut s)
                .unwrap();
            assert_eq!(list, ["b", "a"], "{write} s{i}");
            let moved: Vec<String> = redis::cmd("LRANGE")
                .arg("{r}d")
                .arg(0)
                .arg(-1)
                .query(&mut s)
                .unwrap();
            assert_eq!(moved, ["m"], "{write} s{i}");
            let src: i64 = redis::cmd("LLEN").arg("{r}e").query(&mut s).unwrap();
            assert_eq!(src, 0, "{write} s{i}");
            let z: Vec<String> = redis::cmd("ZRANGE")
                .arg("{r}z")
                .arg(0)
                .arg(-1)
                .query(&mut s)
                .unwrap();
            assert_eq!(z, ["y"], "{write} s{i}");
        }
        assert_eq!(
            metric(&proxy.metrics(), "keyway_blocking_replays_failed_total"),
            Some(0.0)
        );
    }
    let (_servers, proxy) = three_with("replicas = 2\nwrite = \"two_phase\"", "");
    let mut c = RawClient::connect(proxy.addr);
    let refused = show(&c.call(&["BLPOP", "{r}q", "0"]));
    assert!(
        refused.starts_with("-ERR command 'blpop' is refused under write = two_phase"),
        "{refused}"
    );
    c.call(&["XADD", "{r}s", "1-1", "f", "v"]);
    assert_eq!(
        c.call(&["XREAD", "BLOCK", "10", "STREAMS", "{r}s", "$"]),
        b"*-1\r\n"
    );
}

/// Under `quorum` with `replicas = 3`, a pop whose slot has a replica stopped and marked down is
/// answered from the primary, its removal replayed on the replica that is up and not sent to
/// the stopped one (counted as a failed replay: that replica keeps the element until it is
/// resynced).
#[test]
fn a_pop_is_not_replayed_on_a_replica_marked_down() {
    let (servers, proxy) = three_with(
        "replicas = 3\nwrite = \"quorum\"\ntimeout = \"3s\"\n[pool.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 2",
        "",
    );
    let key = "{d}q";
    let set = replica_set(&proxy, key);
    let mut c = RawClient::connect(proxy.addr);
    assert_eq!(c.call(&["RPUSH", key, "a", "b"]), b":2\r\n");
    let stopped = set[2];
    servers[stopped].signal("STOP");
    let series = format!("keyway_server_up{{server=\"s{stopped}\"}}");
    assert!(wait_until(Duration::from_secs(5), || metric(
        &proxy.metrics(),
        &series
    ) == Some(0.0)));
    assert_eq!(
        show(&c.call(&["BLPOP", key, "0"])),
        "*2\\r\\n$4\\r\\n{d}q\\r\\n$1\\r\\na\\r\\n"
    );
    let list: Vec<String> = redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(&mut servers[set[1]].client())
        .unwrap();
    assert_eq!(list, ["b"], "the replica that is up took the removal");
    assert_eq!(
        metric(&proxy.metrics(), "keyway_blocking_replays_failed_total"),
        Some(1.0)
    );
    servers[stopped].signal("CONT");
    let list: Vec<String> = redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(&mut servers[stopped].client())
        .unwrap();
    assert_eq!(list, ["a", "b"], "the stopped replica was sent nothing");
}
