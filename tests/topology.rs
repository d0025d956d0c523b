//! Hot-swapped topology: sources (file through its directory, SIGHUP, admin API), validation,
//! zero loss under load, connection reuse and draining, `keyway plan`, warm-up.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Commands;
use support::{
    free_port, http, http_get, http_with, metric, wait_until, Proxy, ProxyProcess, RedisServer,
};

fn version(admin: SocketAddr) -> u64 {
    let (_, body) = http_get(admin, "/topology");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    json["version"].as_u64().unwrap_or(0)
}

fn server_names(admin: SocketAddr) -> Vec<String> {
    let (_, body) = http_get(admin, "/topology");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// A `[pool]` document in JSON over named servers.
fn pool_json(servers: &[(&str, &RedisServer, f64)], extra: serde_json::Value) -> String {
    let mut pool = serde_json::json!({
        "servers": servers.iter().map(|(name, s, w)| serde_json::json!({
            "name": name, "addr": s.addr_string(), "weight": w
        })).collect::<Vec<_>>(),
    });
    if let (Some(p), Some(e)) = (pool.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            p.insert(k.clone(), v.clone());
        }
    }
    pool.to_string()
}

fn put_json(admin: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    use std::io::{Read, Write};
    let req = format!(
        "PUT {path} HTTP/1.1\r\nHost: k\r\nConnection: close\r\nContent-Type: application/json\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n{body}",
        support::bearer(),
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        raw.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

fn connected_clients(s: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query(&mut s.client())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[test]
fn admin_api_swaps_validates_and_dry_runs() {
    let (a, b, c) = support::three();
    let proxy = Proxy::start(&[&a, &b]);
    let mut con = proxy.client();
    assert_eq!(version(proxy.admin), 1);
    // Dry run: says what would change, changes nothing.
    let body = pool_json(
        &[("s0", &a, 1.0), ("s1", &b, 1.0), ("s2", &c, 1.0)],
        serde_json::json!({}),
    );
    let (status, answer) = put_json(proxy.admin, "/topology?dry_run=true", &body);
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["applied"], false);
    assert_eq!(answer["changes"]["added"][0], "s2");
    let moved = answer["changes"]["slots_moved"].as_u64().unwrap();
    assert!(
        (4500..6500).contains(&moved),
        "about a third of the slots move to s2: {moved}"
    );
    assert_eq!(version(proxy.admin), 1);
    // Applied: version 2 everywhere.
    let (status, answer) = put_json(proxy.admin, "/topology", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(version(proxy.admin), 2);
    let info: String = redis::cmd("INFO").query(&mut con).unwrap();
    assert!(info.contains("topology_version:2"), "{info}");
    assert_eq!(
        metric(&proxy.metrics(), "keyway_topology_version"),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &proxy.metrics(),
            "keyway_config_reloads_total{outcome=\"applied\"}"
        ),
        Some(1.0)
    );
    // The new server was connected before it took traffic.
    assert!(connected_clients(&c) >= 2, "s2 connected on swap");
    // TOML works too; the same document again changes nothing (no new version).
    let toml = format!(
        "[[servers]]\nname = \"s0\"\naddr = \"{}\"\n[[servers]]\nname = \"s1\"\naddr = \"{}\"\n[[servers]]\nname = \"s2\"\naddr = \"{}\"\n",
        a.addr_string(),
        b.addr_string(),
        c.addr_string()
    );
    let auth = [("Authorization", support::bearer())];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, answer) = support::http_with(proxy.admin, "PUT", "/topology", &toml, &auth);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(version(proxy.admin), 2);
    // Invalid documents are refused with the reason; the topology keeps serving.
    for (bad, why) in [
        ("[[servers]\nname = \"x\"", "TOML parse error"),
        ("replicas = 1\nconections = 3\n[[servers]]\nname = \"s0\"\naddr = \"127.0.0.1:1\"", "conections"),
        ("[[servers]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n[[servers]]\nname = \"a\"\naddr = \"127.0.0.1:2\"", "duplicate server name"),
        ("replicas = 1", "no servers"),
        ("[[servers]]\nname = \"a\"\naddr = \"nowhere\"", "not a host:port"),
    ] {
        let (status, answer) = support::http_with(proxy.admin, "PUT", "/topology", bad, &auth);
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(answer.contains(why), "{bad}: {answer}");
    }
    assert_eq!(version(proxy.admin), 2);
    assert_eq!(
        metric(
            &proxy.metrics(),
            "keyway_config_reloads_total{outcome=\"rejected\"}"
        ),
        Some(5.0)
    );
    let _: () = con.set("still", "serving").unwrap();
}

/// A directory laid out like a mounted ConfigMap: `keyway.toml -> ..data/keyway.toml`,
/// `..data -> ..<timestamp>`; [`ConfigMapDir::update`] swaps `..data` atomically as the
/// kubelet does.
struct ConfigMapDir {
    dir: tempfile::TempDir,
    generation: u32,
}

impl ConfigMapDir {
    fn new(toml: &str) -> ConfigMapDir {
        let dir = tempfile::tempdir().unwrap();
        let mut cm = ConfigMapDir { dir, generation: 0 };
        cm.update(toml);
        std::os::unix::fs::symlink("..data/keyway.toml", cm.dir.path().join("keyway.toml"))
            .unwrap();
        cm
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("keyway.toml")
    }

    fn update(&mut self, toml: &str) {
        self.generation += 1;
        let stamp = format!(
            "..2026_11_27_13_00_{:02}.{}",
            self.generation,
            1000 + self.generation
        );
        let root = self.dir.path();
        std::fs::create_dir(root.join(&stamp)).unwrap();
        std::fs::write(root.join(&stamp).join("keyway.toml"), toml).unwrap();
        let tmp = root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
    }
}

fn file_config(listen: SocketAddr, admin: SocketAddr, servers: &[(&str, &RedisServer)]) -> String {
    let mut t = format!("listen = \"{listen}\"\nadmin = \"{admin}\"\n[pool]\n");
    for (name, s) in servers {
        t.push_str(&format!(
            "[[pool.servers]]\nname = \"{name}\"\naddr = \"{}\"\n",
            s.addr_string()
        ));
    }
    t
}

fn addrs() -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    )
}

#[test]
fn a_configmap_update_is_picked_up_through_the_directory() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    let (listen, admin) = addrs();
    let mut cm = ConfigMapDir::new(&file_config(listen, admin, &[("a", &a)]));
    let proxy = ProxyProcess::start_path(&cm.path(), listen, admin, &[]);
    assert_eq!(server_names(admin), ["a"]);
    cm.update(&file_config(listen, admin, &[("a", &a), ("b", &b)]));
    assert!(
        wait_until(Duration::from_secs(5), || version(admin) == 2),
        "{}",
        proxy.log()
    );
    assert_eq!(server_names(admin), ["a", "b"]);
    // A broken update is refused and logged; the running topology stays.
    cm.update("listen = \"oops\nthis is not toml");
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .log()
            .contains("config reload refused")),
        "{}",
        proxy.log()
    );
    assert_eq!(version(admin), 2);
    assert_eq!(
        metric(
            &http_get(admin, "/metrics").1,
            "keyway_config_reloads_total{outcome=\"rejected\"}"
        ),
        Some(1.0)
    );
    // And a good one after it applies.
    cm.update(&file_config(listen, admin, &[("b", &b)]));
    assert!(
        wait_until(Duration::from_secs(5), || version(admin) == 3),
        "{}",
        proxy.log()
    );
    assert_eq!(server_names(admin), ["b"]);
}

#[test]
fn sighup_rereads_the_file() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    let (listen, admin) = addrs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyway.toml");
    std::fs::write(&path, file_config(listen, admin, &[("a", &a)])).unwrap();
    let proxy = ProxyProcess::start_path(&path, listen, admin, &["--no-watch"]);
    std::fs::write(&path, file_config(listen, admin, &[("a", &a), ("b", &b)])).unwrap();
    // Not watched: nothing happens until SIGHUP.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(version(admin), 1);
    proxy.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || version(admin) == 2),
        "{}",
        proxy.log()
    );
    assert!(proxy.log().contains("SIGHUP"), "{}", proxy.log());
    assert_eq!(server_names(admin), ["a", "b"]);
    // A swap to quorum over two replicas is applied, with the warning `keyway check` gives.
    let quorum = file_config(listen, admin, &[("a", &a), ("b", &b)])
        .replace("[pool]\n", "[pool]\nreplicas = 2\nwrite = \"quorum\"\n");
    std::fs::write(&path, quorum).unwrap();
    proxy.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || version(admin) == 3),
        "{}",
        proxy.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || proxy.log().contains(
            "pool.write = \"quorum\" with replicas = 2 needs both replicas"
        )),
        "{}",
        proxy.log()
    );
}

#[test]
fn removed_servers_drain_and_kept_servers_keep_their_connections() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    let proxy = Proxy::start(&[&a, &b]);
    let mut con = proxy.client();
    for i in 0..100 {
        let _: () = con.set(format!("k{i}"), i).unwrap();
    }
    // Keyway's data connection + its health probe, plus the one asking.
    assert_eq!(connected_clients(&b), 3);
    let a_conns = redis::cmd("CLIENT")
        .arg("LIST")
        .query::<String>(&mut a.client())
        .unwrap();
    // Reweighting keeps the pools (same name, address and settings): same connections.
    let (status, body) = put_json(
        proxy.admin,
        "/topology",
        &pool_json(&[("s0", &a, 2.0), ("s1", &b, 1.0)], serde_json::json!({})),
    );
    assert_eq!(status, 200, "{body}");
    let ids = |list: &str| -> Vec<String> {
        list.lines()
            .filter(|l| !l.contains("cmd=client"))
            .filter_map(|l| l.split(' ').next().map(String::from))
            .collect()
    };
    let after = redis::cmd("CLIENT")
        .arg("LIST")
        .query::<String>(&mut a.client())
        .unwrap();
    assert_eq!(ids(&a_conns), ids(&after), "connections were reused");
    // Removing s1: its connections drain and close.
    let (status, body) = put_json(
        proxy.admin,
        "/topology",
        &pool_json(&[("s0", &a, 1.0)], serde_json::json!({})),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_until(Duration::from_secs(5), || connected_clients(&b) == 1),
        "only the asker is left on s1"
    );
    for i in 0..100 {
        let _: () = con.set(format!("k{i}"), i).unwrap();
    }
    assert!(
        !proxy.metrics().contains("server=\"s1\""),
        "s1's series are gone"
    );
}

#[test]
fn a_hundred_swaps_under_pipelined_load_lose_nothing() {
    let servers: Vec<RedisServer> = (0..5).map(|_| RedisServer::start()).collect();
    let (s0, s1, s2, s3, s3b) = (
        &servers[0],
        &servers[1],
        &servers[2],
        &servers[3],
        &servers[4],
    );
    let proxy = Proxy::start_toml(&support::config_toml(&[s0, s1, s2], ""));
    let stop = Arc::new(AtomicBool::new(false));
    let replies = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..50)
        .map(|t| {
            let (stop, replies) = (stop.clone(), replies.clone());
            let mut con = proxy.client();
            std::thread::spawn(move || -> Result<(), String> {
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let mut pipe = redis::pipe();
                    for i in 0..10 {
                        let key = format!("c{t}:k{i}");
                        pipe.cmd("SET").arg(&key).arg(format!("{key}={round}"));
                        pipe.cmd("GET").arg(&key);
                        pipe.cmd("MGET")
                            .arg(&key)
                            .arg(format!("c{t}:k{}", (i + 1) % 10))
                            .arg("none");
                    }
                    let got: Vec<redis::Value> = pipe
                        .query(&mut con)
                        .map_err(|e| format!("client {t}: {e}"))?;
                    if got.len() != 30 {
                        return Err(format!("client {t}: {} replies for 30 commands", got.len()));
                    }
                    for (i, chunk) in got.chunks(3).enumerate() {
                        let key = format!("c{t}:k{i}");
                        let ok = matches!(&chunk[0], redis::Value::Okay);
                        // A GET sees this round's value, or misses when the key moved between
                        // the SET and the GET (data does not migrate); never another value.
                        let get_ok = match &chunk[1] {
                            redis::Value::BulkString(v) => {
                                v.starts_with(format!("{key}=").as_bytes())
                            }
                            redis::Value::Nil => true,
                            _ => false,
                        };
                        let mget_ok = matches!(&chunk[2], redis::Value::Array(v) if v.len() == 3);
                        if !(ok && get_ok && mget_ok) {
                            return Err(format!("client {t}: bad or misordered replies {chunk:?}"));
                        }
                    }
                    replies.fetch_add(30, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let variants: Vec<String> = vec![
        pool_json(
            &[("s0", s0, 1.0), ("s1", s1, 1.0), ("s2", s2, 1.0)],
            serde_json::json!({}),
        ),
        pool_json(
            &[
                ("s0", s0, 1.0),
                ("s1", s1, 1.0),
                ("s2", s2, 1.0),
                ("s3", s3, 1.0),
            ],
            serde_json::json!({}),
        ),
        pool_json(
            &[
                ("s0", s0, 1.0),
                ("s1", s1, 1.0),
                ("s2", s2, 1.0),
                ("s3", s3b, 1.0),
            ],
            serde_json::json!({}),
        ),
        pool_json(
            &[("s0", s0, 2.0), ("s1", s1, 0.5), ("s2", s2, 1.0)],
            serde_json::json!({}),
        ),
        pool_json(&[("s0", s0, 1.0), ("s2", s2, 1.0)], serde_json::json!({})),
        pool_json(
            &[("s0", s0, 1.0), ("s1", s1, 1.0), ("s2", s2, 1.0)],
            serde_json::json!({"replicas": 2, "read": "round_robin", "write": "all"}),
        ),
        pool_json(
            &[("s0", s0, 1.0), ("s1", s1, 1.0), ("s2", s2, 1.0)],
            serde_json::json!({"replicas": 2, "read": "least_outstanding", "write": "quorum"}),
        ),
    ];
    for i in 0..100 {
        // Consecutive variants always differ, so every call swaps.
        let (status, body) = put_json(
            proxy.admin,
            "/topology",
            &variants[(i + 1) % variants.len()],
        );
        assert_eq!(status, 200, "swap {i}: {body}");
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for w in workers {
        if let Err(e) = w.join().unwrap() {
            errors.push(e);
        }
    }
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        replies.load(Ordering::Relaxed) > 10_000,
        "load ran: {}",
        replies.load(Ordering::Relaxed)
    );
    assert_eq!(version(proxy.admin), 101);
}

#[test]
fn plan_reports_minimal_movement() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, n: usize| {
        let mut t = String::from("[pool]\n");
        for i in 0..n {
            t.push_str(&format!(
                "[[pool.servers]]\nname = \"redis-{i}\"\naddr = \"127.0.0.1:{}\"\n",
                7000 + i
            ));
        }
        let p = dir.path().join(name);
        std::fs::write(&p, t).unwrap();
        p
    };
    let old = write("old.toml", 5);
    let new = write("new.toml", 6);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyway"))
        .args([
            "plan",
            "--config",
            old.to_str().unwrap(),
            new.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("total: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    // Adding one server to 5: about 1/6 of 16384 = 2731 slots move, within 2 points.
    let share = total as f64 / 16384.0;
    assert!((share - 1.0 / 6.0).abs() < 0.02, "{share}: {text}");
    // ...and every moved slot moves to the new server.
    for line in text
        .lines()
        .filter(|l| l.contains("->") && l.contains("slots ("))
    {
        assert!(line.trim_end().ends_with("-> redis-5"), "{line}");
    }
    assert!(text.contains("added [redis-5]"), "{text}");
}

#[test]
fn warm_up_reads_moved_keys_from_their_previous_server() {
    let (a, b, c) = support::three();
    let proxy = Proxy::start_toml(&support::config_toml(&[&a, &b], "warmup = \"30s\""));
    let mut con = proxy.client();
    let keys: Vec<String> = (0..300).map(|i| format!("warm:{i}")).collect();
    for k in &keys {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(k)
            .arg("EX")
            .arg(1000)
            .query(&mut con)
            .unwrap();
    }
    let body = pool_json(
        &[("s0", &a, 1.0), ("s1", &b, 1.0), ("s2", &c, 1.0)],
        serde_json::json!({"warmup": "30s"}),
    );
    let (status, answer) = put_json(proxy.admin, "/topology", &body);
    assert_eq!(status, 200, "{answer}");
    // Every key reads back, though about a third now belong to the empty new server.
    for k in &keys {
        let v: Option<String> = con.get(k).unwrap();
        assert_eq!(v.as_deref(), Some(k.as_str()), "{k}");
    }
    // The moved ones were copied to the new server, with their TTL.
    let moved: Vec<&String> = keys
        .iter()
        .filter(|k| c.client().exists::<_, bool>(k.as_str()).unwrap())
        .collect();
    assert!((60..150).contains(&moved.len()), "{}", moved.len());
    let ttl: i64 = c.client().ttl(moved[0].as_str()).unwrap();
    assert!(ttl > 900 && ttl <= 1000, "{ttl}");
    // Without warm-up, the moved keys miss.
    let body = pool_json(&[("s0", &a, 1.0), ("s1", &b, 1.0)], serde_json::json!({}));
    assert_eq!(put_json(proxy.admin, "/topology", &body).0, 200);
    let _: () = redis::cmd("FLUSHALL").query(&mut c.client()).unwrap();
    let body = pool_json(
        &[("s0", &a, 1.0), ("s1", &b, 1.0), ("s2", &c, 1.0)],
        serde_json::json!({}),
    );
    assert_eq!(put_json(proxy.admin, "/topology", &body).0, 200);
    let v: Option<String> = con.get(moved[0].as_str()).unwrap();
    assert_eq!(v, None);
}

/// `PUT /topology` needs the bearer token of `admin_token_file` and is off without one: a
/// missing, wrong or unset token changes nothing. The file is read at each mutation, so a
/// rotated token works at once. Reads (`GET /topology`, `/metrics`) need none.
#[test]
fn topology_changes_need_the_admin_token() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let toml = support::config_toml(&[&a], "")
        .replace(support::admin_token_file(), token.to_str().unwrap());
    let proxy = Proxy::start_toml(&toml);
    let body = format!(
        "[[servers]]\nname = \"s0\"\naddr = \"{}\"\n[[servers]]\nname = \"s1\"\naddr = \"{}\"\n",
        a.addr_string(),
        b.addr_string()
    );
    let put = |auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|v| ("Authorization", v)).into_iter().collect();
        http_with(proxy.admin, "PUT", "/topology", &body, &headers)
    };
    for (auth, status) in [
        (None, 401),
        (Some("Bearer wrong-token"), 401),
        (Some("Bearer first-token-and-more"), 401),
        (Some("first-token"), 401),
    ] {
        let (got, answer) = put(auth);
        assert_eq!(got, status, "{auth:?}: {answer}");
        assert!(!answer.contains("first-token"), "the token leaks: {answer}");
    }
    assert_eq!(version(proxy.admin), 1, "nothing changed");
    // A rotated token works at once; the old one no longer does.
    std::fs::write(&token, "second-token\n").unwrap();
    assert_eq!(put(Some("Bearer first-token")).0, 401);
    let (got, answer) = put(Some("Bearer second-token"));
    assert_eq!(got, 200, "{answer}");
    assert_eq!(version(proxy.admin), 2);
    // The file gone: the last token read stays in use.
    std::fs::remove_file(&token).unwrap();
    assert_eq!(put(Some("Bearer second-token")).0, 200);
    assert_eq!(http_get(proxy.admin, "/topology").0, 200);

    // Without admin_token_file, mutations are off.
    let open = Proxy::start_toml(&support::config_toml(&[&a], "").replace(
        &format!("admin_token_file = \"{}\"\n", support::admin_token_file()),
        "",
    ));
    let (got, answer) = http(open.admin, "PUT", "/topology", &body);
    assert_eq!(got, 403, "{answer}");
    assert!(answer.contains("admin_token_file"), "{answer}");
    assert_eq!(version(open.admin), 1);
}

/// Half-sent admin requests cannot pile up: past 64 open connections the next is closed at
/// once, and a connection that does not finish its headers is closed after 5 s, which frees
/// its place.
#[test]
fn admin_connections_are_bounded_and_time_out() {
    use std::io::{Read, Write};
    let a = RedisServer::start();
    let proxy = Proxy::start(&[&a]);
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut s = std::net::TcpStream::connect(proxy.admin).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHo").unwrap();
        held.push(s);
    }
    // Each held connection has been accepted once /healthz answers nothing more: the 65th is
    // closed without a reply.
    let refused = wait_until(Duration::from_secs(5), || {
        let mut s = std::net::TcpStream::connect(proxy.admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: k\r\n\r\n");
        let mut buf = Vec::new();
        matches!(s.read_to_end(&mut buf), Ok(0))
    });
    assert!(refused, "a 65th admin connection was served");
    // The half-sent ones are closed by the header timeout; then the admin port serves again.
    let mut first = held.remove(0);
    first.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut buf = Vec::new();
    let _ = first.read_to_end(&mut buf);
    assert!(
        wait_until(Duration::from_secs(10), || http_get(
            proxy.admin,
            "/healthz"
        )
        .0 == 200),
        "the admin port did not recover"
    );
    // The client port was never affected.
    let mut con = proxy.client();
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
}

/// With 256 file descriptors (as a small container may have), 300 half-sent admin requests
/// do not starve the client port: past 64 the admin port closes new connections at once, so
/// Keyway keeps descriptors to accept and serve clients.
#[test]
fn half_sent_admin_requests_do_not_starve_the_client_port() {
    use std::io::{Read, Write};
    let a = RedisServer::start();
    let proxy = ProxyProcess::start(&support::config_toml(&[&a], ""), &[]);
    let pid = proxy.child.id();
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=256:256"])
        .status()
        .unwrap();
    assert!(limited.success(), "prlimit");
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();
    let mut held = Vec::new();
    for _ in 0..300 {
        // Refused ones may be reset by the time they write: that is what a refusal is.
        if let Ok(mut s) = std::net::TcpStream::connect(proxy.admin) {
            let _ = s.write_all(b"PUT /topology HTTP/1.1\r\nHost: k\r\nContent-Len");
            held.push(s);
        }
    }
    // Keyway holds as many admin connections as it will (64 with the limit, every descriptor
    // left without it) before the clients come (`before` may count a few transient ones).
    assert!(wait_until(Duration::from_secs(2), || fds() >= before + 56));
    // Clients connect and are served, many at once, while the half-sent requests are held
    // (their 5 s header timeout is far off).
    let clients: Vec<redis::Connection> = (0..50)
        .map(|_| {
            let con = redis::Client::open(format!("redis://{}/", proxy.addr))
                .unwrap()
                .get_connection_with_timeout(Duration::from_secs(1))
                .unwrap();
            con.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            con
        })
        .collect();
    for (i, mut con) in clients.into_iter().enumerate() {
        let _: () = con.set(format!("fd{i}"), i).unwrap();
        let got: usize = con.get(format!("fd{i}")).unwrap();
        assert_eq!(got, i);
    }
    // Past the limit a fresh admin connection is closed at once, without a reply (a reset
    // when the request was sent before the close).
    let mut s = std::net::TcpStream::connect(proxy.admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: k\r\n\r\n");
    let mut buf = Vec::new();
    let closed = match s.read_to_end(&mut buf) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed && buf.is_empty(), "{buf:?}");
    // Refusals are logged, not one line each.
    let log = proxy.log();
    let lines = log.matches("admin connections refused").count();
    assert!((1..=2).contains(&lines), "{lines} lines");
    assert!(!log.contains("Too many open files"), "{log}");
    drop(held);
}
