//! The data path end to end: real redis-servers, Keyway in process, real clients.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;
use support::{config_toml, key_on, three, wait_until, Proxy, RawClient, RedisServer};

#[test]
fn pipeline_of_thousands_comes_back_in_order() {
    let (a, b, c) = three();
    let proxy = Proxy::start(&[&a, &b, &c]);
    let mut con = proxy.client();
    let mut pipe = redis::pipe();
    for i in 0..5000 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
        pipe.cmd("GET").arg(format!("k{i}"));
    }
    let values: Vec<i64> = pipe.query(&mut con).unwrap();
    assert_eq!(values, (0..5000).collect::<Vec<i64>>());
    // The keys really are spread: every server holds some of them.
    for s in [&a, &b, &c] {
        assert!(s.dbsize() > 1000, "server holds {}", s.dbsize());
    }
}

#[test]
fn raw_pipeline_in_one_write_gets_every_reply_in_order() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    let proxy = Proxy::start(&[&a, &b]);
    let mut raw = RawClient::connect(proxy.addr);
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for i in 0..2000 {
        let v = format!("v{i}");
        bytes.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\nk{i}\r\n${}\r\n{v}\r\n",
                format!("k{i}").len(),
                v.len()
            )
            .as_bytes(),
        );
        bytes.extend_from_slice(
            format!("*2\r\n$3\r\nGET\r\n${}\r\nk{i}\r\n", format!("k{i}").len()).as_bytes(),
        );
        expected.extend_from_slice(b"+OK\r\n");
        expected.extend_from_slice(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
    }
    // Inline commands are accepted too, as redis-server does.
    bytes.extend_from_slice(b"PING\r\n");
    expected.extend_from_slice(b"+PONG\r\n");
    raw.send(&bytes);
    let got = raw.read_exact_or_eof(expected.len());
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expected)
    );
}

#[test]
fn many_clients_share_a_few_server_connections() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    let proxy = Proxy::start_toml(&config_toml(&[&a, &b], "connections = 2"));
    let mut clients: Vec<_> = (0..40).map(|_| proxy.client()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let _: () = c.set(format!("key{i}"), i).unwrap();
    }
    for s in [&a, &b] {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query(&mut s.client())
            .unwrap();
        let connected: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        // Keyway's 2 data connections, its health-check connection, and the one asking.
        assert_eq!(connected, 4, "{info}");
    }
}

#[test]
fn multi_key_commands_split_and_merge() {
    let (a, b, c) = three();
    let proxy = Proxy::start(&[&a, &b, &c]);
    let mut con = proxy.client();
    let keys: Vec<String> = (0..30).map(|i| format!("user:{i}")).collect();
    let mut mset = redis::cmd("MSET");
    for (i, k) in keys.iter().enumerate() {
        mset.arg(k).arg(format!("value-{i}"));
    }
    let _: () = mset.query(&mut con).unwrap();
    // MGET keeps the order of the keys asked, missing keys included.
    let mut ask = keys.clone();
    ask.insert(5, "missing".into());
    let got: Vec<Option<String>> = redis::cmd("MGET").arg(&ask).query(&mut con).unwrap();
    let mut want: Vec<Option<String>> = (0..30).map(|i| Some(format!("value-{i}"))).collect();
    want.insert(5, None);
    assert_eq!(got, want);
    // Counts are summed over servers.
    let n: i64 = redis::cmd("EXISTS").arg(&ask).query(&mut con).unwrap();
    assert_eq!(n, 30);
    let n: i64 = redis::cmd("TOUCH")
        .arg(&keys[..10])
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 10);
    let n: i64 = redis::cmd("DEL").arg(&keys[..10]).query(&mut con).unwrap();
    assert_eq!(n, 10);
    let n: i64 = redis::cmd("UNLINK")
        .arg(&keys[..20])
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 10);
    let n: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(n, 10);
    // The keys of one hash tag stay on one server.
    let _: () = redis::cmd("MSET")
        .arg(&["{t}a", "1", "{t}b", "2", "{t}c", "3"])
        .query(&mut con)
        .unwrap();
    let holding: Vec<i64> = [&a, &b, &c]
        .iter()
        .map(|s| {
            redis::cmd("EXISTS")
                .arg(&["{t}a", "{t}b", "{t}c"])
                .query(&mut s.client())
                .unwrap()
        })
        .collect();
    assert!(
        holding.contains(&3) && holding.iter().sum::<i64>() == 3,
        "{holding:?}"
    );
}

#[test]
fn commands_that_cannot_span_servers_get_crossslot() {
    let (a, b, c) = three();
    let proxy = Proxy::start(&[&a, &b, &c]);
    let mut con = proxy.client();
    let _: () = con.set("{x}src", "v").unwrap();
    // With the same tag, a two-key command works.
    let _: () = redis::cmd("RENAME")
        .arg("{x}src")
        .arg("{x}dst")
        .query(&mut con)
        .unwrap();
    let v: String = con.get("{x}dst").unwrap();
    assert_eq!(v, "v");
    for cmd in [
        vec!["RENAME", "alpha", "beta"],
        vec!["SMOVE", "alpha", "beta", "m"],
        vec!["SINTERSTORE", "alpha", "beta", "gamma"],
        vec!["MSETNX", "alpha", "1", "beta", "2"],
        vec!["EVAL", "return 1", "2", "alpha", "beta"],
    ] {
        let mut c = redis::cmd(cmd[0]);
        c.arg(&cmd[1..]);
        let err = c.query::<redis::Value>(&mut con).unwrap_err();
        assert_eq!(err.code(), Some("CROSSSLOT"), "{cmd:?}: {err}");
        assert!(err.to_string().contains("hash tag"), "{err}");
    }
}

#[test]
fn keyless_commands_cover_the_whole_pool() {
    let (a, b, c) = three();
    let proxy = Proxy::start(&[&a, &b, &c]);
    let mut con = proxy.client();
    for i in 0..300 {
        let _: () = con.set(format!("k:{i}"), i).unwrap();
    }
    let n: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(n, 300);
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("k:*").query(&mut con).unwrap();
    keys.sort();
    let mut want: Vec<String> = (0..300).map(|i| format!("k:{i}")).collect();
    want.sort();
    assert_eq!(keys, want);
    let r: String = redis::cmd("RANDOMKEY").query(&mut con).unwrap();
    assert!(r.starts_with("k:"));
    let _: () = redis::cmd("FLUSHDB").query(&mut con).unwrap();
    for s in [&a, &b, &c] {
        assert_eq!(s.dbsize(), 0);
    }
    let r: Option<String> = redis::cmd("RANDOMKEY").query(&mut con).unwrap();
    assert_eq!(r, None);
}

#[test]
fn full_scan_returns_every_key_exactly_once() {
    let (a, b, c) = three();
    let proxy = Proxy::start(&[&a, &b, &c]);
    let mut con = proxy.client();
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        pipe.cmd("SET").arg(format!("scan:{i}")).arg(i).ignore();
    }
    let _: () = pipe.query(&mut con).unwrap();
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut cursor: u64 = 0;
    let mut calls = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(500)
            .query(&mut con)
            .unwrap();
        for k in keys {
            *seen.entry(k).or_default() += 1;
        }
        calls += 1;
        cursor = next;
        if cursor == 0 {
            break;
        }
        assert!(calls < 10_000, "SCAN does not terminate");
    }
    assert_eq!(seen.len(), 10_000);
    assert!(seen.values().all(|&n| n == 1), "some keys came back twice");
    // redis-rs's own SCAN iterator works through Keyway too.
    let iter: redis::Iter<String> = con.scan_match("scan:1*").unwrap();
    assert_eq!(iter.count(), 1111);
    // A cursor Keyway did not issue is refused.
    let err = redis::cmd("SCAN")
        .arg("1023")
        .query::<redis::Value>(&mut con)
        .unwrap_err();
    assert!(err.to_string().contains("invalid cursor"), "{err}");
}

#[test]
fn a_dead_server_fails_fast_and_others_keep_working() {
    let (mut a, b, c) = three();
    // Without failover: the dead server's keys answer errors (tests/failover.rs covers the rest).
    let proxy = Proxy::start_toml(&config_toml(
        &[&a, &b, &c],
        "timeout = \"500ms\"\n[pool.health]\nfailover = \"none\"",
    ));
    let mut con = proxy.client();
    let dead_key = key_on(&proxy, 0, "dead");
    let live_key = key_on(&proxy, 1, "live");
    let _: () = con.set(&dead_key, 1).unwrap();
    let port = a.port;
    a.kill();
    let start = Instant::now();
    let err = con.get::<_, Option<i64>>(&dead_key).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(
        err.to_string().contains("'s0'"),
        "error names the server: {err}"
    );
    // Other servers' keys keep working, over and over while s0 is down.
    for i in 0..100 {
        let _: () = con.set(&live_key, i).unwrap();
        let err = con.get::<_, Option<i64>>(&dead_key).unwrap_err();
        assert!(err.to_string().contains("s0"), "{err}");
    }
    // The server comes back on its address: Keyway reconnects by itself.
    let _a = RedisServer::start_on(port);
    assert!(wait_until(Duration::from_secs(5), || con
        .set::<_, _, ()>(&dead_key, 2)
        .is_ok()));
    let v: i64 = con.get(&dead_key).unwrap();
    assert_eq!(v, 2);
}

#[test]
fn a_hung_server_answers_an_error_within_the_timeout() {
    let (a, b, c) = three();
    let proxy = Proxy::start_toml(&config_toml(
        &[&a, &b, &c],
        "timeout = \"300ms\"\n[pool.health]\nfailover = \"none\"",
    ));
    let mut con = proxy.client();
    let hung_key = key_on(&proxy, 0, "hung");
    let live_key = key_on(&proxy, 2, "live");
    a.signal("STOP");
    let start = Instant::now();
    let err = con.set::<_, _, ()>(&hung_key, 1).unwrap_err();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(
        err.to_string().contains("s0") && err.to_string().contains("did not answer"),
        "{err}"
    );
    let _: () = con.set(&live_key, 1).unwrap();
    a.signal("CONT");
    assert!(wait_until(Duration::from_secs(5), || con
        .set::<_, _, ()>(&hung_key, 2)
        .is_ok()));
}

#[test]
fn malformed_input_gets_a_protocol_error_and_only_that_client_is_closed() {
    let a = RedisServer::start();
    let proxy = Proxy::start(&[&a]);
    let mut good = proxy.client();
    let _: () = good.set("k", "v").unwrap();
    for bad in [
        &b"*1\r\n$x\r\n"[..],
        b"*2\r\n$3\r\nGET\r\n:1\r\n",
        b"*1\r\n$10000000000\r\n",
        b"*1\r\n$-1\r\n",
        b"SET \"unbalanced\r\n",
    ] {
        let mut raw = RawClient::connect(proxy.addr);
        raw.send(b"PING\r\n");
        raw.send(bad);
        let reply = String::from_utf8_lossy(&raw.read_to_close()).to_string();
        assert!(
            reply.starts_with("+PONG\r\n-ERR Protocol error: "),
            "{bad:?} -> {reply}"
        );
    }
    let v: String = good.get("k").unwrap();
    assert_eq!(v, "v");
}

#[test]
fn unknown_and_refused_commands_are_named() {
    let a = RedisServer::start();
    let proxy = Proxy::start(&[&a]);
    let mut con = proxy.client();
    let err = redis::cmd("FOOBAR")
        .arg("x")
        .query::<redis::Value>(&mut con)
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown command 'FOOBAR'"),
        "{err}"
    );
    for cmd in [
        "MOVE",
        "SWAPDB",
        "MONITOR",
        "SHUTDOWN",
        "BGSAVE",
        "REPLICAOF",
    ] {
        let mut c = redis::cmd(cmd);
        if cmd == "MOVE" || cmd == "SWAPDB" || cmd == "REPLICAOF" {
            c.arg("a").arg("1");
        }
        let err = c.query::<redis::Value>(&mut con).unwrap_err();
        assert!(
            err.to_string().to_lowercase().contains(&cmd.to_lowercase()),
            "{cmd}: {err}"
        );
    }
    let err = redis::cmd("SELECT")
        .arg(1)
        .query::<redis::Value>(&mut con)
        .unwrap_err();
    assert!(err.to_string().contains("database 0"), "{err}");
    let err = redis::cmd("GET")
        .query::<redis::Value>(&mut con)
        .unwrap_err();
    assert!(
        err.to_string().contains("wrong number of arguments"),
        "{err}"
    );
    // The connection is still usable after all those errors.
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn local_commands_are_answered_by_keyway() {
    let a = RedisServer::start();
    let proxy = Proxy::start(&[&a]);
    let mut con = proxy.client();
    let echo: String = redis::cmd("ECHO").arg("hi").query(&mut con).unwrap();
    assert_eq!(echo, "hi");
    let _: () = redis::cmd("SELECT").arg(0).query(&mut con).unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("me")
        .query(&mut con)
        .unwrap();
    let name: String = redis::cmd("CLIENT").arg("GETNAME").query(&mut con).unwrap();
    assert_eq!(name, "me");
    let info: String = redis::cmd("INFO").query(&mut con).unwrap();
    assert!(
        info.contains("# Keyway") && info.contains("topology_version:1"),
        "{info}"
    );
    assert!(info.contains("name=s0"), "{info}");
    let err = redis::cmd("HELLO")
        .arg(4)
        .query::<redis::Value>(&mut con)
        .unwrap_err();
    assert_eq!(err.code(), Some("NOPROTO"), "{err}");
    let hello: redis::Value = redis::cmd("HELLO").arg(2).query(&mut con).unwrap();
    assert!(format!("{hello:?}").contains("standalone"), "{hello:?}");
    let n: i64 = redis::cmd("COMMAND").arg("COUNT").query(&mut con).unwrap();
    assert!(n > 200, "{n}");
    // QUIT answers OK and closes.
    let mut raw = RawClient::connect(proxy.addr);
    raw.send(b"QUIT\r\nPING\r\n");
    assert_eq!(raw.read_to_close(), b"+OK\r\n");
}

#[test]
fn redis_cli_spreads_ten_thousand_keys_evenly() {
    let (a, b, c) = three();
    let proxy = Proxy::start(&[&a, &b, &c]);
    let mut input = String::new();
    for i in 0..10_000 {
        input.push_str(&format!("SET key:{i} value:{i}\n"));
    }
    let out = run_redis_cli(&proxy, &[], &input);
    assert_eq!(
        out.matches("OK").count(),
        10_000,
        "{}",
        &out[..out.len().min(500)]
    );
    let mut input = String::new();
    for i in (0..10_000).step_by(7) {
        input.push_str(&format!("GET key:{i}\n"));
    }
    let out = run_redis_cli(&proxy, &[], &input);
    let want: String = (0..10_000)
        .step_by(7)
        .map(|i| format!("value:{i}\n"))
        .collect();
    assert_eq!(out, want);
    for s in [&a, &b, &c] {
        let n = s.dbsize();
        assert!(
            (3000..=3666).contains(&n),
            "a server holds {n} of 10000 keys"
        );
    }
}

fn run_redis_cli(proxy: &Proxy, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &proxy.addr.port().to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn redis_benchmark_runs_without_errors() {
    let (a, b, c) = three();
    let proxy = Proxy::start(&[&a, &b, &c]);
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &proxy.addr.port().to_string()])
        .args(["-t", "set,get,incr,lpush,lpop,sadd,hset,mset"])
        .args(["-P", "16", "-c", "50", "-n", "100000", "-r", "100000", "-q"])
        .output()
        .expect("redis-benchmark is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("ERR") && !stderr.contains("ERR"),
        "{stdout}\n{stderr}"
    );
    for t in [
        "SET", "GET", "INCR", "LPUSH", "LPOP", "SADD", "HSET", "MSET",
    ] {
        assert!(
            stdout.contains(&format!("{t}:")) || stdout.contains(&format!("{t} (")),
            "{t} missing: {stdout}"
        );
    }
    // The writes really landed, spread over the pool.
    for s in [&a, &b, &c] {
        assert!(s.dbsize() > 0);
    }
}

#[test]
fn redis_rs_async_multiplexed_connection_works() {
    let (a, b, c) = three();
    let proxy = Proxy::start(&[&a, &b, &c]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = redis::Client::open(proxy.url()).unwrap();
        let con = client.get_multiplexed_async_connection().await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..20 {
            let mut con = con.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    let key = format!("async:{t}:{i}");
                    let _: () = redis::AsyncCommands::set(&mut con, &key, i).await.unwrap();
                    let v: i64 = redis::AsyncCommands::get(&mut con, &key).await.unwrap();
                    assert_eq!(v, i);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut con = con.clone();
        let n: i64 = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
        assert_eq!(n, 1000);
    });
}

#[test]
fn both_runtime_flavors_serve_the_same_traffic() {
    // threads = 1 (the default) runs one current-thread runtime; more threads run tokio's
    // work-stealing scheduler. Both must serve pipelines, splits and concurrent clients alike.
    let (a, b, c) = three();
    for threads in ["1", "3"] {
        let toml = config_toml(&[&a, &b, &c], "")
            .replace("[pool]", &format!("threads = {threads}\n[pool]"));
        let proxy = support::ProxyProcess::start(&toml, &[]);
        let url = format!("redis://{}/", proxy.addr);
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let mut con = redis::Client::open(url.as_str())
                        .and_then(|c| c.get_connection())
                        .expect("connect to keyway");
                    let mut pipe = redis::pipe();
                    for i in 0..500 {
                        pipe.cmd("SET").arg(format!("t{w}:{i}")).arg(i).ignore();
                    }
                    pipe.query::<()>(&mut con).expect("pipeline");
                    let keys: Vec<String> = (0..500).map(|i| format!("t{w}:{i}")).collect();
                    let values: Vec<i64> = con.mget(&keys).expect("MGET across servers");
                    assert_eq!(values, (0..500).collect::<Vec<i64>>());
                })
            })
            .collect();
        for w in workers {
            w.join().expect("client thread");
        }
        // The setting took: tokio names its worker threads; a current-thread runtime has none.
        let workers = std::fs::read_dir(format!("/proc/{}/task", proxy.child.id()))
            .expect("proc task dir")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.starts_with("tokio-r"))
            .count();
        if threads == "1" {
            assert_eq!(workers, 0, "threads = 1 runs on the main thread");
        } else {
            assert!(workers >= 3, "threads = 3 runs 3 workers, saw {workers}");
        }
    }
    for s in [&a, &b, &c] {
        assert!(s.dbsize() > 300, "server holds {}", s.dbsize());
    }
}

/// Keyway's own keys (two-phase locks, intents, decisions) are out of clients' reach: a client
/// that set `__keyway:lock:acct:42` would block every later write to `acct:42`. Every command
/// naming one is refused as a whole, and nothing is written.
#[test]
fn keyways_own_keys_are_out_of_clients_reach() {
    let (a, b, c) = three();
    let proxy = Proxy::start(&[&a, &b, &c]);
    let mut con = proxy.client();
    let refused: [&[&str]; 8] = [
        &["SET", "__keyway:lock:acct:42", "x"],
        &["GET", "__keyway:tx:1"],
        &["DEL", "__keyway:txs"],
        &["MSET", "plain", "1", "__keyway:decision:1", "commit"],
        &["MGET", "plain", "__keyway:tx:1"],
        &["RENAME", "{t}a", "__keyway:lock:{t}a"],
        &[
            "EVAL",
            "return redis.call('SET', KEYS[1], 'x')",
            "1",
            "__keyway:lock:k",
        ],
        &["HSET", "__keyway:tx:9", "primary", "s0"],
    ];
    for args in refused {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let err = cmd.query::<redis::Value>(&mut con).unwrap_err();
        assert!(
            err.to_string()
                .contains("'__keyway:' are keyway's own bookkeeping"),
            "{args:?}: {err}"
        );
    }
    // Nothing was written, the MSET's plain key included.
    for s in [&a, &b, &c] {
        assert_eq!(s.dbsize(), 0);
    }
    // SORT reads the keys its GET and BY patterns make of the elements: a list holding a
    // Keyway key's name cannot be sorted into reading it.
    let secret = support::key_on(&proxy, 0, "__keyway:tx:");
    let list = support::key_on(&proxy, 0, "l");
    let _: () = redis::cmd("SET")
        .arg(&secret)
        .arg("staged")
        .query(&mut a.client())
        .unwrap();
    let _: () = con.rpush(&list, &secret).unwrap();
    for pattern in ["*", "*->steps"] {
        let err = redis::cmd("SORT")
            .arg(&list)
            .arg("BY")
            .arg("nosort")
            .arg("GET")
            .arg(pattern)
            .query::<redis::Value>(&mut con)
            .unwrap_err();
        assert!(
            err.to_string().contains("SORT BY and GET patterns"),
            "{err}"
        );
    }
    let own: Vec<String> = redis::cmd("SORT")
        .arg(&list)
        .arg("BY")
        .arg("nosort")
        .arg("GET")
        .arg("#")
        .query(&mut con)
        .unwrap();
    assert_eq!(own, std::slice::from_ref(&secret));
    let _: () = con.del(&list).unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&secret)
        .query(&mut a.client())
        .unwrap();
    // The keys they name work as ever.
    let _: () = con.set("acct:42", "1").unwrap();
    let got: String = con.get("acct:42").unwrap();
    assert_eq!(got, "1");
}
