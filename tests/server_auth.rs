//! Keyway authenticates to the servers: `--requirepass` and ACL users, per-server settings,
//! the password from the environment, a rotated password, a vanished password file, a wrong
//! password (an authentication failure naming the server), and the password shown nowhere.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use redis::Commands;
use support::{
    admin_token_file, http_get, key_on, metric, raw_command, wait_until, Proxy, ProxyProcess,
    RawClient, RedisServer,
};

/// Writes a password file as a mounted Kubernetes Secret has it: with a trailing newline.
fn password_file(dir: &Path, name: &str, password: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{password}\n")).unwrap();
    path
}

/// A config over `servers`, named `s0`, `s1`, ..., each with its extra lines (`password_file
/// = ...`), and extra `[pool]` lines.
fn config(servers: &[(&RedisServer, String)], pool_extra: &str) -> String {
    let mut t = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n[pool]\n{pool_extra}\n[pool.health]\ninterval = \"50ms\"\nfall = 2\nrise = 1\n",
        admin_token_file()
    );
    for (i, (s, extra)) in servers.iter().enumerate() {
        t.push_str(&format!(
            "[[pool.servers]]\nname = \"s{i}\"\naddr = \"{}\"\n{extra}\n",
            s.addr_string()
        ));
    }
    t
}

/// Closes every client connection of `server` (`CLIENT KILL TYPE normal`) and checks that
/// Keyway's data connection (the one whose last command was a SET) was among them.
fn kill_connections(server: &RedisServer) {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut server.client())
        .unwrap();
    assert!(list.contains(" cmd=set "), "no data connection:\n{list}");
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut server.client())
        .unwrap();
    assert!(killed >= 1, "killed {killed} connections");
}

/// Fails naming `what` if `text` shows any of `secrets`.
fn assert_hidden(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{what} shows the password {secret}:\n{text}"
        );
    }
}

/// Everything Keyway shows about itself: `/readyz`, `/topology`, `/metrics`, `INFO`, and the
/// `Debug` of its configuration.
fn everything_shown(proxy: &Proxy) -> Vec<(&'static str, String)> {
    let info: String = redis::cmd("INFO")
        .query(&mut proxy.client())
        .unwrap_or_else(|e| e.to_string());
    vec![
        ("/readyz", http_get(proxy.admin, "/readyz").1),
        ("/topology", http_get(proxy.admin, "/topology").1),
        ("/metrics", proxy.metrics()),
        ("INFO", info),
        (
            "Debug of the config",
            format!("{:?}", proxy.shared.topology.load().config),
        ),
    ]
}

#[test]
fn a_pool_with_requirepass_serves_through_keyway_and_shows_the_password_nowhere() {
    const PW: &str = "Pw-requirepass-4c7e1b";
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), "pw", PW);
    let (a, b) = (
        RedisServer::start_with_password(PW),
        RedisServer::start_with_password(PW),
    );
    // What redis-server says to a client without the password.
    let refused = raw_command(a.addr(), &["GET", "k"]).unwrap();
    assert!(refused.starts_with(b"-NOAUTH"), "{refused:?}");

    let proxy = Proxy::start_toml(&config(
        &[(&a, String::new()), (&b, String::new())],
        &format!("password_file = \"{}\"", file.display()),
    ));
    let mut con = proxy.client();
    let _: () = con.set("k", "v").unwrap();
    assert_eq!(con.get::<_, String>("k").unwrap(), "v");
    // A multi-server MSET lands on both servers.
    let (k0, k1) = (key_on(&proxy, 0, "m"), key_on(&proxy, 1, "m"));
    let _: () = redis::cmd("MSET")
        .arg(&k0)
        .arg("zero")
        .arg(&k1)
        .arg("one")
        .query(&mut con)
        .unwrap();
    assert_eq!(a.client().get::<_, String>(&k0).unwrap(), "zero");
    assert_eq!(b.client().get::<_, String>(&k1).unwrap(), "one");
    assert_eq!(http_get(proxy.admin, "/readyz"), (200, "ready\n".into()));
    let topology = http_get(proxy.admin, "/topology").1;
    assert!(
        topology.contains(&format!("file {}", file.display())),
        "{topology}"
    );
    for (what, text) in everything_shown(&proxy) {
        assert_hidden(what, &text, &[PW]);
    }
}

#[test]
fn a_two_phase_mset_over_two_servers_with_a_password() {
    const PW: &str = "Pw-two-phase-93ad02";
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), "pw", PW);
    let (a, b) = (
        RedisServer::start_with_password(PW),
        RedisServer::start_with_password(PW),
    );
    let proxy = Proxy::start_toml(&config(
        &[(&a, String::new()), (&b, String::new())],
        &format!(
            "replicas = 2\nwrite = \"two_phase\"\npassword_file = \"{}\"",
            file.display()
        ),
    ));
    let mut con = proxy.client();
    let keys: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
    let mut mset = redis::cmd("MSET");
    for k in &keys {
        mset.arg(k).arg(format!("v-{k}"));
    }
    let _: () = mset.query(&mut con).unwrap();
    for server in [&a, &b] {
        let mut direct = server.client();
        for k in &keys {
            assert_eq!(direct.get::<_, String>(k).unwrap(), format!("v-{k}"));
        }
        let locks: Vec<String> = direct.keys("__keyway:lock:*").unwrap();
        assert!(locks.is_empty(), "{locks:?}");
    }
}

#[test]
fn an_acl_user_authenticates_with_its_name_and_password() {
    const ADMIN_PW: &str = "Pw-default-user-0b5f";
    const PW: &str = "Pw-acl-keyway-6e2d81";
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), "pw", PW);
    let server = RedisServer::start_with_password(ADMIN_PW);
    server.add_acl_user("keyway", PW);
    // What redis-server says to the user with a wrong password.
    let refused = raw_command(server.addr(), &["AUTH", "keyway", "nope"]).unwrap();
    assert!(refused.starts_with(b"-WRONGPASS"), "{refused:?}");

    let proxy = Proxy::start_toml(&config(
        &[(&server, String::new())],
        &format!(
            "username = \"keyway\"\npassword_file = \"{}\"",
            file.display()
        ),
    ));
    let mut con = proxy.client();
    let _: () = con.set("k", "v").unwrap();
    assert_eq!(server.client().get::<_, String>("k").unwrap(), "v");
    // The data connection and the prober's both log in as `keyway`.
    let clients = || -> usize {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut server.client())
            .unwrap();
        list.lines().filter(|l| l.contains(" user=keyway ")).count()
    };
    assert!(
        wait_until(Duration::from_secs(5), || clients() >= 2),
        "connections as keyway: {}",
        clients()
    );
    // Probes succeed: the server stays up and no authentication failed.
    std::thread::sleep(Duration::from_millis(300));
    let m = proxy.metrics();
    assert_eq!(metric(&m, r#"keyway_server_up{server="s0"}"#), Some(1.0));
    assert_eq!(
        metric(&m, r#"keyway_server_auth_failures_total{server="s0"}"#),
        Some(0.0)
    );
    let topology = http_get(proxy.admin, "/topology").1;
    assert!(topology.contains(r#""user":"keyway""#), "{topology}");
    for (what, text) in everything_shown(&proxy) {
        assert_hidden(what, &text, &[PW, ADMIN_PW]);
    }
}

#[test]
fn a_wrong_password_is_an_authentication_failure_that_names_the_server() {
    const RIGHT: &str = "Pw-right-15aa7c";
    const WRONG: &str = "Pw-wrong-d04e3b";
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), "pw", WRONG);
    let server = RedisServer::start_with_password(RIGHT);
    // What redis-server answers to this AUTH.
    let said = raw_command(server.addr(), &["AUTH", WRONG]).unwrap();
    let said = String::from_utf8_lossy(&said)
        .trim_end()
        .trim_start_matches('-')
        .to_string();
    assert!(said.starts_with("WRONGPASS"), "{said}");

    let proxy = Proxy::start_toml_no_wait(&config(
        &[(&server, String::new())],
        &format!("password_file = \"{}\"", file.display()),
    ));
    // Not ready, and the reason names the server and quotes what it said.
    let ready = || http_get(proxy.admin, "/readyz");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let (status, body) = ready();
            status == 503 && body.contains("server 's0'") && body.contains(&said)
        }),
        "{:?}",
        ready()
    );
    assert!(ready().1.contains("authentication failed"), "{:?}", ready());
    // Clients get an error naming the server, not the server's NOAUTH.
    let err = proxy
        .client()
        .get::<_, String>("k")
        .expect_err("no reply without authentication")
        .to_string();
    assert!(
        err.contains("'s0'") && err.contains("authentication failed"),
        "{err}"
    );
    assert!(!err.contains("NOAUTH"), "{err}");
    // The server goes down, and every refusal is counted.
    assert!(wait_until(Duration::from_secs(5), || {
        metric(&proxy.metrics(), r#"keyway_server_up{server="s0"}"#) == Some(0.0)
    }));
    let failures = metric(
        &proxy.metrics(),
        r#"keyway_server_auth_failures_total{server="s0"}"#,
    )
    .unwrap();
    assert!(failures >= 2.0, "{failures}");
    let topology = http_get(proxy.admin, "/topology").1;
    assert!(topology.contains("authentication failed"), "{topology}");
    for (what, text) in everything_shown(&proxy) {
        assert_hidden(what, &text, &[RIGHT, WRONG]);
    }
    assert_hidden("the client's error", &err, &[RIGHT, WRONG]);
}

#[test]
fn per_server_settings_override_the_pools() {
    const PW_A: &str = "Pw-server-a-71c0";
    const PW_B: &str = "Pw-server-b-2f9e";
    let dir = tempfile::tempdir().unwrap();
    let file_a = password_file(dir.path(), "a", PW_A);
    let file_b = password_file(dir.path(), "b", PW_B);
    let a = RedisServer::start_with_password(PW_A);
    let b = RedisServer::start_with_password("Pw-b-default-unused");
    b.add_acl_user("kw-b", PW_B);
    let proxy = Proxy::start_toml(&config(
        &[
            (&a, String::new()),
            (
                &b,
                format!(
                    "username = \"kw-b\"\npassword_file = \"{}\"",
                    file_b.display()
                ),
            ),
        ],
        &format!("password_file = \"{}\"", file_a.display()),
    ));
    let mut con = proxy.client();
    let (k0, k1) = (key_on(&proxy, 0, "p"), key_on(&proxy, 1, "p"));
    let _: () = redis::cmd("MSET")
        .arg(&k0)
        .arg("a")
        .arg(&k1)
        .arg("b")
        .query(&mut con)
        .unwrap();
    assert_eq!(a.client().get::<_, String>(&k0).unwrap(), "a");
    assert_eq!(b.client().get::<_, String>(&k1).unwrap(), "b");
    let m = proxy.metrics();
    for s in ["s0", "s1"] {
        let series = format!("keyway_server_auth_failures_total{{server=\"{s}\"}}");
        assert_eq!(metric(&m, &series), Some(0.0), "{s}");
    }
}

#[test]
fn a_rotated_password_applies_at_the_next_connection() {
    const OLD: &str = "Pw-before-rotation-5d1";
    const NEW: &str = "Pw-after-rotation-a8c";
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), "pw", OLD);
    let mut server = RedisServer::start_with_password(OLD);
    let proxy = Proxy::start_toml(&config(
        &[(&server, String::new())],
        &format!("password_file = \"{}\"", file.display()),
    ));
    let _: () = proxy.client().set("k", "before").unwrap();

    // Rotate: the server first, then the Secret, then drop every connection.
    server.set_password(NEW);
    password_file(dir.path(), "pw", NEW);
    kill_connections(&server);
    assert!(
        wait_until(Duration::from_secs(5), || {
            proxy.client().set::<_, _, ()>("k", "after").is_ok()
        }),
        "requests do not succeed after the rotation"
    );
    assert_eq!(server.client().get::<_, String>("k").unwrap(), "after");
    // The prober reconnected with the new password too.
    std::thread::sleep(Duration::from_millis(300));
    let m = proxy.metrics();
    assert_eq!(metric(&m, r#"keyway_server_up{server="s0"}"#), Some(1.0));
    assert_eq!(
        metric(&m, r#"keyway_server_auth_failures_total{server="s0"}"#),
        Some(0.0)
    );
}

/// The config of a Keyway process: `listen` and `admin` are replaced by free ports.
fn process_config(servers: &[(&RedisServer, String)], pool_extra: &str) -> String {
    config(servers, pool_extra)
}

fn process_client(p: &ProxyProcess) -> redis::Connection {
    redis::Client::open(format!("redis://{}/", p.addr))
        .and_then(|c| c.get_connection())
        .unwrap()
}

#[test]
fn a_vanished_password_file_keeps_the_last_password_and_says_so_without_it() {
    const PW: &str = "Pw-vanishing-file-e41";
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), "pw", PW);
    let server = RedisServer::start_with_password(PW);
    let p = ProxyProcess::start(
        &process_config(
            &[(&server, String::new())],
            &format!("password_file = \"{}\"", file.display()),
        ),
        &[],
    );
    let _: () = process_client(&p).set("k", "v").unwrap();
    std::fs::remove_file(&file).unwrap();
    kill_connections(&server);
    assert!(
        wait_until(Duration::from_secs(5), || {
            redis::Client::open(format!("redis://{}/", p.addr))
                .and_then(|c| c.get_connection())
                .and_then(|mut c| c.get::<_, String>("k"))
                .is_ok_and(|v| v == "v")
        }),
        "{}",
        p.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || p
            .log()
            .contains("password_file cannot be read")),
        "{}",
        p.log()
    );
    assert_hidden("the log", &p.log(), &[PW]);
}

#[test]
fn the_log_names_the_server_that_refused_and_never_the_password() {
    const RIGHT: &str = "Pw-log-right-90b3";
    const WRONG: &str = "Pw-log-wrong-c27a";
    let dir = tempfile::tempdir().unwrap();
    let right = password_file(dir.path(), "right", RIGHT);
    let wrong = password_file(dir.path(), "wrong", WRONG);
    let (a, b) = (
        RedisServer::start_with_password(RIGHT),
        RedisServer::start_with_password(RIGHT),
    );
    // s0 authenticates (so Keyway is ready); s1 has the wrong password.
    let p = ProxyProcess::start(
        &process_config(
            &[
                (&a, String::new()),
                (&b, format!("password_file = \"{}\"", wrong.display())),
            ],
            &format!("password_file = \"{}\"", right.display()),
        ),
        &[],
    );
    let refused = |log: &str| {
        log.lines()
            .any(|l| l.contains("authentication failed") && l.contains("s1"))
    };
    assert!(
        wait_until(Duration::from_secs(5), || refused(&p.log())),
        "{}",
        p.log()
    );
    assert!(
        !p.log()
            .lines()
            .any(|l| l.contains("authentication failed") && l.contains("server=s0")),
        "{}",
        p.log()
    );
    assert_hidden("the log", &p.log(), &[RIGHT, WRONG]);
    let metrics = http_get(p.admin, "/metrics").1;
    assert!(
        metric(
            &metrics,
            r#"keyway_server_auth_failures_total{server="s1"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}

#[test]
fn the_password_may_come_from_the_environment_and_a_file_wins_over_it() {
    const PW: &str = "Pw-from-env-38f6aa";
    let server = RedisServer::start_with_password(PW);
    let toml = process_config(&[(&server, String::new())], "");
    let p = ProxyProcess::start_env(&toml, &[], &[("KEYWAY_POOL__PASSWORD", PW)]);
    let _: () = process_client(&p).set("k", "env").unwrap();
    let topology = http_get(p.admin, "/topology").1;
    assert!(topology.contains("KEYWAY_POOL__PASSWORD"), "{topology}");
    assert_hidden("/topology", &topology, &[PW]);
    assert_hidden("the log", &p.log(), &[PW]);
    drop(p);

    // Both set: the file wins.
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), "pw", PW);
    let toml = process_config(
        &[(&server, String::new())],
        &format!("password_file = \"{}\"", file.display()),
    );
    let p = ProxyProcess::start_env(&toml, &[], &[("KEYWAY_POOL__PASSWORD", "Pw-env-loses")]);
    let _: () = process_client(&p).set("k", "file").unwrap();
    assert_eq!(server.client().get::<_, String>("k").unwrap(), "file");
}

fn keyway_check(config: &Path, envs: &[(&str, &str)]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_keyway"))
        .args(["check", "--config", config.to_str().unwrap()])
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

#[test]
fn keyway_check_verifies_the_password_settings_without_showing_the_password() {
    const PW: &str = "Pw-check-7719d0";
    let dir = tempfile::tempdir().unwrap();
    let good = password_file(dir.path(), "pw", PW);
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let missing = dir.path().join("missing");
    let base = "[pool]\n{extra}\n[[pool.servers]]\nname = \"a\"\naddr = \"127.0.0.1:7001\"\n";
    let write = |name: &str, extra: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, base.replace("{extra}", extra)).unwrap();
        path
    };

    let ok = write(
        "ok.toml",
        &format!(
            "username = \"keyway\"\npassword_file = \"{}\"",
            good.display()
        ),
    );
    let (success, text) = keyway_check(&ok, &[]);
    assert!(success, "{text}");
    assert_hidden("keyway check", &text, &[PW]);

    for (name, path, says) in [
        ("empty.toml", &empty, "empty"),
        ("missing.toml", &missing, "cannot be read"),
    ] {
        let config = write(name, &format!("password_file = \"{}\"", path.display()));
        let (success, text) = keyway_check(&config, &[]);
        assert!(!success, "{text}");
        assert!(
            text.contains("pool.password_file") && text.contains(says),
            "{text}"
        );
    }

    let inline = write("inline.toml", &format!("password = \"{PW}\""));
    let (success, text) = keyway_check(&inline, &[]);
    assert!(!success, "{text}");
    assert!(
        text.contains("pool.password") && text.contains("password_file"),
        "{text}"
    );
    assert_hidden("keyway check", &text, &[PW]);

    let user_only = write("user.toml", "username = \"keyway\"");
    let (success, text) = keyway_check(&user_only, &[]);
    assert!(!success && text.contains("no password"), "{text}");
    // The environment's password is accepted, and satisfies the user; never shown.
    let (success, text) = keyway_check(&user_only, &[("KEYWAY_POOL__PASSWORD", PW)]);
    assert!(success, "{text}");
    assert_hidden("keyway check", &text, &[PW]);
    // A password that looks like a number or a list stays a string.
    for odd in ["12345", "[a,b]", "x=1"] {
        let (success, text) = keyway_check(&user_only, &[("KEYWAY_POOL__PASSWORD", odd)]);
        assert!(success, "{odd}: {text}");
    }
}

#[test]
fn put_topology_takes_password_files_and_refuses_a_password_in_the_document() {
    const PW: &str = "Pw-put-topology-b61d";
    let dir = tempfile::tempdir().unwrap();
    let first = password_file(dir.path(), "first", PW);
    let second = password_file(dir.path(), "second", PW);
    let server = RedisServer::start_with_password(PW);
    let proxy = Proxy::start_toml(&config(
        &[(&server, String::new())],
        &format!("password_file = \"{}\"", first.display()),
    ));
    let bearer = support::bearer();
    let auth = [("Authorization", bearer.as_str())];
    let servers = format!(
        "[[servers]]\nname = \"s0\"\naddr = \"{}\"\n",
        server.addr_string()
    );
    // A password in the document is refused, without being quoted.
    let inline = format!("password = \"{PW}\"\n{servers}");
    let (status, answer) = support::http_with(proxy.admin, "PUT", "/topology", &inline, &auth);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("pool.password"), "{answer}");
    assert_hidden("the refusal", &answer, &[PW]);
    // Another password file: the change names it, and the new connections authenticate.
    let moved = format!("password_file = \"{}\"\n{servers}", second.display());
    let (status, answer) = support::http_with(proxy.admin, "PUT", "/topology", &moved, &auth);
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains(&format!("password from {}", second.display())),
        "{answer}"
    );
    assert_hidden("the change", &answer, &[PW]);
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .client()
            .set::<_, _, ()>("k", "v")
            .is_ok()),
        "no request succeeds after the swap"
    );
    let topology = http_get(proxy.admin, "/topology").1;
    assert!(
        topology.contains(&format!("file {}", second.display())),
        "{topology}"
    );
}

/// RESP3 clients, WATCH and INFO through a pool with a password: every kind of server
/// connection (RESP3 ones, held ones, the prober's version read) authenticates first.
#[test]
fn resp3_watch_and_info_work_on_a_pool_with_a_password() {
    const PW: &str = "Pw-resp3-9a1d";
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), "pw", PW);
    let a = RedisServer::start_with_password(PW);
    let proxy = Proxy::start_toml(&config(
        &[(&a, String::new())],
        &format!("password_file = \"{}\"", file.display()),
    ));
    let mut k = RawClient::connect(proxy.addr);
    let hello = k.call(&["HELLO", "3"]);
    assert!(
        hello.starts_with(b"%7"),
        "{}",
        String::from_utf8_lossy(&hello)
    );
    assert_eq!(k.call(&["HSET", "h", "f", "v"]), b":1\r\n");
    assert_eq!(k.call(&["HGETALL", "h"]), b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
    assert_eq!(k.call(&["WATCH", "h"]), b"+OK\r\n");
    k.call(&["MULTI"]);
    k.call(&["HGET", "h", "f"]);
    assert_eq!(k.call(&["EXEC"]), b"*1\r\n$1\r\nv\r\n");
    let info = String::from_utf8_lossy(&k.call(&["INFO", "server", "keyspace"])).into_owned();
    assert!(
        info.contains("redis_version:") && info.contains("db0:keys=1"),
        "{info}"
    );
    assert!(!info.contains(PW));
}
