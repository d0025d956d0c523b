//! Keyway's face as a server: INFO's sections and fields as client libraries and exporters read
//! them, over the pool, compared with the servers themselves.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::collections::HashMap;

use support::*;

fn fields(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn sections(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn info_has_redis_servers_fields_over_the_pool() {
    let servers = servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start_toml(&config_toml(&refs, "replicas = 2\nwrite = \"all\""));
    let mut con = proxy.client();
    for i in 0..30 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut con)
            .unwrap();
    }
    for i in 0..10 {
        let _: () = redis::cmd("EXPIRE")
            .arg(format!("k{i}"))
            .arg(1000)
            .query(&mut con)
            .unwrap();
    }
    let info: String = redis::cmd("INFO").query(&mut con).unwrap();
    assert_eq!(
        sections(&info),
        [
            "Server",
            "Clients",
            "Memory",
            "Stats",
            "Replication",
            "Keyspace",
            "Keyway"
        ]
    );
    let f = fields(&info);
    let mut direct = servers[0].client();
    let server_info: String = redis::cmd("INFO").query(&mut direct).unwrap();
    let sf = fields(&server_info);
    assert_eq!(f["redis_version"], sf["redis_version"]);
    assert_eq!(f["redis_mode"], "standalone");
    assert_eq!(f["arch_bits"], "64");
    // The same machine: redis-server's uname line.
    assert_eq!(f["os"], sf["os"]);
    assert_eq!(f["run_id"].len(), 40);
    assert!(f["run_id"].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(f["run_id"], sf["run_id"]);
    assert_eq!(f["tcp_port"], proxy.addr.port().to_string());
    assert_eq!(f["role"], "master");
    // Each key once, though each is on two servers.
    assert_eq!(
        f["db0"].split(',').take(2).collect::<Vec<_>>(),
        ["keys=30", "expires=10"]
    );
    // Memory is the servers' together.
    let used: i64 = f["used_memory"].parse().unwrap();
    let one: i64 = sf["used_memory"].parse().unwrap();
    assert!(used > one && used < 10 * one, "{used} vs {one}");
    assert!(f["used_memory_human"].ends_with('M') || f["used_memory_human"].ends_with('K'));
    let processed: i64 = f["total_commands_processed"].parse().unwrap();
    assert!(processed >= 40, "{processed}");
    // Sections by name, in redis-server's order, any case.
    let some: String = redis::cmd("INFO")
        .arg("KEYSPACE")
        .arg("server")
        .query(&mut con)
        .unwrap();
    assert_eq!(sections(&some), ["Server", "Keyspace"]);
    let none: String = redis::cmd("INFO")
        .arg("nosuchsection")
        .query(&mut con)
        .unwrap();
    assert_eq!(none, "");
    // redis-server writes an empty keyspace section as its title alone.
    let empty = Proxy::start(&[&servers[0]]);
    let mut raw = RawClient::connect(empty.addr);
    raw.call(&["FLUSHALL"]);
    assert_eq!(
        raw.call(&["INFO", "keyspace"]),
        b"$12\r\n# Keyspace\r\n\r\n"
    );
    // In RESP3, verbatim text, as redis-server sends it.
    raw.call(&["HELLO", "3"]);
    assert_eq!(
        raw.call(&["INFO", "keyspace"]),
        b"=16\r\ntxt:# Keyspace\r\n\r\n"
    );
    let mut d = RawClient::connect(servers[0].addr());
    d.call(&["HELLO", "3"]);
    assert_eq!(
        d.call(&["INFO", "keyspace"]),
        b"=16\r\ntxt:# Keyspace\r\n\r\n"
    );
}

#[test]
fn redis_py_reads_info_and_the_server_version() {
    let a = RedisServer::start();
    let proxy = Proxy::start(&[&a]);
    let script = r#"
import redis, sys
r = redis.Redis(port=int(sys.argv[1]))
i = r.info()
print(i['redis_version'], i['redis_mode'], r.info('keyspace'))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &proxy.addr.port().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No module named 'redis'") {
        eprintln!("redis-py is not installed: skipped (scripts/test.sh installs it)");
        return;
    }
    assert!(out.status.success(), "{err}");
    let mut con = a.client();
    let info: String = redis::cmd("INFO").arg("server").query(&mut con).unwrap();
    let version = fields(&info)["redis_version"].clone();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{version} standalone {{}}")
    );
}

/// The CLIENT subcommands' errors, and CLIENT REPLY's silences, byte for byte with redis-server.
#[test]
fn client_subcommands_answer_as_redis_server() {
    let direct = RedisServer::start();
    let a = RedisServer::start();
    let proxy = Proxy::start(&[&a]);
    let cases: &[&[&str]] = &[
        &["CLIENT", "SETNAME", "me"],
        &["CLIENT", "LIST", "TYPE", "pubsub"],
        &["CLIENT", "LIST", "TYPE", "foo"],
        &["CLIENT", "LIST", "ID", "1", "x"],
        &["CLIENT", "LIST", "FOO"],
        &["CLIENT", "NO-EVICT", "on"],
        &["CLIENT", "NO-EVICT", "off"],
        &["CLIENT", "NO-EVICT", "maybe"],
        &["CLIENT", "KILL", "1.2.3.4:5"],
        &["CLIENT", "KILL", "ID", "999999"],
        &["CLIENT", "KILL", "ID", "0"],
        &["CLIENT", "KILL", "USER", "nobody"],
        &["CLIENT", "KILL", "TYPE", "pubsub"],
        &["CLIENT", "KILL", "TYPE", "foo"],
        &["CLIENT", "KILL", "FOO", "bar"],
        &["CLIENT", "KILL", "SKIPME", "maybe"],
        &["CLIENT", "REPLY", "maybe"],
        &["CLIENT", "NO-TOUCH", "on"],
    ];
    let mut d = RawClient::connect(direct.addr());
    let mut k = RawClient::connect(proxy.addr);
    for cmd in cases {
        assert_eq!(
            String::from_utf8_lossy(&k.call(cmd)),
            String::from_utf8_lossy(&d.call(cmd)),
            "{cmd:?}"
        );
    }
    // CLIENT REPLY: SKIP and OFF answer nothing, nor do the commands they silence.
    let script =
        b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$4\r\nSKIP\r\n*2\r\n$4\r\nPING\r\n$1\r\na\r\n\
*2\r\n$4\r\nPING\r\n$1\r\nb\r\n*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$3\r\nOFF\r\n\
*2\r\n$4\r\nPING\r\n$1\r\nc\r\n*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$1\r\n1\r\n\
*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$2\r\nON\r\n*2\r\n$3\r\nGET\r\n$1\r\nx\r\n";
    for c in [&mut d, &mut k] {
        c.send(script);
    }
    let want = [
        d.read_reply().unwrap(),
        d.read_reply().unwrap(),
        d.read_reply().unwrap(),
    ];
    let got = [
        k.read_reply().unwrap(),
        k.read_reply().unwrap(),
        k.read_reply().unwrap(),
    ];
    assert_eq!(got, want);
    assert_eq!(got[2], b"$1\r\n1\r\n", "the silenced SET ran");
}

#[test]
fn client_list_info_and_kill_act_on_keyways_clients() {
    let a = RedisServer::start();
    let proxy = Proxy::start(&[&a]);
    let mut me = RawClient::connect(proxy.addr);
    let mut other = RawClient::connect(proxy.addr);
    other.call(&["CLIENT", "SETNAME", "worker"]);
    other.call(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]);
    other.call(&["HELLO", "3"]);
    other.call(&["MULTI"]);
    other.call(&["SET", "a", "1"]);
    let other_id = String::from_utf8_lossy(&me.call(&["CLIENT", "LIST"])).into_owned();
    let line = other_id
        .lines()
        .find(|l| l.contains("name=worker"))
        .unwrap_or_else(|| panic!("{other_id}"))
        .to_owned();
    for want in [
        "resp=3",
        "lib-name=redis-py",
        "multi=1",
        "user=default",
        "flags=N",
    ] {
        assert!(line.contains(want), "{want}: {line}");
    }
    let id = fields(&line.replace(' ', "\n").replace('=', ":"))["id"].clone();
    // CLIENT INFO is the caller's own line.
    let info = String::from_utf8_lossy(&me.call(&["CLIENT", "INFO"])).into_owned();
    let my_id = String::from_utf8_lossy(&me.call(&["CLIENT", "ID"])).into_owned();
    assert!(
        info.contains(&format!("id={} ", my_id.trim_start_matches(':').trim())),
        "{info}"
    );
    let listed = String::from_utf8_lossy(&me.call(&["CLIENT", "LIST", "ID", &id])).into_owned();
    assert_eq!(
        listed.lines().filter(|l| l.contains("id=")).count(),
        1,
        "{listed}"
    );
    // KILL by id closes that client, and only it.
    assert_eq!(me.call(&["CLIENT", "KILL", "ID", &id]), b":1\r\n");
    assert!(other.read_to_close().is_empty());
    assert_eq!(me.call(&["PING"]), b"+PONG\r\n");
    // SKIPME yes (the default) spares the caller.
    assert_eq!(me.call(&["CLIENT", "KILL", "TYPE", "normal"]), b":0\r\n");
    // The old form, by address.
    let mut third = RawClient::connect(proxy.addr);
    assert_eq!(third.call(&["PING"]), b"+PONG\r\n");
    let addr = third.stream.local_addr().unwrap().to_string();
    assert_eq!(me.call(&["CLIENT", "KILL", &addr]), b"+OK\r\n");
    assert!(third.read_to_close().is_empty());
    let metrics = proxy.metrics();
    assert_eq!(
        metric(
            &metrics,
            "keyway_client_disconnects_total{reason=\"killed\"}"
        ),
        Some(2.0)
    );
}

/// A key whose primary is `server` (an index into `servers`), found through `keyway route`'s
/// rule: set through Keyway, looked up on each server.
fn key_on(proxy: &mut redis::Connection, servers: &[RedisServer], server: usize) -> String {
    for i in 0..1000 {
        let key = format!("sk{i}");
        let _: () = redis::cmd("SET").arg(&key).arg(1).query(proxy).unwrap();
        let found: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query(&mut servers[server].client())
            .unwrap();
        if found == 1 {
            return key;
        }
    }
    panic!("no key found on server {server}");
}

#[test]
fn evalsha_and_fcall_load_what_a_server_lost_and_flushes_are_kept() {
    let servers = servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start_toml(&config_toml(&refs, ""));
    let mut con = proxy.client();
    let body = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(body)
        .query(&mut con)
        .unwrap();
    let lib = "#!lua name=kwlib\nredis.register_function('kwincr', function(keys, args) return redis.call('INCRBY', keys[1], args[1]) end)";
    let name: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(lib)
        .query(&mut con)
        .unwrap();
    assert_eq!(name, "kwlib");
    let key = key_on(&mut con, &servers, 2);
    // The server loses both, as after a restart without persistence.
    let mut direct = servers[2].client();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut direct)
        .unwrap();
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query(&mut direct)
        .unwrap();
    let n: i64 = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(1)
        .arg(&key)
        .arg(10)
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 11);
    let n: i64 = redis::cmd("FCALL")
        .arg("kwincr")
        .arg(1)
        .arg(&key)
        .arg(5)
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 16);
    let reloaded = metric(&proxy.metrics(), "keyway_scripts_reloaded_total").unwrap();
    assert_eq!(reloaded, 2.0);
    // Loaded on that server again, under the same names.
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .query(&mut direct)
        .unwrap();
    assert_eq!(exists, [1]);

    // A script never loaded through Keyway: NOSCRIPT, byte for byte as redis-server.
    let unknown = [
        "EVALSHA",
        "0123456789012345678901234567890123456789",
        "1",
        &key,
    ];
    let mut raw = RawClient::connect(proxy.addr);
    let mut raw_direct = RawClient::connect(servers[2].addr());
    assert_eq!(raw.call(&unknown), raw_direct.call(&unknown));

    // Flushed through Keyway: flushed for good, as on one redis-server.
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut con).unwrap();
    let _: () = redis::cmd("FUNCTION")
        .arg("DELETE")
        .arg("kwlib")
        .query(&mut con)
        .unwrap();
    let call = ["EVALSHA", &sha, "1", &key, "1"];
    let got = raw.call(&call);
    assert_eq!(got, raw_direct.call(&call));
    assert!(
        got.starts_with(b"-NOSCRIPT"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let call = ["FCALL", "kwincr", "1", &key, "1"];
    let got = raw.call(&call);
    assert_eq!(got, raw_direct.call(&call));
    assert!(
        got.starts_with(b"-ERR Function not found"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let reloaded = metric(&proxy.metrics(), "keyway_scripts_reloaded_total").unwrap();
    assert_eq!(reloaded, 2.0);
}

#[test]
fn config_get_answers_from_one_server_for_every_client() {
    let servers = servers(3);
    for (i, s) in servers.iter().enumerate() {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-samples")
            .arg(3 + i)
            .query(&mut s.client())
            .unwrap();
    }
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start_toml(&config_toml(&refs, ""));
    let answers: std::collections::HashSet<Vec<String>> = (0..6)
        .map(|_| {
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-samples")
                .query(&mut proxy.client())
                .unwrap()
        })
        .collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
}

/// Which of `servers` runs a script now (answers PING with -BUSY), if any.
fn busy_server(servers: &[RedisServer]) -> Option<usize> {
    servers
        .iter()
        .position(|s| raw_command(s.addr(), &["PING"]).is_ok_and(|r| r.starts_with(b"-BUSY")))
}

/// Samples `keyway_server_up{server}` for `period` and returns whether it was always 1.
fn stays_up(proxy: &Proxy, server: &str, period: std::time::Duration) -> bool {
    let series = format!("keyway_server_up{{server=\"{server}\"}}");
    let end = std::time::Instant::now() + period;
    while std::time::Instant::now() < end {
        if metric(&proxy.metrics(), &series) != Some(1.0) {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// SCRIPT KILL and FUNCTION KILL reach the server that runs the script (whichever it is, over a
/// connection of their own: the shared one waits behind the script) and answer as redis-server
/// does: -NOTBUSY when nothing runs, +OK once one was killed, the busy server's -BUSY for the
/// other kind. While a script runs past busy-reply-threshold the server stays up (its probes
/// get -BUSY, an answer) and other clients get its -BUSY, not a timeout.
#[test]
fn script_kill_and_function_kill_reach_the_busy_server() {
    let servers: Vec<RedisServer> = (0..2)
        .map(|_| RedisServer::start_with(&["--busy-reply-threshold", "100"]))
        .collect();
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start_toml(&config_toml(
        &refs,
        "timeout = \"500ms\"\n[pool.health]\ninterval = \"50ms\"\nfall = 2\nrise = 1\n",
    ));
    let direct = |args: &[&str]| raw_command(servers[0].addr(), args).unwrap();
    for kill in [["SCRIPT", "KILL"], ["FUNCTION", "KILL"]] {
        let got = raw_command(proxy.addr, &kill).unwrap();
        assert_eq!(got, direct(&kill), "{kill:?} with nothing running");
        assert_eq!(got, b"-NOTBUSY No scripts in execution right now.\r\n");
    }

    // A script that never ends, sent by one client through Keyway.
    let addr = proxy.addr;
    let spinner = std::thread::spawn(move || {
        raw_command(addr, &["EVAL", "while true do end", "0"]).unwrap_or_default()
    });
    assert!(wait_until(std::time::Duration::from_secs(5), || {
        busy_server(&servers).is_some()
    }));
    let busy = busy_server(&servers).unwrap();
    let name = format!("s{busy}");
    // Another client's request to that server gets the server's -BUSY once the script's
    // connection gave up on it (pool.timeout), not a timeout.
    let key = support::key_on(&proxy, busy, "k");
    assert!(
        wait_until(std::time::Duration::from_secs(5), || {
            raw_command(proxy.addr, &["GET", &key]).is_ok_and(|r| r.starts_with(b"-BUSY"))
        }),
        "{:?}",
        raw_command(proxy.addr, &["GET", &key])
    );
    assert!(
        stays_up(&proxy, &name, std::time::Duration::from_millis(600)),
        "a busy server was marked down"
    );
    // FUNCTION KILL cannot stop a script: the busy server's -BUSY says what can.
    let got = raw_command(proxy.addr, &["FUNCTION", "KILL"]).unwrap();
    assert!(
        got.starts_with(b"-BUSY"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let got = raw_command(proxy.addr, &["SCRIPT", "KILL"]).unwrap();
    assert_eq!(got, b"+OK\r\n");
    let spun = spinner.join().unwrap();
    assert!(spun.starts_with(b"-"), "{}", String::from_utf8_lossy(&spun));
    assert!(wait_until(std::time::Duration::from_secs(5), || {
        raw_command(proxy.addr, &["GET", &key]).is_ok_and(|r| r == b"$-1\r\n")
    }));
    assert_eq!(
        raw_command(proxy.addr, &["SCRIPT", "KILL"]).unwrap(),
        b"-NOTBUSY No scripts in execution right now.\r\n"
    );

    // The same for a function.
    let library =
        "#!lua name=spin\nredis.register_function('spin', function() while true do end end)";
    assert_eq!(
        raw_command(proxy.addr, &["FUNCTION", "LOAD", library]).unwrap(),
        b"$4\r\nspin\r\n"
    );
    let spinner =
        std::thread::spawn(move || raw_command(addr, &["FCALL", "spin", "0"]).unwrap_or_default());
    assert!(wait_until(std::time::Duration::from_secs(5), || {
        busy_server(&servers).is_some()
    }));
    let got = raw_command(proxy.addr, &["SCRIPT", "KILL"]).unwrap();
    assert!(
        got.starts_with(b"-BUSY"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        raw_command(proxy.addr, &["FUNCTION", "KILL"]).unwrap(),
        b"+OK\r\n"
    );
    spinner.join().unwrap();
    assert!(wait_until(std::time::Duration::from_secs(5), || {
        busy_server(&servers).is_none()
    }));
    // A pipeline of kills (their connections are opened 16 at a time) gets every answer.
    let mut raw = RawClient::connect(proxy.addr);
    raw.send(&b"*2\r\n$6\r\nSCRIPT\r\n$4\r\nKILL\r\n".repeat(300));
    for _ in 0..300 {
        assert_eq!(
            raw.read_reply().unwrap(),
            b"-NOTBUSY No scripts in execution right now.\r\n"
        );
    }
    assert!(stays_up(
        &proxy,
        &name,
        std::time::Duration::from_millis(100)
    ));
}
