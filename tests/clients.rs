//! Real client libraries through Keyway over three redis-servers: redis-py (its default RESP3
//! and `protocol=2`), node-redis (RESP2 and RESP3), ioredis (RESP2: it has no RESP3) and redis-rs
//! (RESP3). The Python and JavaScript sessions live in `tests/clients/`, check their own results
//! and print `ok` last; this file starts the servers and Keyway, runs each with Keyway's port and
//! checks what the servers hold afterwards. `scripts/ensure-deps.sh` installs the pinned
//! libraries (redis-py 8.2.0 with pip, the npm packages of `tests/clients/package-lock.json` with
//! `npm ci`); a test whose interpreter or library is missing prints `skipped` and passes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use redis::{Commands, Value};
use support::*;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Why a client's session cannot run here, or `None` when it can.
fn missing(client: &str) -> Option<String> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    match client {
        "python" => (!works("python3", &["-c", "import redis"]))
            .then(|| "redis-py is not installed (scripts/ensure-deps.sh installs it)".into()),
        _ if !works("node", &["--version"]) => Some("node is not installed".into()),
        package => (!clients_dir().join("node_modules").join(package).is_dir()).then(|| {
            format!("tests/clients/node_modules/{package} is missing (scripts/ensure-deps.sh runs npm ci)")
        }),
    }
}

/// Runs a client's session script with `args` (Keyway's port first); its stdout when it printed
/// `ok` last, `None` when the client is missing here. Fails the test with the script's output
/// when it failed or ran for more than two minutes.
fn session(client: &str, program: &str, script: &str, args: &[String]) -> Option<String> {
    if let Some(why) = missing(client) {
        eprintln!("{script}: skipped: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = Command::new(program)
        .arg(clients_dir().join(script))
        .args(args)
        .current_dir(clients_dir())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut status = None;
    let finished = wait_until(Duration::from_secs(120), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        finished,
        "{script} {args:?} ran for more than 120 s\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        status.is_some_and(|s| s.success()) && out.trim_end().ends_with("ok"),
        "{script} {args:?} failed ({status:?})\nstdout:\n{out}\nstderr:\n{err}"
    );
    eprintln!("{script} {args:?}: {}", out.trim_end().replace('\n', "; "));
    Some(out)
}

/// Each server holds some of the session's keys: its multi-key commands and pipelines spanned
/// the three servers.
fn assert_spread(servers: &[&RedisServer]) {
    for (i, s) in servers.iter().enumerate() {
        assert!(
            s.dbsize() > 0,
            "server {i} holds none of the session's keys"
        );
    }
}

/// Starts three servers and Keyway with `pool_extra`, runs one client session and checks the
/// keys spread over the servers.
fn run_session(
    client: &str,
    program: &str,
    script: &str,
    args: &[&str],
    pool_extra: &str,
) -> Option<(Vec<RedisServer>, Proxy)> {
    let servers = servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start_toml(&config_toml(&refs, pool_extra));
    let mut all = vec![proxy.addr.port().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    session(client, program, script, &all)?;
    assert_spread(&refs);
    Some((servers, proxy))
}

const TWO_PHASE: &str = "replicas = 2\nwrite = \"two_phase\"";

/// After a two-phase session: each key holds the same value on every replica of its slot as
/// through Keyway, and no server keeps a two-phase lock.
fn assert_replicas_agree(servers: &[RedisServer], proxy: &Proxy, keys: &[String]) {
    let mut through = proxy.client();
    for key in keys {
        let want: Option<String> = through.get(key).unwrap();
        assert!(want.is_some(), "{key} is missing");
        for i in replica_set(proxy, key) {
            let got: Option<String> = servers[i].client().get(key).unwrap();
            assert_eq!(got, want, "{key} on server {i}");
        }
    }
    let no_votes = metric(
        &proxy.metrics(),
        "keyway_twophase_prepares_total{vote=\"no\"}",
    );
    eprintln!("prepares that met another transaction's lock (retried by Keyway): {no_votes:?}");
    for (i, s) in servers.iter().enumerate() {
        let locks: Vec<String> = s.client().keys("__keyway:lock:*").unwrap();
        assert!(locks.is_empty(), "server {i} keeps locks {locks:?}");
    }
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn redis_py_default_protocol_resp3() {
    run_session(
        "python",
        "python3",
        "redis_py.py",
        &["default", "session"],
        "",
    );
}

#[test]
fn redis_py_protocol_2() {
    run_session("python", "python3", "redis_py.py", &["2", "session"], "");
}

#[test]
fn redis_py_two_phase_transactions_resp3() {
    if let Some((servers, proxy)) = run_session(
        "python",
        "python3",
        "redis_py.py",
        &["default", "two_phase"],
        TWO_PHASE,
    ) {
        let mut k = keys("tp:", 12);
        k.push("tp:counter".into());
        assert_replicas_agree(&servers, &proxy, &k);
    }
}

#[test]
fn redis_py_two_phase_transactions_resp2() {
    if let Some((servers, proxy)) = run_session(
        "python",
        "python3",
        "redis_py.py",
        &["2", "two_phase"],
        TWO_PHASE,
    ) {
        assert_replicas_agree(&servers, &proxy, &keys("tp:", 12));
    }
}

#[test]
fn node_redis_resp2() {
    run_session("redis", "node", "node_redis.mjs", &["2", "session"], "");
}

#[test]
fn node_redis_resp3() {
    run_session("redis", "node", "node_redis.mjs", &["3", "session"], "");
}

#[test]
fn node_redis_two_phase_transactions() {
    for resp in ["2", "3"] {
        if let Some((servers, proxy)) = run_session(
            "redis",
            "node",
            "node_redis.mjs",
            &[resp, "two_phase"],
            TWO_PHASE,
        ) {
            let mut k = keys("nrtp:", 12);
            k.push("nrtp:counter".into());
            assert_replicas_agree(&servers, &proxy, &k);
        }
    }
}

#[test]
fn ioredis_resp2() {
    run_session("ioredis", "node", "ioredis.mjs", &[], "");
}

/// A redis-rs connection through Keyway in RESP3.
fn resp3(proxy: &Proxy) -> redis::Connection {
    redis::Client::open(format!("redis://{}/?protocol=resp3", proxy.addr))
        .and_then(|c| c.get_connection())
        .unwrap()
}

fn raw(con: &mut redis::Connection, args: &[&str]) -> Value {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(con).unwrap()
}

#[test]
fn redis_rs_resp3() {
    let servers = servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start(&refs);
    let mut con = resp3(&proxy);
    let info: String = redis::cmd("CLIENT").arg("INFO").query(&mut con).unwrap();
    assert!(info.contains(" resp=3 "), "{info}");

    // Typed commands.
    let () = con.set("rs:s", "v1").unwrap();
    assert_eq!(con.get::<_, String>("rs:s").unwrap(), "v1");
    assert_eq!(con.get::<_, Option<String>>("rs:missing").unwrap(), None);
    assert_eq!(con.incr::<_, _, i64>("rs:n", 5).unwrap(), 5);
    let _: i64 = con
        .hset_multiple("rs:h", &[("f1", "a"), ("f2", "b")])
        .map(|()| 2)
        .unwrap();
    let h: HashMap<String, String> = con.hgetall("rs:h").unwrap();
    assert_eq!(
        h,
        HashMap::from([("f1".into(), "a".into()), ("f2".into(), "b".into())])
    );
    assert_eq!(
        con.sadd::<_, _, i64>("rs:set", &["x", "y", "z"]).unwrap(),
        3
    );
    let s: HashSet<String> = con.smembers("rs:set").unwrap();
    assert_eq!(s, HashSet::from(["x".into(), "y".into(), "z".into()]));
    assert_eq!(
        con.zadd_multiple::<_, _, _, i64>("rs:z", &[(1.5, "a"), (2.25, "b")])
            .unwrap(),
        2
    );
    assert_eq!(con.zscore::<_, _, f64>("rs:z", "b").unwrap(), 2.25);

    // RESP3's own types, as the wire said them.
    match raw(&mut con, &["HGETALL", "rs:h"]) {
        Value::Map(pairs) => assert_eq!(pairs.len(), 2, "{pairs:?}"),
        other => panic!("HGETALL is not a map: {other:?}"),
    }
    match raw(&mut con, &["SMEMBERS", "rs:set"]) {
        Value::Set(items) => assert_eq!(items.len(), 3, "{items:?}"),
        other => panic!("SMEMBERS is not a set: {other:?}"),
    }
    assert_eq!(raw(&mut con, &["ZSCORE", "rs:z", "b"]), Value::Double(2.25));
    assert_eq!(raw(&mut con, &["GET", "rs:missing"]), Value::Nil);
    assert_eq!(
        // A script's boolean is RESP3's `#t` once it said redis.setresp(3), as in redis-server.
        raw(&mut con, &["EVAL", "redis.setresp(3); return true", "0"]),
        Value::Boolean(true)
    );
    assert!(
        matches!(raw(&mut con, &["INFO", "server"]), Value::VerbatimString { ref text, .. } if text.contains("redis_version:")),
        "INFO is verbatim text"
    );
    match raw(&mut con, &["HELLO", "3"]) {
        Value::Map(pairs) => assert!(
            pairs.contains(&(Value::SimpleString("proto".into()), Value::Int(3)))
                || pairs.contains(&(Value::BulkString(b"proto".to_vec()), Value::Int(3))),
            "{pairs:?}"
        ),
        other => panic!("HELLO is not a map: {other:?}"),
    }

    // Multi-key commands over the servers.
    let many = keys("rs:k", 60);
    let pairs: Vec<(String, String)> = many
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), format!("v{i}")))
        .collect();
    let () = con.mset(&pairs).unwrap();
    let got: Vec<Option<String>> = con.mget(&many).unwrap();
    assert_eq!(
        got,
        (0..60).map(|i| Some(format!("v{i}"))).collect::<Vec<_>>()
    );
    assert_eq!(con.exists::<_, i64>(&many[..10]).unwrap(), 10);
    assert_eq!(con.del::<_, i64>(&many[50..]).unwrap(), 10);

    // A pipeline over the servers, replies in order.
    let mut p = redis::pipe();
    for k in &many[..20] {
        p.incr(format!("{k}:c"), 2);
    }
    p.get("rs:k3").hgetall("rs:h").zscore("rs:z", "a");
    let (counters, rest): (Vec<i64>, (String, HashMap<String, String>, f64)) = {
        let v: Vec<Value> = p.query(&mut con).unwrap();
        let counters = v[..20]
            .iter()
            .map(|x| redis::from_redis_value_ref(x).unwrap())
            .collect();
        let rest = (
            redis::from_redis_value_ref(&v[20]).unwrap(),
            redis::from_redis_value_ref(&v[21]).unwrap(),
            redis::from_redis_value_ref(&v[22]).unwrap(),
        );
        (counters, rest)
    };
    assert_eq!(counters, vec![2; 20]);
    assert_eq!(rest.0, "v3");
    assert_eq!(rest.1, h);
    assert_eq!(rest.2, 1.5);

    // An atomic pipeline (MULTI/EXEC) on one slot.
    let (a, b, c): (i64, String, HashMap<String, String>) = redis::pipe()
        .atomic()
        .set("{rs:acct}:a", 10)
        .ignore()
        .incr("{rs:acct}:a", 5)
        .get("{rs:acct}:a")
        .hset("{rs:acct}:h", "k", "v")
        .ignore()
        .hgetall("{rs:acct}:h")
        .query(&mut con)
        .unwrap();
    assert_eq!((a, b.as_str()), (15, "15"));
    assert_eq!(c, HashMap::from([("k".into(), "v".into())]));
    // Two slots in one transaction: EXECABORT, nothing applied.
    let err = redis::pipe()
        .atomic()
        .set("{rs:acct}:b", 1)
        .set("{rs:other}:c", 1)
        .query::<Value>(&mut con)
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("Transaction aborted")
            && format!("{err:?}").contains("CrossSlot"),
        "{err:?}"
    );
    assert_eq!(con.exists::<_, i64>("{rs:acct}:b").unwrap(), 0);

    // WATCH-based optimistic locking (redis::transaction) under concurrent incrementers.
    let key = "{rs:ctr}:value";
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                let mut con = resp3(&proxy);
                for _ in 0..40 {
                    let _: () = redis::transaction(&mut con, &[key], |con, pipe| {
                        let v: Option<i64> = con.get(key)?;
                        pipe.set(key, v.unwrap_or(0) + 1)
                            .ignore()
                            .query::<Option<()>>(con)
                    })
                    .unwrap();
                }
            });
        }
    });
    assert_eq!(con.get::<_, i64>(key).unwrap(), 120);

    // A multiplexed async connection: concurrent requests pipelined on one socket.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client =
            redis::Client::open(format!("redis://{}/?protocol=resp3", proxy.addr)).unwrap();
        let con = client.get_multiplexed_async_connection().await.unwrap();
        let gets: Vec<_> = (0..50)
            .map(|i| {
                let mut con = con.clone();
                tokio::spawn(async move {
                    redis::cmd("GET")
                        .arg(format!("rs:k{i}"))
                        .query_async::<String>(&mut con)
                        .await
                })
            })
            .collect();
        let mut got = Vec::new();
        for g in gets {
            got.push(g.await.unwrap().unwrap());
        }
        assert_eq!(got, (0..50).map(|i| format!("v{i}")).collect::<Vec<_>>());
        let mut con = con.clone();
        let v: Value = redis::cmd("HGETALL")
            .arg("rs:h")
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(matches!(v, Value::Map(_)), "{v:?}");
    });
    assert_spread(&refs);
}
