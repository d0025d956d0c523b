//! MULTI/EXEC through Keyway: redis-server's replies and errors byte for byte, transactions
//! replicated under `write = all`, atomic across servers under `write = "two_phase"`, and what a
//! client sees when a server dies or the client goes away in the middle.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use support::*;

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "\\r\\n")
}

/// Transactions of one slot (the `{a}` tag), every error path of queuing and EXEC.
const SEQUENCE: &[&[&str]] = &[
    &["EXEC"],
    &["DISCARD"],
    &["MULTI"],
    &["MULTI"],
    &["SET", "{a}1", "x"],
    &["GET", "{a}1"],
    &["INCR", "{a}2"],
    &["PING"],
    &["ECHO", "e"],
    &["HSET", "{a}h", "f", "v"],
    &["HGETALL", "{a}h"],
    &["GET", "{a}missing"],
    &["EXEC"],
    &["MULTI"],
    &["SET", "{a}1", "y"],
    &["NOSUCHCOMMAND", "x"],
    &["EXEC"],
    &["GET", "{a}1"],
    &["MULTI"],
    &["GET"],
    &["EXEC"],
    &["MULTI"],
    &["WATCH", "{a}1"],
    &["SET", "{a}1", "z"],
    &["DISCARD"],
    // WATCH: an untouched key lets EXEC run; UNWATCH, DISCARD and EXEC end the watch.
    &["WATCH", "{a}1", "{a}2"],
    &["WATCH", "{a}h"],
    &["MULTI"],
    &["INCR", "{a}2"],
    &["EXEC"],
    &["WATCH", "{a}2"],
    &["UNWATCH"],
    &["SET", "{a}2", "7"],
    &["MULTI"],
    &["INCR", "{a}2"],
    &["EXEC"],
    &["WATCH", "{a}2"],
    &["MULTI"],
    &["DISCARD"],
    &["SET", "{a}2", "8"],
    &["MULTI"],
    &["GET", "{a}2"],
    &["EXEC"],
    &["GET", "{a}1"],
    &["MULTI"],
    &["EXEC"],
    &["UNWATCH"],
    &["MULTI"],
    &["UNWATCH"],
    &["EXEC"],
    &["MULTI"],
    &["SET", "{a}1", "w"],
    &["LPUSH", "{a}1", "x"],
    &["INCR", "{a}1"],
    &["EXEC"],
    &["MSET", "{a}m1", "1", "{a}m2", "2"],
    &["MULTI"],
    &["MGET", "{a}m1", "{a}m2", "{a}m3"],
    &["DEL", "{a}m1", "{a}m2"],
    &["EXISTS", "{a}m1"],
    &["EXEC"],
    &["MULTI"],
    &["RESET"],
    &["EXEC"],
    // Commands Redis flags no-multi are refused as redis-server refuses them, before Keyway's
    // own refusal of server administration.
    &["MULTI"],
    &["SET", "{a}1", "v"],
    &["SAVE"],
    &["SYNC"],
    &["EXEC"],
    &["GET", "{a}1"],
];

fn compare_sequence(pool: &str, proto: &str) {
    let direct = RedisServer::start();
    let (a, b, c) = three();
    let proxy = Proxy::start_toml(&config_toml(&[&a, &b, &c], pool));
    let mut d = RawClient::connect(direct.addr());
    let mut k = RawClient::connect(proxy.addr);
    d.call(&["HELLO", proto]);
    k.call(&["HELLO", proto]);
    for cmd in SEQUENCE {
        let want = d.call(cmd);
        let got = k.call(cmd);
        assert_eq!(show(&got), show(&want), "{pool} RESP{proto}: {cmd:?}");
    }
}

#[test]
fn transactions_answer_as_redis_server() {
    for proto in ["2", "3"] {
        compare_sequence("", proto);
        compare_sequence("replicas = 2\nwrite = \"all\"", proto);
        compare_sequence("replicas = 2\nwrite = \"quorum\"", proto);
    }
}

/// A key changed by another client between WATCH and EXEC makes EXEC answer a null, as in
/// redis-server; the held connection is bounded by `limits.max_transactions` and freed when its
/// client leaves.
#[test]
fn watch_aborts_on_a_change_and_its_connections_are_bounded() {
    for pool in ["", "replicas = 2\nwrite = \"all\""] {
        let direct = RedisServer::start();
        let servers = servers(3);
        let refs: Vec<&RedisServer> = servers.iter().collect();
        let mut toml = config_toml(&refs, pool);
        toml.push_str("\n[limits]\nmax_transactions = 1\n");
        let proxy = Proxy::start_toml(&toml);
        for (addr, name) in [(direct.addr(), "redis"), (proxy.addr, "keyway")] {
            let mut a = RawClient::connect(addr);
            let mut b = RawClient::connect(addr);
            a.call(&["SET", "{w}k", "1"]);
            assert_eq!(a.call(&["WATCH", "{w}k"]), b"+OK\r\n", "{name}");
            assert_eq!(b.call(&["SET", "{w}k", "2"]), b"+OK\r\n");
            a.call(&["MULTI"]);
            a.call(&["SET", "{w}k", "3"]);
            assert_eq!(a.call(&["EXEC"]), b"*-1\r\n", "{name} {pool}");
            assert_eq!(a.call(&["GET", "{w}k"]), b"$1\r\n2\r\n", "{name}");
            // In RESP3 the aborted EXEC is a null too.
            a.call(&["HELLO", "3"]);
            a.call(&["WATCH", "{w}k"]);
            b.call(&["SET", "{w}k", "4"]);
            a.call(&["MULTI"]);
            a.call(&["SET", "{w}k", "5"]);
            assert_eq!(a.call(&["EXEC"]), b"_\r\n", "{name} {pool}");
            a.call(&["HELLO", "2"]);
            if name == "redis" {
                continue;
            }
            // One held connection at most: a second watcher is told to retry.
            assert_eq!(a.call(&["WATCH", "{w}k"]), b"+OK\r\n");
            let refused = show(&b.call(&["WATCH", "{w}k"]));
            assert!(
                refused.starts_with("-TRYAGAIN") && refused.contains("limits.max_transactions"),
                "{refused}"
            );
            // A watcher that leaves frees its connection.
            drop(a);
            assert!(wait_until(std::time::Duration::from_secs(5), || {
                b.call(&["WATCH", "{w}k"]) == b"+OK\r\n"
            }));
            // An applied watched write reaches every replica.
            b.call(&["MULTI"]);
            b.call(&["SET", "{w}k", "6"]);
            assert_eq!(b.call(&["EXEC"]), b"*1\r\n+OK\r\n");
            for i in replica_set(&proxy, "{w}k") {
                let mut con = servers[i].client();
                let v: String = redis::cmd("GET").arg("{w}k").query(&mut con).unwrap();
                assert_eq!(v, "6", "server {i} {pool}");
            }
            // Keys of another slot cannot be watched with these.
            let other = (0..100)
                .map(|i| format!("k{i}"))
                .find(|key| replica_set(&proxy, key) != replica_set(&proxy, "{w}k"))
                .unwrap();
            assert_eq!(b.call(&["WATCH", "{w}k"]), b"+OK\r\n");
            assert!(b.call(&["WATCH", &other]).starts_with(b"-CROSSSLOT"));
            assert!(b
                .call(&["WATCH", "{w}k", &other])
                .starts_with(b"-CROSSSLOT"));
            assert_eq!(b.call(&["UNWATCH"]), b"+OK\r\n");
            // EXEC unwatched: a key of another slot may be watched now.
            assert_eq!(b.call(&["WATCH", &other]), b"+OK\r\n");
        }
    }
}

#[test]
fn watch_is_refused_under_two_phase() {
    let servers = servers(2);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start_toml(&config_toml(&refs, "replicas = 2\nwrite = \"two_phase\""));
    let mut k = RawClient::connect(proxy.addr);
    let refused = show(&k.call(&["WATCH", "a"]));
    assert!(
        refused.contains("not supported under write = two_phase"),
        "{refused}"
    );
}

#[test]
fn a_second_slot_is_crossslot_and_aborts_the_transaction() {
    let (a, b, c) = three();
    let proxy = Proxy::start(&[&a, &b, &c]);
    let mut k = RawClient::connect(proxy.addr);
    let other = (0..100)
        .map(|i| format!("k{i}"))
        .find(|key| replica_set(&proxy, key) != replica_set(&proxy, "{a}1"))
        .unwrap();
    assert_eq!(k.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(k.call(&["SET", "{a}1", "x"]), b"+QUEUED\r\n");
    let cross = show(&k.call(&["SET", &other, "x"]));
    assert!(
        cross.starts_with("-CROSSSLOT Keys in request don't hash to the same slot"),
        "{cross}"
    );
    assert_eq!(
        k.call(&["EXEC"]),
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(k.call(&["GET", "{a}1"]), b"$-1\r\n");
    // Commands that concern every server cannot be queued.
    assert_eq!(k.call(&["MULTI"]), b"+OK\r\n");
    let keys = show(&k.call(&["KEYS", "*"]));
    assert!(keys.contains("concerns every server"), "{keys}");
    assert!(k.call(&["EXEC"]).starts_with(b"-EXECABORT"));
}

#[test]
fn redis_py_pipelines_are_transactions_that_work() {
    let (a, b, c) = three();
    let proxy = Proxy::start(&[&a, &b, &c]);
    let script = r#"
import redis, sys
r = redis.Redis(port=int(sys.argv[1]))
p = r.pipeline()
p.set('{u}a', '1'); p.incr('{u}b'); p.get('{u}a'); p.hset('{u}h', 'f', 'v'); p.hgetall('{u}h')
print(p.execute())
"#;
    let Some(out) = python(script, proxy.addr.port()) else {
        eprintln!("redis-py is not installed: skipped (scripts/test.sh installs it)");
        return;
    };
    assert_eq!(out.trim(), "[True, 1, b'1', 1, {b'f': b'v'}]");
}

/// Runs a Python script with the port as argument; `None` if redis-py is missing.
fn python(script: &str, port: u16) -> Option<String> {
    let out = std::process::Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .output()
        .ok()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No module named 'redis'") {
        return None;
    }
    assert!(out.status.success(), "{err}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn replicated_transactions_apply_on_every_replica() {
    let servers = servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start_toml(&config_toml(&refs, "replicas = 2\nwrite = \"all\""));
    let mut k = RawClient::connect(proxy.addr);
    k.call(&["MULTI"]);
    k.call(&["SET", "{r}a", "1"]);
    k.call(&["INCRBY", "{r}b", "5"]);
    assert_eq!(k.call(&["EXEC"]), b"*2\r\n+OK\r\n:5\r\n");
    for i in replica_set(&proxy, "{r}a") {
        let mut con = servers[i].client();
        let a: String = redis::cmd("GET").arg("{r}a").query(&mut con).unwrap();
        let b: i64 = redis::cmd("GET").arg("{r}b").query(&mut con).unwrap();
        assert_eq!((a.as_str(), b), ("1", 5), "server {i}");
    }
}

#[test]
fn two_phase_transactions_are_atomic_across_servers() {
    let servers = servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start_toml(&config_toml(&refs, "replicas = 2\nwrite = \"two_phase\""));
    // Keys on different servers.
    let first = "acct:1".to_string();
    let second = (2..200)
        .map(|i| format!("acct:{i}"))
        .find(|k| replica_set(&proxy, k) != replica_set(&proxy, &first))
        .unwrap();
    let mut k = RawClient::connect(proxy.addr);
    k.call(&["SET", &first, "100"]);
    k.call(&["SET", &second, "0"]);
    assert_eq!(k.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(k.call(&["DECRBY", &first, "30"]), b"+QUEUED\r\n");
    assert_eq!(k.call(&["INCRBY", &second, "30"]), b"+QUEUED\r\n");
    assert_eq!(k.call(&["GET", &second]), b"+QUEUED\r\n");
    assert_eq!(k.call(&["MSET", "x:1", "a", "x:2", "b"]), b"+QUEUED\r\n");
    assert_eq!(
        show(&k.call(&["EXEC"])),
        "*4\\r\\n:70\\r\\n:30\\r\\n$2\\r\\n30\\r\\n+OK\\r\\n"
    );
    // Applied on every replica of each key.
    for (key, want) in [(&first, "70"), (&second, "30")] {
        for i in replica_set(&proxy, key) {
            let mut con = servers[i].client();
            let v: String = redis::cmd("GET").arg(key).query(&mut con).unwrap();
            assert_eq!(v, want, "{key} on server {i}");
        }
    }
    // A command that cannot be staged aborts the whole transaction: nothing applied.
    k.call(&["MULTI"]);
    k.call(&["SET", &first, "0"]);
    let refused = show(&k.call(&["EVAL", "return 1", "0"]));
    assert!(refused.starts_with("-ERR"), "{refused}");
    assert!(k.call(&["EXEC"]).starts_with(b"-EXECABORT"));
    assert_eq!(k.call(&["GET", &first]), b"$2\r\n70\r\n");
    // In RESP3 too.
    k.call(&["HELLO", "3"]);
    k.call(&["MULTI"]);
    k.call(&["GET", "nothing:here"]);
    k.call(&["INCR", &second]);
    assert_eq!(show(&k.call(&["EXEC"])), "*2\\r\\n_\\r\\n:31\\r\\n");
}

#[test]
fn a_client_that_leaves_mid_transaction_applies_nothing() {
    let a = RedisServer::start();
    let proxy = Proxy::start(&[&a]);
    let mut k = RawClient::connect(proxy.addr);
    k.call(&["MULTI"]);
    k.call(&["SET", "gone", "1"]);
    drop(k);
    let mut k = RawClient::connect(proxy.addr);
    assert_eq!(k.call(&["GET", "gone"]), b"$-1\r\n");
    assert_eq!(k.call(&["EXEC"]), b"-ERR EXEC without MULTI\r\n");
}

#[test]
fn a_dead_server_fails_exec_with_its_name_and_keyway_serves_on() {
    let mut a = RedisServer::start();
    let proxy = Proxy::start_toml(&config_toml(&[&a], "timeout = \"300ms\""));
    let mut k = RawClient::connect(proxy.addr);
    k.call(&["MULTI"]);
    k.call(&["SET", "k", "1"]);
    a.kill();
    let err = show(&k.call(&["EXEC"]));
    assert!(err.starts_with("-ERR") && err.contains("s0"), "{err}");
    // The client is out of the transaction and can start another.
    assert_eq!(k.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(k.call(&["DISCARD"]), b"+OK\r\n");
}
