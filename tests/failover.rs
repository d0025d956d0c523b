//! Health checks, failover, read balancing and write fan-out, on real servers that are killed
//! (kill -9), stopped (SIGSTOP) and restarted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Commands;
use support::{
    command_calls, config_toml, key_on, keys_on, metric, replica_set, wait_until, Proxy,
    RedisServer,
};

/// Fast health checks so that tests see transitions quickly.
const FAST_HEALTH: &str =
    "[pool.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 2";

fn pool(extra: &str) -> String {
    format!("{extra}\n{FAST_HEALTH}")
}

/// `keyway_server_up` of `server`; the series must be exported (a missing one is not "down").
fn up(proxy: &Proxy, server: &str) -> f64 {
    let series = format!("keyway_server_up{{server=\"{server}\"}}");
    metric(&proxy.metrics(), &series).unwrap_or_else(|| panic!("series {series} exists"))
}

#[test]
fn probes_and_traffic_drive_the_up_down_state_machine() {
    let (mut a, b) = (RedisServer::start(), RedisServer::start());
    let proxy = Proxy::start_toml(&config_toml(&[&a, &b], &pool("timeout = \"200ms\"")));
    assert_eq!(up(&proxy, "s0"), 1.0);
    let port = a.port;
    a.kill();
    let start = Instant::now();
    assert!(wait_until(Duration::from_secs(5), || up(&proxy, "s0") == 0.0));
    // fall = 2 failures at a 100 ms interval (connect failures on live connections count too).
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(up(&proxy, "s1"), 1.0, "the other server stays up");
    let m = proxy.metrics();
    assert_eq!(
        metric(
            &m,
            "keyway_server_state_changes_total{server=\"s0\",state=\"down\"}"
        ),
        Some(1.0)
    );
    let _a = RedisServer::start_on(port);
    assert!(wait_until(Duration::from_secs(5), || up(&proxy, "s0") == 1.0));
    let m = proxy.metrics();
    assert_eq!(
        metric(
            &m,
            "keyway_server_state_changes_total{server=\"s0\",state=\"up\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn masterdown_replies_count_as_failures_but_script_errors_do_not() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    let proxy = Proxy::start_toml(&config_toml(
        &[&a, &b],
        "[pool.health]\ninterval = \"10s\"\nfall = 3",
    ));
    let mut con = proxy.client();
    let key = key_on(&proxy, 0, "md");
    // A client cannot take a server down by making a script return a failure text.
    for _ in 0..5 {
        let _ = redis::cmd("EVAL")
            .arg("return redis.error_reply('LOADING fake')")
            .arg(1)
            .arg(&key)
            .query::<redis::Value>(&mut con);
    }
    assert_eq!(up(&proxy, "s0"), 1.0);
    // A real MASTERDOWN: s0 becomes a replica of a master that does not exist, and refuses to
    // serve stale data. Live traffic sees it before the next probe.
    let mut direct = a.client();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("replica-serve-stale-data")
        .arg("no")
        .query(&mut direct)
        .unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(support::free_port())
        .query(&mut direct)
        .unwrap();
    for _ in 0..3 {
        let err = con.get::<_, Option<String>>(&key).unwrap_err();
        assert!(
            err.to_string().to_uppercase().contains("MASTERDOWN"),
            "{err}"
        );
    }
    assert!(wait_until(Duration::from_secs(2), || up(&proxy, "s0") == 0.0));
}

/// Runs `clients` threads doing GETs of `keys` until `stop`; counts successes and errors, and
/// errors after `quiet_after` is set.
struct ReadLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    late_errors: Arc<AtomicU64>,
    detected: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ReadLoad {
    fn start(proxy: &Proxy, keys: &[String], clients: usize) -> ReadLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let late_errors = Arc::new(AtomicU64::new(0));
        let detected = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|t| {
                let (stop, ok, errors, late, detected) = (
                    stop.clone(),
                    ok.clone(),
                    errors.clone(),
                    late_errors.clone(),
                    detected.clone(),
                );
                let keys = keys.to_vec();
                let mut con = proxy.client();
                std::thread::spawn(move || {
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        let key = &keys[i % keys.len()];
                        i += 7;
                        let after_detection = detected.load(Ordering::Relaxed);
                        match con.get::<_, String>(key) {
                            Ok(v) => {
                                assert_eq!(&v, key, "a read returned another key's value");
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                if after_detection {
                                    eprintln!("error after detection: {e}");
                                    late.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        ReadLoad {
            stop,
            ok,
            errors,
            late_errors,
            detected,
            threads,
        }
    }

    fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.late_errors.load(Ordering::Relaxed),
        )
    }
}

fn fill(proxy: &Proxy, n: usize) -> Vec<String> {
    let mut con = proxy.client();
    let keys: Vec<String> = (0..n).map(|i| format!("r:{i}")).collect();
    for k in &keys {
        let _: () = con.set(k, k).unwrap();
    }
    keys
}

#[test]
fn reads_survive_a_killed_replica() {
    let (a, mut b, c) = support::three();
    let toml = config_toml(
        &[&a, &b, &c],
        &pool("replicas = 2\nread = \"round_robin\"\ntimeout = \"500ms\""),
    );
    let proxy = Proxy::start_toml(&toml);
    let keys = fill(&proxy, 300);
    let load = ReadLoad::start(&proxy, &keys, 4);
    std::thread::sleep(Duration::from_millis(300));
    b.kill();
    assert!(wait_until(Duration::from_secs(5), || up(&proxy, "s1") == 0.0));
    load.detected.store(true, Ordering::Relaxed);
    let before = load.ok.load(Ordering::Relaxed);
    assert!(wait_until(Duration::from_secs(10), || load
        .ok
        .load(Ordering::Relaxed)
        > before + 2000));
    let (ok, errors, late) = load.finish();
    eprintln!("reads ok {ok}, errors {errors}, after detection {late}");
    assert_eq!(late, 0, "no errors once the dead server is detected");
    // Reads in flight on the dead server were retried on the other replica.
    assert!(
        errors <= 4,
        "at most the reads in flight at the kill fail: {errors}"
    );
}

#[test]
fn reads_survive_a_hung_replica_within_timeout_and_fall() {
    let (a, b, c) = support::three();
    let toml = config_toml(
        &[&a, &b, &c],
        &pool("replicas = 2\nread = \"round_robin\"\ntimeout = \"200ms\""),
    );
    let proxy = Proxy::start_toml(&toml);
    let keys = fill(&proxy, 300);
    let load = ReadLoad::start(&proxy, &keys, 4);
    std::thread::sleep(Duration::from_millis(300));
    b.signal("STOP");
    let stopped = Instant::now();
    assert!(wait_until(Duration::from_secs(5), || up(&proxy, "s1") == 0.0));
    // Bounded by timeout and fall: two failed probes of 100 ms at 100 ms intervals, or
    // request timeouts of 200 ms.
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopped.elapsed()
    );
    load.detected.store(true, Ordering::Relaxed);
    let before = load.ok.load(Ordering::Relaxed);
    assert!(wait_until(Duration::from_secs(10), || load
        .ok
        .load(Ordering::Relaxed)
        > before + 2000));
    let (ok, errors, late) = load.finish();
    b.signal("CONT");
    eprintln!("reads ok {ok}, errors {errors}, after detection {late}");
    assert_eq!(late, 0);
    assert!(errors <= 4, "{errors}");
}

fn spread(policy: &str) -> Vec<u64> {
    let servers = support::servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start_toml(&config_toml(
        &refs,
        &format!("replicas = 3\nread = \"{policy}\""),
    ));
    let keys = fill(&proxy, 100);
    let mut con = proxy.client();
    let base: Vec<u64> = servers.iter().map(|s| command_calls(s, "get")).collect();
    let mut pipe = redis::pipe();
    for i in 0..3000 {
        pipe.cmd("GET").arg(&keys[i % keys.len()]);
    }
    let _: Vec<String> = pipe.query(&mut con).unwrap();
    servers
        .iter()
        .zip(base)
        .map(|(s, b)| command_calls(s, "get") - b)
        .collect()
}

#[test]
fn round_robin_and_random_spread_reads_evenly() {
    for policy in ["round_robin", "random"] {
        let calls = spread(policy);
        assert_eq!(calls.iter().sum::<u64>(), 3000, "{policy}: {calls:?}");
        for c in &calls {
            assert!(
                (900..=1100).contains(c),
                "{policy}: not within 10% of 1000: {calls:?}"
            );
        }
    }
    let calls = spread("primary");
    assert_eq!(calls.iter().sum::<u64>(), 3000);
    assert!(
        calls.iter().filter(|&&c| c > 0).count() >= 2,
        "primaries differ per slot: {calls:?}"
    );
}

#[test]
fn least_outstanding_avoids_a_slow_replica() {
    let servers = support::servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    // Health checks are made lenient so that only the balancing policy can avoid the slow one.
    let toml = config_toml(
        &refs,
        "replicas = 3\nread = \"least_outstanding\"\ntimeout = \"5s\"\n[pool.health]\nfall = 1000\ntimeout = \"5s\"",
    );
    let proxy = Proxy::start_toml(&toml);
    let keys = fill(&proxy, 100);
    let slow = &servers[1];
    let base: Vec<u64> = servers.iter().map(|s| command_calls(s, "get")).collect();
    // Pause s1's clients for 1.5 s (its replies stall), while 8 clients read.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .query(&mut slow.client())
        .unwrap();
    let load = ReadLoad::start(&proxy, &keys, 8);
    std::thread::sleep(Duration::from_millis(1200));
    let (ok, errors, _) = load.finish();
    assert_eq!(errors, 0);
    let calls: Vec<u64> = servers
        .iter()
        .zip(&base)
        .map(|(s, b)| command_calls(s, "get") - b)
        .collect();
    eprintln!("reads {ok}, per server {calls:?}");
    let total: u64 = calls.iter().sum();
    assert!(total >= 1000, "{calls:?}");
    assert!(
        calls[1] * 10 < total,
        "most reads avoid the paused replica: {calls:?}"
    );
}

#[test]
fn write_all_reaches_every_replica_and_reports_partial_failures() {
    let (a, b, mut c) = support::three();
    let servers = [&a, &b, &c];
    let proxy = Proxy::start_toml(&config_toml(
        &servers,
        &pool("replicas = 2\nwrite = \"all\"\ntimeout = \"300ms\""),
    ));
    let mut con = proxy.client();
    for i in 0..50 {
        let key = format!("w:{i}");
        let _: () = con.set(&key, i).unwrap();
        for &r in &replica_set(&proxy, &key) {
            let v: Option<i64> = servers[r].client().get(&key).unwrap();
            assert_eq!(v, Some(i), "replica s{r} of {key}");
        }
    }
    // Multi-key writes split per replica set reach every replica too.
    let keys: Vec<String> = (0..20).map(|i| format!("mw:{i}")).collect();
    let mut mset = redis::cmd("MSET");
    for k in &keys {
        mset.arg(k).arg("v");
    }
    let _: () = mset.query(&mut con).unwrap();
    for k in &keys {
        for &r in &replica_set(&proxy, k) {
            assert!(
                servers[r].client().exists::<_, bool>(k).unwrap(),
                "{k} on s{r}"
            );
        }
    }
    // DBSIZE counts each key once, KEYS and SCAN list each once.
    let n: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(n, 70);
    let listed: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    assert_eq!(listed.len(), 70);
    let scanned: Vec<String> = con
        .scan()
        .unwrap()
        .map(|k: redis::RedisResult<String>| k.unwrap())
        .collect();
    assert_eq!(scanned.len(), 70);
    // One replica down: a write to its slots is refused at once, naming it, and nothing is
    // written on the other replica.
    let key = (0..)
        .map(|i| format!("p:{i}"))
        .find(|k| replica_set(&proxy, k).contains(&2))
        .unwrap();
    let _: () = con.set(&key, 1).unwrap();
    c.kill();
    assert!(wait_until(Duration::from_secs(5), || up(&proxy, "s2") == 0.0));
    let err = con.set::<_, _, ()>(&key, 2).unwrap_err();
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
    assert!(
        err.to_string()
            .contains("server 's2' holding a replica of these keys is down; write = all needs every replica, so nothing was written"),
        "{err}"
    );
    // Reads of that key still work from the healthy replica, which kept the value.
    let v: i64 = con.get(&key).unwrap();
    assert_eq!(v, 1);
}

/// Milliseconds since `t`.
fn ms_since(t: Instant) -> u128 {
    t.elapsed().as_millis()
}

/// Three servers, s1 stopped (SIGSTOP) once Keyway (with `pool_extra`, fast health checks and a
/// 3 s request timeout) has written `keys`; returns once Keyway marks s1 down.
fn hung_s1(pool_extra: &str) -> (Vec<RedisServer>, Proxy) {
    let servers = support::servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start_toml(&config_toml(
        &refs,
        &pool(&format!("timeout = \"3s\"\n{pool_extra}")),
    ));
    servers[1].signal("STOP");
    assert!(wait_until(Duration::from_secs(5), || up(&proxy, "s1") == 0.0));
    (servers, proxy)
}

/// `n` keys whose replica set contains server `index` (`with`) or not.
fn keys_with(proxy: &Proxy, index: usize, with: bool, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("ff:{i}"))
        .filter(|k| replica_set(proxy, k).contains(&index) == with)
        .take(n)
        .collect()
}

/// With a server stopped (SIGSTOP) and marked down by the health checks, no write mode and no
/// read waits for it: every answer comes at once (well under the 3 s request timeout), and
/// writes that need it are refused with an error naming it, nothing written elsewhere.
#[test]
fn writes_and_reads_fail_fast_on_a_hung_server_marked_down_in_every_mode() {
    // write = all, replicas = 2.
    let (servers, proxy) = hung_s1("replicas = 2\nwrite = \"all\"");
    let mut con = proxy.client();
    let mut slowest = 0;
    for k in keys_with(&proxy, 1, true, 20) {
        let t = Instant::now();
        let err = con.set::<_, _, ()>(&k, "v").unwrap_err();
        slowest = slowest.max(ms_since(t));
        assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
        assert!(
            err.to_string().contains("server 's1' holding a replica"),
            "{err}"
        );
        let other = replica_set(&proxy, &k)
            .into_iter()
            .find(|&r| r != 1)
            .unwrap();
        assert!(
            !servers[other].client().exists::<_, bool>(&k).unwrap(),
            "nothing written"
        );
    }
    for k in keys_with(&proxy, 1, false, 20) {
        let t = Instant::now();
        let _: () = con.set(&k, "v").unwrap();
        slowest = slowest.max(ms_since(t));
    }
    // A split write with a part on s1's replica sets is refused whole.
    let mut mset = redis::cmd("MSET");
    let (on, off) = (
        keys_with(&proxy, 1, true, 1),
        keys_with(&proxy, 1, false, 30),
    );
    for k in on.iter().chain(&off[20..]) {
        mset.arg(k).arg("m");
    }
    let err = mset.query::<()>(&mut con).unwrap_err();
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
    let got: Vec<Option<String>> = con.mget(&off[20..]).unwrap();
    assert!(got.iter().all(Option::is_none), "nothing written: {got:?}");
    // Reads of keys whose primary is s1 come from the other replica.
    for k in keys_with(&proxy, 1, true, 20) {
        let t = Instant::now();
        let _: Option<String> = con.get(&k).unwrap();
        slowest = slowest.max(ms_since(t));
    }
    assert!(slowest < 500, "all: slowest {slowest} ms");
    servers[1].signal("CONT");
    assert!(wait_until(Duration::from_secs(5), || up(&proxy, "s1") == 1.0));
    let k = &keys_with(&proxy, 1, true, 1)[0];
    let _: () = con.set(k, "back").unwrap();
    drop((proxy, servers));

    // write = quorum, replicas = 3: a majority is up, every write succeeds at once.
    let (servers, proxy) = hung_s1("replicas = 3\nwrite = \"quorum\"");
    let mut con = proxy.client();
    let mut slowest = 0;
    for i in 0..50 {
        let t = Instant::now();
        let _: () = con.set(format!("q:{i}"), i).unwrap();
        slowest = slowest.max(ms_since(t));
    }
    assert!(slowest < 500, "quorum: slowest {slowest} ms");
    assert_eq!((servers[0].dbsize(), servers[2].dbsize()), (50, 50));
    servers[1].signal("CONT");
    drop((proxy, servers));

    // write = primary, replicas = 2: a key whose primary is s1 is refused at once; one whose
    // secondary is s1 is written.
    let (servers, proxy) = hung_s1("replicas = 2\nwrite = \"primary\"");
    let mut con = proxy.client();
    let t = Instant::now();
    let on_s1 = key_on(&proxy, 1, "p");
    let err = con.set::<_, _, ()>(&on_s1, "v").unwrap_err();
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
    assert!(
        err.to_string()
            .contains("server 's1', the primary of these keys, is down"),
        "{err}"
    );
    let second = (0..)
        .map(|i| format!("p2:{i}"))
        .find(|k| replica_set(&proxy, k)[1] == 1)
        .unwrap();
    let _: () = con.set(&second, "v").unwrap();
    assert!(ms_since(t) < 500, "primary: {} ms", ms_since(t));
    servers[1].signal("CONT");
    drop((proxy, servers));

    // write = two_phase, replicas = 2: refused at once as before.
    let (servers, proxy) = hung_s1("replicas = 2\nwrite = \"two_phase\"");
    let mut con = proxy.client();
    let t = Instant::now();
    let k = &keys_with(&proxy, 1, true, 1)[0];
    let err = con.set::<_, _, ()>(k, "v").unwrap_err();
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
    assert!(ms_since(t) < 500, "two_phase: {} ms", ms_since(t));
    servers[1].signal("CONT");
    drop((proxy, servers));

    // replicas = 1: s1's slots go to the next server (failover = next) at once.
    let (servers, proxy) = hung_s1("replicas = 1");
    let mut con = proxy.client();
    let t = Instant::now();
    for k in keys_on(&proxy, 1, "r", 20) {
        let _: () = con.set(&k, "v").unwrap();
        let v: String = con.get(&k).unwrap();
        assert_eq!(v, "v");
    }
    assert!(ms_since(t) < 1000, "replicas = 1: {} ms", ms_since(t));
    servers[1].signal("CONT");
}

/// A write in flight when its replica hangs waits until the health checks mark the server down
/// and then the probe's timeout, not the 5 s request timeout; its error says that the write's
/// outcome on that server is unknown.
#[test]
fn a_write_waiting_on_a_replica_that_goes_down_fails_without_waiting_the_timeout() {
    let servers = support::servers(2);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start_toml(&config_toml(
        &refs,
        &pool("timeout = \"5s\"\nreplicas = 2\nwrite = \"all\""),
    ));
    let mut con = proxy.client();
    let _: () = con.set("k", "before").unwrap();
    servers[1].signal("STOP");
    let t = Instant::now();
    let err = con.set::<_, _, ()>("k", "after").unwrap_err().to_string();
    let took = t.elapsed();
    servers[1].signal("CONT");
    assert!(took < Duration::from_secs(2), "{took:?}: {err}");
    assert!(
        err.contains("write acknowledged by 1 of 2 replicas (2 needed); outcome unknown on server 's1' (down by the health checks, no answer within"),
        "{err}"
    );
}

/// After a timeout, the error says the write's outcome on the server that timed out is
/// unknown, not that it failed there: and indeed the hung server applies it once it resumes.
#[test]
fn a_timed_out_replica_is_reported_as_outcome_unknown_and_applies_the_write_later() {
    let servers = support::servers(2);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    // Health checks too slow to see the hang: the write goes to s1 and times out.
    let proxy = Proxy::start_toml(&config_toml(
        &refs,
        "timeout = \"300ms\"\nreplicas = 2\nwrite = \"all\"\n[pool.health]\ninterval = \"30s\"",
    ));
    let mut raw = support::RawClient::connect(proxy.addr);
    assert_eq!(raw.call(&["SET", "k", "before"]), b"+OK\r\n");
    servers[1].signal("STOP");
    let reply = raw.call(&["SET", "k", "after"]);
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "-ERR keyway: write acknowledged by 1 of 2 replicas (2 needed); outcome unknown on server 's1' (did not answer within 300ms): it may have applied the write; replicas may differ until the key is written again\r\n"
    );
    servers[1].signal("CONT");
    assert!(wait_until(Duration::from_secs(5), || {
        servers[1].client().get::<_, String>("k").unwrap() == "after"
    }));
}

/// `quorum` answers once a majority acknowledged: a replica that hangs (not yet marked down)
/// is not waited for.
#[test]
fn quorum_answers_at_a_majority_without_waiting_for_a_hung_replica() {
    let servers = support::servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start_toml(&config_toml(
        &refs,
        "timeout = \"5s\"\nreplicas = 3\nwrite = \"quorum\"\n[pool.health]\ninterval = \"30s\"",
    ));
    let mut con = proxy.client();
    let _: () = con.set("warm", 1).unwrap();
    servers[1].signal("STOP");
    let t = Instant::now();
    for i in 0..20 {
        let _: () = con.set(format!("q:{i}"), i).unwrap();
    }
    let took = t.elapsed();
    servers[1].signal("CONT");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn quorum_succeeds_on_a_majority_and_primary_writes_one() {
    let (a, b, mut c) = support::three();
    let servers = [&a, &b, &c];
    let proxy = Proxy::start_toml(&config_toml(
        &servers,
        &pool("replicas = 3\nwrite = \"quorum\"\ntimeout = \"300ms\""),
    ));
    let mut con = proxy.client();
    c.kill();
    for i in 0..20 {
        let _: () = con.set(format!("q:{i}"), i).unwrap();
    }
    for s in [&a, &b] {
        assert_eq!(s.dbsize(), 20);
    }
    drop(proxy);
    let (x, y) = (RedisServer::start(), RedisServer::start());
    let servers = [&x, &y];
    let proxy = Proxy::start_toml(&config_toml(&servers, "replicas = 2\nwrite = \"primary\""));
    let mut con = proxy.client();
    for i in 0..20 {
        let key = format!("pr:{i}");
        let _: () = con.set(&key, i).unwrap();
        let set = replica_set(&proxy, &key);
        assert!(servers[set[0]].client().exists::<_, bool>(&key).unwrap());
        assert!(!servers[set[1]].client().exists::<_, bool>(&key).unwrap());
    }
    // SPOP would pop different members on different replicas: refused when writes fan out.
    drop(proxy);
    let proxy = Proxy::start_toml(&config_toml(&servers, "replicas = 2\nwrite = \"all\""));
    let err = redis::cmd("SPOP")
        .arg("set")
        .query::<redis::Value>(&mut proxy.client())
        .unwrap_err();
    assert!(err.to_string().contains("SPOP"), "{err}");
}

#[test]
fn failover_next_moves_only_the_down_servers_slots_and_they_come_back() {
    let (mut a, b, c) = support::three();
    // failover = "next" is the default.
    let proxy = Proxy::start_toml(&config_toml(&[&a, &b, &c], &pool("")));
    let mut con = proxy.client();
    let on_a = keys_on(&proxy, 0, "fa", 20);
    let on_b = keys_on(&proxy, 1, "fb", 20);
    let on_c = keys_on(&proxy, 2, "fc", 20);
    for k in on_a.iter().chain(&on_b).chain(&on_c) {
        let _: () = con.set(k, "old").unwrap();
    }
    let port = a.port;
    a.kill();
    assert!(wait_until(Duration::from_secs(5), || up(&proxy, "s0") == 0.0));
    // The other servers' keys did not move: still there, still served.
    for k in on_b.iter().chain(&on_c) {
        let v: String = con.get(k).unwrap();
        assert_eq!(v, "old", "{k} moved");
    }
    // s0's keys now go to the next server of their ranking (a cache: they start empty there).
    for k in &on_a {
        let v: Option<String> = con.get(k).unwrap();
        assert_eq!(v, None);
        let _: () = con.set(k, "stand-in").unwrap();
        let topo = proxy.shared.topology.load();
        let slot = keyway::routing::key_slot(k.as_bytes(), topo.hash_tag);
        let next = usize::from(topo.table.ranked(slot)[1]);
        let holder = if next == 1 { &b } else { &c };
        assert!(
            holder.client().exists::<_, bool>(k).unwrap(),
            "{k} on its next server s{next}"
        );
    }
    // s0 returns (empty): its slots return to it, and the stand-in's values are not seen.
    let _a2 = RedisServer::start_on(port);
    assert!(wait_until(Duration::from_secs(5), || up(&proxy, "s0") == 1.0));
    for k in &on_a {
        let v: Option<String> = con.get(k).unwrap();
        assert_eq!(v, None, "{k} is served by s0 again");
    }
}

#[test]
fn failover_none_answers_a_clear_error_and_all_down_still_tries() {
    let (mut a, mut b) = (RedisServer::start(), RedisServer::start());
    let toml = config_toml(
        &[&a, &b],
        &format!(
            "timeout = \"300ms\"\n{}",
            FAST_HEALTH.replace("rise = 2", "rise = 2\nfailover = \"none\"")
        ),
    );
    let proxy = Proxy::start_toml(&toml);
    let mut con = proxy.client();
    let ka = key_on(&proxy, 0, "na");
    let kb = key_on(&proxy, 1, "nb");
    a.kill();
    assert!(wait_until(Duration::from_secs(5), || up(&proxy, "s0") == 0.0));
    let err = con.get::<_, Option<String>>(&ka).unwrap_err();
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
    assert!(
        err.to_string().contains("s0") && err.to_string().contains("failover = none"),
        "{err}"
    );
    let _: () = con.set(&kb, 1).unwrap();
    // Everything down: the guard still sends requests, which fail fast naming the server.
    b.kill();
    assert!(wait_until(Duration::from_secs(5), || up(&proxy, "s1") == 0.0));
    let start = Instant::now();
    let err = con.get::<_, Option<String>>(&kb).unwrap_err();
    assert!(err.to_string().contains("s1"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_split_command_with_a_part_on_a_hung_server_answers_that_servers_error() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    // Health checks slow enough that the hung server stays up: its parts are sent and time out.
    let proxy = Proxy::start_toml(&config_toml(
        &[&a, &b],
        "timeout = \"300ms\"\n[pool.health]\ninterval = \"30s\"",
    ));
    let mut con = proxy.client();
    let on_a = keys_on(&proxy, 0, "ha", 3);
    let on_b = keys_on(&proxy, 1, "hb", 3);
    let mixed: Vec<&String> = on_a.iter().zip(&on_b).flat_map(|(x, y)| [x, y]).collect();
    let mut mset = redis::cmd("MSET");
    for k in &mixed {
        mset.arg(k.as_str()).arg("before");
    }
    let _: () = mset.query(&mut con).unwrap();
    b.signal("STOP");
    let start = Instant::now();
    let mut mset = redis::cmd("MSET");
    for k in &mixed {
        mset.arg(k.as_str()).arg("after");
    }
    let err = mset.query::<()>(&mut con).unwrap_err().to_string();
    assert!(err.contains("s1"), "the error names the hung server: {err}");
    let err = redis::cmd("MGET")
        .arg(&mixed)
        .query::<Vec<Option<String>>>(&mut con)
        .unwrap_err()
        .to_string();
    assert!(err.contains("s1"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // The healthy server's part was applied: a split write is not atomic (two_phase is).
    let got: Vec<String> = a.client().mget(&on_a).unwrap();
    assert_eq!(got, vec!["after"; 3]);
    b.signal("CONT");
    // Once the server answers again, so does the split.
    assert!(wait_until(Duration::from_secs(5), || {
        redis::cmd("MGET")
            .arg(&mixed)
            .query::<Vec<Option<String>>>(&mut con)
            .is_ok()
    }));
}

/// Commands for every server (DBSIZE, KEYS, FLUSHALL, SCRIPT LOAD) while one is marked down are
/// refused at once with an error naming it, and sent to none (FLUSHALL deletes nothing on the
/// servers that are up); once it is back they run again.
#[test]
fn whole_pool_commands_fail_fast_on_a_server_marked_down() {
    let (servers, proxy) = hung_s1("");
    let mut con = proxy.client();
    let key = key_on(&proxy, 0, "kept");
    let _: () = con.set(&key, "v").unwrap();
    for (cmd, args) in [
        ("DBSIZE", vec![]),
        ("KEYS", vec!["*"]),
        ("FLUSHALL", vec![]),
        ("SCRIPT", vec!["LOAD", "return 1"]),
    ] {
        let err = redis::cmd(cmd)
            .arg(&args)
            .query::<redis::Value>(&mut con)
            .unwrap_err();
        assert_eq!(err.code(), Some("TRYAGAIN"), "{cmd}: {err}");
        assert!(
            err.to_string().contains("server 's1' is down")
                && err
                    .to_string()
                    .contains("needs every server, so it was sent to none"),
            "{cmd}: {err}"
        );
    }
    assert_eq!(servers[0].dbsize(), 1, "FLUSHALL was sent nowhere");
    servers[1].signal("CONT");
    assert!(wait_until(Duration::from_secs(5), || up(&proxy, "s1") == 1.0));
    let n: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(n, 1);
}
