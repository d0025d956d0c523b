//! Two-phase commit on plain Redis: atomic fan-out and cross-server writes, crash recovery by
//! any proxy (failpoints), participant failures, concurrency invariants, conflicts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Commands;
use support::{config_toml, metric, replica_set, wait_until, Proxy, ProxyProcess, RedisServer};

fn two_phase(extra: &str) -> String {
    format!("replicas = 2\nwrite = \"two_phase\"\ntimeout = \"500ms\"\n{extra}")
}

/// Every `__keyway:lock:*` and `__keyway:tx:*` key on a server (decisions are kept a while).
fn leftovers(s: &RedisServer) -> Vec<String> {
    let mut con = s.client();
    let mut keys: Vec<String> = con.keys("__keyway:lock:*").unwrap();
    keys.extend(con.keys::<_, Vec<String>>("__keyway:tx:*").unwrap());
    keys
}

fn value(s: &RedisServer, key: &str) -> Option<String> {
    s.client().get(key).unwrap()
}

#[test]
fn writes_land_on_every_replica_exactly() {
    let servers = support::servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start_toml(&config_toml(&refs, &two_phase("")));
    let mut con = proxy.client();
    // Single-key writes on both replicas.
    let _: () = con.set("k", "v").unwrap();
    for &r in &replica_set(&proxy, "k") {
        assert_eq!(value(&servers[r], "k").as_deref(), Some("v"));
    }
    // Counters come back exact past 2^53 (Lua numbers are doubles).
    let _: () = con.set("big", "9007199254740992").unwrap();
    let n: i64 = con.incr("big", 1).unwrap();
    assert_eq!(n, 9_007_199_254_740_993);
    let n: i64 = redis::cmd("HINCRBY")
        .arg("h")
        .arg("f")
        .arg(9_007_199_254_740_993i64)
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 9_007_199_254_740_993);
    // MSET across servers, then DEL across servers counting each key once.
    let keys: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
    let mut mset = redis::cmd("MSET");
    for k in &keys {
        mset.arg(k).arg(format!("v-{k}"));
    }
    let _: () = mset.query(&mut con).unwrap();
    for k in &keys {
        for &r in &replica_set(&proxy, k) {
            assert_eq!(value(&servers[r], k), Some(format!("v-{k}")), "{k} on s{r}");
        }
    }
    let deleted: i64 = redis::cmd("DEL")
        .arg(&keys[..6])
        .arg("missing")
        .query(&mut con)
        .unwrap();
    assert_eq!(deleted, 6);
    // Errors from the command itself come back as they are.
    let _: () = redis::cmd("LPUSH")
        .arg("list")
        .arg("x")
        .query(&mut con)
        .unwrap();
    let err = con.incr::<_, _, i64>("list", 1).unwrap_err();
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    // Nothing is left locked, and no decision outlives a transaction every replica took.
    for s in &servers {
        assert!(leftovers(s).is_empty(), "{:?}", leftovers(s));
        let decisions: Vec<String> = s.client().keys("__keyway:decision:*").unwrap();
        assert!(decisions.is_empty(), "{decisions:?}");
    }
    let m = proxy.metrics();
    let committed = metric(
        &m,
        "keyway_twophase_transactions_total{outcome=\"committed\"}",
    )
    .expect("series keyway_twophase_transactions_total{outcome=\"committed\"} exists");
    assert!(committed >= 6.0, "{m}");
    let yes = metric(&m, "keyway_twophase_prepares_total{vote=\"yes\"}")
        .expect("series keyway_twophase_prepares_total{vote=\"yes\"} exists");
    assert!(yes >= 6.0, "{m}");
}

#[test]
fn a_pipeline_sees_its_own_two_phase_writes_in_order() {
    let servers = support::servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start_toml(&config_toml(&refs, &two_phase("")));
    let mut con = proxy.client();
    let _: () = con.set("k", "old").unwrap();
    let (a, b, c, d): (String, String, i64, String) = redis::pipe()
        .cmd("SET")
        .arg("k")
        .arg("new")
        .cmd("GET")
        .arg("k")
        .cmd("INCR")
        .arg("n")
        .cmd("GET")
        .arg("n")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        (a.as_str(), b.as_str(), c, d.as_str()),
        ("OK", "new", 1, "1")
    );
    let got: Vec<Option<String>> = redis::pipe()
        .cmd("MSET")
        .arg("x1")
        .arg("1")
        .arg("x2")
        .arg("2")
        .arg("x3")
        .arg("3")
        .cmd("MGET")
        .arg("x1")
        .arg("x2")
        .arg("x3")
        .query::<(String, Vec<Option<String>>)>(&mut con)
        .unwrap()
        .1;
    assert_eq!(
        got,
        vec![Some("1".into()), Some("2".into()), Some("3".into())]
    );
    // Keyway's own keys never show in listings.
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    assert!(keys.iter().all(|k| !k.starts_with("__keyway")), "{keys:?}");
    // A command too long to stage is refused, not left half-done.
    let mut push = redis::cmd("RPUSH");
    push.arg("biglist");
    for i in 0..9000 {
        push.arg(i);
    }
    let err = push.query::<i64>(&mut con).unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
    let n: i64 = redis::cmd("RPUSH")
        .arg("biglist")
        .arg("y")
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn commands_that_cannot_be_staged_are_refused() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    let proxy = Proxy::start_toml(&config_toml(&[&a, &b], &two_phase("")));
    let mut con = proxy.client();
    for (cmd, args) in [("SPOP", vec!["s"]), ("EVAL", vec!["return 1", "1", "k"])] {
        let err = redis::cmd(cmd)
            .arg(&args)
            .query::<redis::Value>(&mut con)
            .unwrap_err();
        assert!(err.to_string().contains("two_phase"), "{cmd}: {err}");
    }
    // Reads are unchanged.
    let _: () = con.set("r", "1").unwrap();
    let v: String = con.get("r").unwrap();
    assert_eq!(v, "1");
}

/// A proxy process that crashes at `failpoint` during an MSET over several servers.
fn crash_during_mset(failpoint: &str, servers: &[&RedisServer], keys: &[String]) {
    let toml = config_toml(servers, &two_phase(""));
    let mut crashing = ProxyProcess::start_env(&toml, &[], &[("KW_FAILPOINT", failpoint)]);
    let mut con = redis::Client::open(format!("redis://{}/", crashing.addr))
        .unwrap()
        .get_connection()
        .unwrap();
    let mut mset = redis::cmd("MSET");
    for k in keys {
        mset.arg(k).arg("new");
    }
    assert!(
        mset.query::<()>(&mut con).is_err(),
        "the proxy died mid-write"
    );
    assert_eq!(
        crashing.wait_exit(Duration::from_secs(5)),
        Some(86),
        "{}",
        crashing.log()
    );
}

fn old_values(proxy_toml: &str, keys: &[String]) {
    let proxy = Proxy::start_toml(proxy_toml);
    let mut con = proxy.client();
    for k in keys {
        let _: () = con.set(k, "old").unwrap();
    }
}

fn assert_everywhere(servers: &[&RedisServer], proxy: &Proxy, keys: &[String], want: &str) {
    for k in keys {
        for &r in &replica_set(proxy, k) {
            assert_eq!(value(servers[r], k).as_deref(), Some(want), "{k} on s{r}");
        }
    }
    for s in servers {
        assert!(leftovers(s).is_empty(), "{:?}", leftovers(s));
    }
}

/// Every key set to "old" through a healthy proxy on `toml`, then an MSET of "new" by a proxy
/// that crashes at `failpoint`.
fn old_then_crashed_mset(toml: &str, failpoint: &str, servers: &[&RedisServer], keys: &[String]) {
    old_values(toml, keys);
    crash_during_mset(failpoint, servers, keys);
}

/// A two-phase pool whose recovery runs on the given lock timeout and sweep interval.
fn recovery_toml(servers: &[&RedisServer], lock_timeout: &str, sweep_interval: &str) -> String {
    config_toml(
        servers,
        &two_phase(&format!(
            "[pool.two_phase]\nlock_timeout = \"{lock_timeout}\"\nsweep_interval = \"{sweep_interval}\""
        )),
    )
}

fn spread_keys() -> Vec<String> {
    (0..8).map(|i| format!("crash{i}")).collect()
}

#[test]
fn crash_after_prepare_rolls_back_through_the_sweep() {
    let (a, b, c) = support::three();
    let servers = [&a, &b, &c];
    let keys = spread_keys();
    let fast = recovery_toml(&servers, "300ms", "100ms");
    old_then_crashed_mset(&fast, "after_prepare", &servers, &keys);
    // Locks and intents are left behind by the dead proxy.
    assert!(servers.iter().any(|s| !leftovers(s).is_empty()));
    // A fresh proxy's sweep resolves them: the transaction never reached its commit point.
    let proxy = Proxy::start_toml(&fast);
    let start = Instant::now();
    assert!(wait_until(Duration::from_secs(5), || servers
        .iter()
        .all(|s| leftovers(s).is_empty())));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_everywhere(&servers, &proxy, &keys, "old");
    let aborted = metric(
        &proxy.metrics(),
        "keyway_twophase_recoveries_total{decision=\"abort\"}",
    )
    .expect("series keyway_twophase_recoveries_total{decision=\"abort\"} exists");
    assert!(aborted >= 1.0);
}

#[test]
fn crash_after_prepare_is_resolved_by_the_next_write_that_meets_the_lock() {
    let (a, b, c) = support::three();
    let servers = [&a, &b, &c];
    let keys = spread_keys();
    // No sweep to speak of: only a write can find the stale lock.
    let toml = recovery_toml(&servers, "300ms", "1h");
    old_then_crashed_mset(&toml, "after_prepare", &servers, &keys);
    let proxy = Proxy::start_toml(&toml);
    std::thread::sleep(Duration::from_millis(400));
    let mut con = proxy.client();
    let _: () = con.set(&keys[0], "later").unwrap();
    // The crashed MSET is aborted on the servers that write met; the others stay locked until
    // a write or the sweep meets them. Write each key once more to resolve all of them.
    for k in &keys[1..] {
        let v: String = con.get(k).unwrap();
        assert_eq!(v, "old", "{k}: the crashed MSET must not show");
        let _: () = con.set(k, "old").unwrap();
    }
    for s in &servers {
        assert!(leftovers(s).is_empty(), "{:?}", leftovers(s));
    }
    assert_eq!(
        value(servers[replica_set(&proxy, &keys[0])[0]], &keys[0]).as_deref(),
        Some("later")
    );
}

#[test]
fn crash_after_the_commit_point_rolls_forward() {
    for failpoint in ["after_primary_commit", "between_secondary_commits"] {
        let (a, b, c) = support::three();
        let servers = [&a, &b, &c];
        let keys = spread_keys();
        let fast = recovery_toml(&servers, "300ms", "100ms");
        old_then_crashed_mset(&fast, failpoint, &servers, &keys);
        let proxy = Proxy::start_toml(&fast);
        assert!(
            wait_until(Duration::from_secs(5), || servers
                .iter()
                .all(|s| leftovers(s).is_empty())),
            "{failpoint}"
        );
        assert_everywhere(&servers, &proxy, &keys, "new");
        let committed = metric(
            &proxy.metrics(),
            "keyway_twophase_recoveries_total{decision=\"commit\"}",
        )
        .expect("series keyway_twophase_recoveries_total{decision=\"commit\"} exists");
        assert!(committed >= 1.0);
    }
}

#[test]
fn two_proxies_resolving_one_transaction_agree() {
    let (a, b, c) = support::three();
    let servers = [&a, &b, &c];
    let keys = spread_keys();
    let slow = recovery_toml(&servers, "100ms", "1h");
    old_then_crashed_mset(&slow, "after_prepare", &servers, &keys);
    let p1 = Proxy::start_toml(&slow);
    let p2 = Proxy::start_toml(&slow);
    std::thread::sleep(Duration::from_millis(200));
    // Find the stale transaction and its primary on each server, then resolve it from both
    // proxies at the same moment.
    let mut found = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let mut con = s.client();
        let ids: Vec<String> = con.smembers("__keyway:txs").unwrap();
        for id in ids {
            let primary: String = con.hget(format!("__keyway:tx:{id}"), "primary").unwrap();
            found.push((i as u16, id, primary));
        }
    }
    assert!(found.len() >= 2, "{found:?}");
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let pair = [&p1, &p2];
    let results: Vec<Vec<String>> = std::thread::scope(|scope| {
        pair.iter()
            .map(|p| {
                let (found, barrier) = (found.clone(), barrier.clone());
                scope.spawn(move || {
                    barrier.wait();
                    p.block_on(async {
                        let topo = p.shared.topology.load();
                        let mut out = Vec::new();
                        for (at, id, primary) in &found {
                            let d =
                                keyway::txn::resolve(&topo, 0, *at, id, primary, &p.shared.metrics)
                                    .await;
                            out.push(format!("{d:?}"));
                        }
                        out
                    })
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(
        results[0], results[1],
        "both resolvers saw the same decision"
    );
    assert!(results[0].iter().all(|d| d == "Ok(Abort)"), "{results:?}");
    assert_everywhere(&servers, &p1, &keys, "old");
}

/// A transaction whose commit point never answered (its primary participant was killed after
/// the prepares) leaves its prepared participants locked; its coordinator, still alive and
/// keeping its lease with other transactions, resolves it itself at its next sweep once that
/// server is back, instead of leaving the keys locked until `lock_timeout` (a minute here).
#[test]
fn an_unknown_commit_is_resolved_by_its_live_coordinator_not_after_lock_timeout() {
    let mut servers = [
        RedisServer::start_persistent(),
        RedisServer::start_persistent(),
        RedisServer::start_persistent(),
    ];
    let keys = spread_keys();
    let toml = {
        let refs: Vec<&RedisServer> = servers.iter().collect();
        config_toml(&refs, &two_phase("[pool.two_phase]\nlock_timeout = \"60s\"\nsweep_interval = \"100ms\"\n[pool.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 1"))
    };
    old_values(&toml, &keys);
    let other = Proxy::start_toml(&toml);
    let primary = replica_set(&other, &keys[0])[0];
    // A key away from the primary participant: the coordinator's other transactions.
    let filler = (0..100)
        .map(|i| format!("filler{i}"))
        .find(|k| !replica_set(&other, k).contains(&primary))
        .unwrap();
    let pausing = ProxyProcess::start_env(&toml, &[], &[("KW_FAILPOINT", "pause_after_prepare")]);
    let addr = pausing.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keeper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut con = redis::Client::open(format!("redis://{addr}/"))
                .unwrap()
                .get_connection()
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let _ = con.set::<_, _, ()>(&filler, "x");
            }
        })
    };
    let writer = std::thread::spawn(move || {
        let mut con = redis::Client::open(format!("redis://{addr}/"))
            .unwrap()
            .get_connection()
            .unwrap();
        let mut mset = redis::cmd("MSET");
        for k in spread_keys() {
            mset.arg(k).arg("new");
        }
        mset.query::<()>(&mut con).map_err(|e| e.to_string())
    });
    // During the pause after prepare, kill -9 the primary participant: the commit point fails.
    std::thread::sleep(Duration::from_millis(500));
    servers[primary].kill();
    let outcome = writer.join().unwrap();
    let err = outcome.expect_err("the commit point was down");
    assert!(err.contains("outcome unknown"), "{err}");
    servers[primary].restart();
    let (took, refused) = set_until_done(&other, &keys[0], "later", Duration::from_secs(20));
    eprintln!("writable again after {took:?}; last refusal: {refused:?}");
    stop.store(true, Ordering::Relaxed);
    keeper.join().unwrap();
    // Its commit point never ran: rolled back everywhere, nothing left locked.
    let refs: Vec<&RedisServer> = servers.iter().collect();
    assert!(wait_until(Duration::from_secs(10), || refs
        .iter()
        .all(|s| leftovers(s).is_empty())));
    assert_everywhere(&refs, &other, &keys[1..], "old");
}

/// A secondary participant that hangs after the commit point (marked down, so its commit is not
/// sent) misses its commit; the client still gets OK, and the coordinator, alive and busy (its
/// lease renewed there too), rolls that participant forward itself at its next sweep once it is
/// back, instead of leaving its keys locked until `lock_timeout`.
#[test]
fn a_missed_secondary_commit_is_finished_by_its_live_coordinator_not_after_lock_timeout() {
    let servers = [
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    ];
    let keys = spread_keys();
    let toml = {
        let refs: Vec<&RedisServer> = servers.iter().collect();
        config_toml(&refs, &two_phase("[pool.two_phase]\nlock_timeout = \"60s\"\nsweep_interval = \"100ms\"\n[pool.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 1"))
    };
    old_values(&toml, &keys);
    let other = Proxy::start_toml(&toml);
    let primary = replica_set(&other, &keys[0])[0];
    let victim = (0..3)
        .find(|&s| s != primary && keys.iter().any(|k| replica_set(&other, k).contains(&s)))
        .unwrap();
    let on_victim = keys
        .iter()
        .find(|k| replica_set(&other, k).contains(&victim))
        .unwrap()
        .clone();
    let filler = (0..100)
        .map(|i| format!("filler{i}"))
        .find(|k| !replica_set(&other, k).contains(&victim))
        .unwrap();
    let pausing = ProxyProcess::start_env(
        &toml,
        &[],
        &[("KW_FAILPOINT", "pause_after_primary_commit")],
    );
    let addr = pausing.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keeper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut con = redis::Client::open(format!("redis://{addr}/"))
                .unwrap()
                .get_connection()
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let _ = con.set::<_, _, ()>(&filler, "x");
            }
        })
    };
    let writer = std::thread::spawn(move || {
        let mut con = redis::Client::open(format!("redis://{addr}/"))
            .unwrap()
            .get_connection()
            .unwrap();
        let mut mset = redis::cmd("MSET");
        for k in spread_keys() {
            mset.arg(k).arg("new");
        }
        mset.query::<()>(&mut con).map_err(|e| e.to_string())
    });
    // During the pause after the commit point, stop a secondary participant: the health checks
    // mark it down before the pause ends, so its commit is not sent.
    std::thread::sleep(Duration::from_millis(500));
    servers[victim].signal("STOP");
    let outcome = writer.join().unwrap();
    assert_eq!(outcome, Ok(()), "committed at its commit point");
    servers[victim].signal("CONT");
    let (took, refused) = set_until_done(&other, &on_victim, "later", Duration::from_secs(20));
    eprintln!("writable again after {took:?}; last refusal: {refused:?}");
    stop.store(true, Ordering::Relaxed);
    keeper.join().unwrap();
    let refs: Vec<&RedisServer> = servers.iter().collect();
    assert!(wait_until(Duration::from_secs(10), || refs
        .iter()
        .all(|s| leftovers(s).is_empty())));
    let rest: Vec<String> = keys.iter().filter(|k| **k != on_victim).cloned().collect();
    assert_everywhere(&refs, &other, &rest, "new");
}

#[test]
fn a_participant_killed_between_prepare_and_commit_stays_all_or_nothing() {
    let mut servers = [
        RedisServer::start_persistent(),
        RedisServer::start_persistent(),
        RedisServer::start_persistent(),
    ];
    let keys = spread_keys();
    let toml = {
        let refs: Vec<&RedisServer> = servers.iter().collect();
        config_toml(&refs, &two_phase("[pool.two_phase]\nlock_timeout = \"300ms\"\nsweep_interval = \"100ms\"\n[pool.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 1"))
    };
    old_values(&toml, &keys);
    let pausing = ProxyProcess::start_env(&toml, &[], &[("KW_FAILPOINT", "pause_after_prepare")]);
    let addr = pausing.addr;
    let writer = std::thread::spawn(move || {
        let mut con = redis::Client::open(format!("redis://{addr}/"))
            .unwrap()
            .get_connection()
            .unwrap();
        let mut mset = redis::cmd("MSET");
        for k in spread_keys() {
            mset.arg(k).arg("new");
        }
        mset.query::<()>(&mut con).map_err(|e| e.to_string())
    });
    // During the pause after prepare, kill -9 one participant (it keeps its data: AOF).
    std::thread::sleep(Duration::from_millis(500));
    servers[1].kill();
    let outcome = writer.join().unwrap();
    eprintln!("client saw: {outcome:?}");
    // While it is down, writes to its slots fail fast with a retryable error (well inside the
    // 5 s request timeout: no waiting for it); reads go on.
    let proxy = Proxy::start_toml(&toml.replace("timeout = \"500ms\"", "timeout = \"5s\""));
    assert!(wait_until(Duration::from_secs(5), || metric(
        &proxy.metrics(),
        "keyway_server_up{server=\"s1\"}"
    )
    .expect("series keyway_server_up{server=\"s1\"} exists")
        == 0.0));
    let mut con = proxy.client();
    let on_s1 = keys
        .iter()
        .find(|k| replica_set(&proxy, k).contains(&1))
        .unwrap();
    let start = Instant::now();
    let err = con.set::<_, _, ()>(on_s1, "x").unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "fails fast: {:?}",
        start.elapsed()
    );
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
    // Keyway's own error, counted by its kind.
    let tryagain = metric(&proxy.metrics(), "keyway_errors_total{kind=\"tryagain\"}")
        .expect("series keyway_errors_total{kind=\"tryagain\"} exists");
    assert_eq!(tryagain, 1.0);
    let _read: String = con.get(on_s1).unwrap();
    // It returns: recovery finishes the transaction one way, on every replica.
    servers[1].restart();
    let refs: Vec<&RedisServer> = servers.iter().collect();
    assert!(wait_until(Duration::from_secs(10), || refs
        .iter()
        .all(|s| leftovers(s).is_empty())));
    let first = value(refs[replica_set(&proxy, &keys[0])[0]], &keys[0]).unwrap();
    assert!(first == "new" || first == "old");
    if outcome.is_ok() {
        assert_eq!(first, "new", "an acknowledged write is never lost");
    }
    assert_everywhere(&refs, &proxy, &keys, &first);
}

#[test]
fn concurrent_increments_and_msets_over_two_proxies_stay_exact() {
    let servers = support::servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let toml = config_toml(&refs, &two_phase("[pool.two_phase]\nretries = 30"));
    let proxies = [Proxy::start_toml(&toml), Proxy::start_toml(&toml)];
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..100).map(|_| AtomicU64::new(0)).collect());
    std::thread::scope(|scope| {
        for t in 0..50 {
            let acked = acked.clone();
            let mut con = proxies[t % 2].client();
            scope.spawn(move || {
                for i in 0..40 {
                    let k = (t * 7 + i * 13) % 100;
                    if con.incr::<_, _, i64>(format!("ctr:{k}"), 1).is_ok() {
                        acked[k].fetch_add(1, Ordering::Relaxed);
                    }
                    if i % 10 == 0 {
                        // A group of keys spread over servers, all with this writer's stamp.
                        let stamp = format!("{t}-{i}");
                        let mut mset = redis::cmd("MSET");
                        for g in 0..5 {
                            mset.arg(format!("grp:{g}")).arg(&stamp);
                        }
                        let _ = mset.query::<()>(&mut con);
                    }
                }
            });
        }
    });
    let total: u64 = acked.iter().map(|a| a.load(Ordering::Relaxed)).sum();
    assert!(total > 1000, "most increments are acknowledged: {total}");
    for k in 0..100 {
        let key = format!("ctr:{k}");
        let want = acked[k].load(Ordering::Relaxed);
        for &r in &replica_set(&proxies[0], &key) {
            let got: Option<u64> = servers[r].client().get(&key).unwrap();
            assert_eq!(got.unwrap_or(0), want, "{key} on s{r}");
        }
    }
    // The MSET groups are never torn: every key of the group holds the same stamp, everywhere.
    let mut stamps = HashMap::new();
    for g in 0..5 {
        let key = format!("grp:{g}");
        for &r in &replica_set(&proxies[0], &key) {
            stamps.insert((g, r), value(&servers[r], &key));
        }
    }
    let first = stamps.values().next().cloned().flatten();
    assert!(
        first.is_some() && stamps.values().all(|v| *v == first),
        "{stamps:?}"
    );
    for s in &servers {
        assert!(leftovers(s).is_empty());
    }
}

#[test]
fn crossing_multi_key_writes_do_not_deadlock() {
    let servers = support::servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start_toml(&config_toml(
        &refs,
        &two_phase("[pool.two_phase]\nretries = 50"),
    ));
    // Two keys on different servers, written in opposite orders by two clients.
    let (x, y) = ("cross:a", "cross:b");
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..2 {
            let mut con = proxy.client();
            scope.spawn(move || {
                for i in 0..100 {
                    let v = format!("{t}-{i}");
                    let (first, second) = if t == 0 { (x, y) } else { (y, x) };
                    let _ = redis::cmd("MSET")
                        .arg(first)
                        .arg(&v)
                        .arg(second)
                        .arg(&v)
                        .query::<()>(&mut con);
                }
            });
        }
    });
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    let mut con = proxy.client();
    let (a, b): (String, String) = (con.get(x).unwrap(), con.get(y).unwrap());
    assert_eq!(a, b, "the two keys always come from the same MSET");
}

#[test]
fn chaos_killing_a_server_and_a_proxy_loses_no_acknowledged_write() {
    let mut servers = [
        RedisServer::start_persistent(),
        RedisServer::start_persistent(),
        RedisServer::start_persistent(),
    ];
    let toml = {
        let refs: Vec<&RedisServer> = servers.iter().collect();
        config_toml(&refs, &two_phase("[pool.two_phase]\nlock_timeout = \"300ms\"\nsweep_interval = \"100ms\"\nretries = 30\n[pool.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 1"))
    };
    let a = ProxyProcess::start(&toml, &[]);
    let mut b = ProxyProcess::start(&toml, &[]);
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..50).map(|_| AtomicU64::new(0)).collect());
    let attempted: Arc<Vec<AtomicU64>> = Arc::new((0..50).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addrs = [a.addr, b.addr];
    let clients: Vec<_> = (0..20)
        .map(|t| {
            let (acked, attempted, stop) = (acked.clone(), attempted.clone(), stop.clone());
            let addr = addrs[t % 2];
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut con) = redis::Client::open(format!("redis://{addr}/"))
                        .and_then(|c| c.get_connection())
                    else {
                        // This client's proxy is dead: it stops.
                        return;
                    };
                    con.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let k = i % 50;
                        i += 7;
                        attempted[k].fetch_add(1, Ordering::Relaxed);
                        match con.incr::<_, _, i64>(format!("chaos:{k}"), 1) {
                            Ok(_) => {
                                acked[k].fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) if e.is_io_error() || e.is_connection_dropped() => break,
                            Err(_) => {}
                        }
                    }
                }
            })
        })
        .collect();
    // Scripted chaos: kill proxy B at 0.8 s, kill server s1 at 1.2 s, bring it back at 2.2 s.
    std::thread::sleep(Duration::from_millis(800));
    b.signal("KILL");
    b.wait_exit(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(400));
    servers[1].kill();
    std::thread::sleep(Duration::from_millis(1000));
    servers[1].restart();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let refs: Vec<&RedisServer> = servers.iter().collect();
    // Recovery (proxy A's sweep) leaves nothing locked.
    assert!(
        wait_until(Duration::from_secs(10), || refs
            .iter()
            .all(|s| leftovers(s).is_empty())),
        "{:?}",
        refs.iter().map(|s| leftovers(s)).collect::<Vec<_>>()
    );
    // Every replica agrees, key by key; no acknowledged increment is lost, none is invented.
    let topo_proxy = Proxy::start_toml(&toml);
    let total: u64 = acked.iter().map(|x| x.load(Ordering::Relaxed)).sum();
    assert!(total > 100, "the load ran: {total}");
    for k in 0..50 {
        let key = format!("chaos:{k}");
        let values: Vec<u64> = replica_set(&topo_proxy, &key)
            .iter()
            .map(|&r| {
                refs[r]
                    .client()
                    .get::<_, Option<u64>>(&key)
                    .unwrap()
                    .unwrap_or(0)
            })
            .collect();
        assert!(
            values.windows(2).all(|w| w[0] == w[1]),
            "{key}: replicas differ {values:?}"
        );
        let (got, ok, tried) = (
            values[0],
            acked[k].load(Ordering::Relaxed),
            attempted[k].load(Ordering::Relaxed),
        );
        assert!(
            got >= ok && got <= tried,
            "{key}: {got} not within acknowledged {ok} .. attempted {tried}"
        );
    }
    drop(a);
}

#[test]
fn scripts_flushed_on_the_servers_are_loaded_again() {
    let servers = support::servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start_toml(&config_toml(&refs, &two_phase("")));
    let mut con = proxy.client();
    let keys: Vec<String> = (0..12).map(|i| format!("f{i}")).collect();
    let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "1")).collect();
    let _: () = con.mset(&pairs).unwrap();
    // Keyway calls its scripts by SHA1: the servers have them now. Its bookkeeping keys go
    // once the transaction is over (the decision record's DEL is sent, not awaited, before
    // the reply; the lease goes at its next renewal).
    assert!(
        support::wait_until(Duration::from_secs(5), || servers[0]
            .client()
            .keys::<_, Vec<String>>("__keyway:*")
            .unwrap()
            .is_empty()),
        "bookkeeping keys left"
    );
    // Lost (as after a restart without persistence): the next calls load them again.
    for s in &servers {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut s.client())
            .unwrap();
    }
    let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "2")).collect();
    let _: () = con.mset(&pairs).unwrap();
    let _: i64 = con.incr("f0", 1).unwrap();
    for k in &keys[1..] {
        for &r in &replica_set(&proxy, k) {
            assert_eq!(value(&servers[r], k).as_deref(), Some("2"), "{k}");
        }
    }
    for &r in &replica_set(&proxy, "f0") {
        assert_eq!(value(&servers[r], "f0").as_deref(), Some("3"));
    }
    for s in &servers {
        assert!(leftovers(s).is_empty());
    }
}

/// A write through a fresh proxy, retried on `-TRYAGAIN` for up to `limit`: how long it took,
/// and the last refusal's text.
fn set_until_done(proxy: &Proxy, key: &str, value: &str, limit: Duration) -> (Duration, String) {
    let mut con = proxy.client();
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match con.set::<_, _, ()>(key, value) {
            Ok(()) => return (start.elapsed(), last),
            Err(e) => {
                assert_eq!(e.code(), Some("TRYAGAIN"), "{e}");
                last = e.to_string();
            }
        }
    }
    panic!("{key} still locked after {limit:?}: {last}");
}

#[test]
fn a_dead_coordinators_locks_are_resolved_within_its_lease_not_lock_timeout() {
    let (a, b, c) = support::three();
    let servers = [&a, &b, &c];
    let keys = spread_keys();
    // A lock timeout no test waits for, and no sweep: only the coordinator's lease can tell
    // that the crashed proxy is gone.
    let toml = recovery_toml(&servers, "60s", "1h");
    old_then_crashed_mset(&toml, "after_prepare", &servers, &keys);
    assert!(servers.iter().any(|s| !leftovers(s).is_empty()));
    let proxy = Proxy::start_toml(&toml);
    let (took, refused) = set_until_done(&proxy, &keys[0], "later", Duration::from_secs(10));
    eprintln!("resolved after {took:?}; last refusal: {refused:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    if !refused.is_empty() {
        assert!(
            refused.contains("locked by two-phase transaction")
                && refused.contains("on server 's")
                && refused.contains("its coordinator is"),
            "{refused}"
        );
    }
    // The crashed MSET never reached its commit point: it is rolled back, not half applied.
    let mut con = proxy.client();
    for k in &keys[1..] {
        let v: String = con.get(k).unwrap();
        assert_eq!(v, "old", "{k}");
    }
}

#[test]
fn the_sweep_resolves_a_dead_coordinators_intents_within_its_lease() {
    let (a, b, c) = support::three();
    let servers = [&a, &b, &c];
    let keys = spread_keys();
    let toml = recovery_toml(&servers, "60s", "100ms");
    old_then_crashed_mset(&toml, "after_prepare", &servers, &keys);
    assert!(servers.iter().any(|s| !leftovers(s).is_empty()));
    let proxy = Proxy::start_toml(&toml);
    let start = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || servers
            .iter()
            .all(|s| leftovers(s).is_empty())),
        "{:?}",
        servers.iter().map(|s| leftovers(s)).collect::<Vec<_>>()
    );
    eprintln!("swept after {:?}", start.elapsed());
    assert_everywhere(&servers, &proxy, &keys, "old");
}

#[test]
fn a_prepare_that_a_stalled_server_runs_after_its_deadline_takes_no_lock() {
    let (a, b, c) = support::three();
    let servers = [&a, &b, &c];
    let keys = spread_keys();
    // Health probes often (they measure each server's clock), but slow to mark a server down,
    // so that the write below reaches the stopped server; no recovery within the test.
    let toml = config_toml(
        &servers,
        "replicas = 2\nwrite = \"two_phase\"\ntimeout = \"300ms\"\n\
         [pool.two_phase]\nlock_timeout = \"60s\"\nsweep_interval = \"1h\"\n\
         [pool.health]\ninterval = \"50ms\"\nfall = 1000",
    );
    old_values(&toml, &keys);
    let proxy = Proxy::start_toml(&toml);
    std::thread::sleep(Duration::from_millis(300));
    b.signal("STOP");
    let mut con = proxy.client();
    let mut mset = redis::cmd("MSET");
    for k in &keys {
        mset.arg(k).arg("new");
    }
    let err = mset.query::<()>(&mut con).unwrap_err();
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
    // The server stays stopped well past the coordinator's deadline, then runs what it had
    // received: the prepare among it.
    std::thread::sleep(Duration::from_millis(700));
    b.signal("CONT");
    assert!(wait_until(Duration::from_secs(5), || b.dbsize() >= 0));
    std::thread::sleep(Duration::from_millis(200));
    for s in &servers {
        assert!(leftovers(s).is_empty(), "{:?}", leftovers(s));
    }
    // So the keys are free at once (the lock timeout is a minute).
    let start = Instant::now();
    let mut con = proxy.client();
    let _: () = con.set(&keys[0], "after").unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

/// A secondary participant whose intent is gone when its commit comes (removed by whoever
/// reached `__keyway:tx:*`, here straight on the servers while the coordinator pauses just after
/// the commit point) makes the write answer an error that says so, never `+OK`.
#[test]
fn a_secondary_commit_without_its_intent_is_an_error_not_ok() {
    let (a, b, c) = support::three();
    let servers = [&a, &b, &c];
    let toml = config_toml(&servers, &two_phase(""));
    let proxy = ProxyProcess::start_env(
        &toml,
        &[],
        &[("KW_FAILPOINT", "pause_after_primary_commit")],
    );
    let addr = proxy.addr;
    let keys = spread_keys();
    let writer = std::thread::spawn(move || {
        let mut con = redis::Client::open(format!("redis://{addr}/"))
            .unwrap()
            .get_connection()
            .unwrap();
        let mut mset = redis::cmd("MSET");
        for k in &keys {
            mset.arg(k).arg("new");
        }
        mset.query::<redis::Value>(&mut con)
    });
    // The commit point: the decision is recorded on the primary participant.
    let decided = |s: &RedisServer| {
        !s.client()
            .keys::<_, Vec<String>>("__keyway:decision:*")
            .unwrap()
            .is_empty()
    };
    assert!(
        wait_until(Duration::from_secs(5), || servers
            .iter()
            .any(|s| decided(s))),
        "{}",
        proxy.log()
    );
    // Only the secondaries still hold an intent: remove them.
    let mut removed = 0;
    for s in &servers {
        let mut con = s.client();
        let intents: Vec<String> = con.keys("__keyway:tx:*").unwrap();
        for k in intents {
            removed += con.del::<_, i64>(&k).unwrap();
        }
    }
    assert!(removed >= 1, "no secondary intent to remove");
    let answer = writer.join().unwrap();
    let err = answer.expect_err("a half-applied write must not answer OK");
    let text = err.to_string();
    assert!(text.contains("nothing staged left to apply"), "{text}");
    assert!(text.contains("outcome on that server is unknown"), "{text}");
    assert!(
        proxy
            .log()
            .contains("found no intent on a secondary participant"),
        "{}",
        proxy.log()
    );
}

/// A write past its commit point whose other participants have not committed yet (its
/// coordinator crashed there) is acknowledged as far as anyone may know: every read of its
/// keys, on every replica, returns the new value, not the one the uncommitted replicas still
/// hold. Nothing else resolves it here (a minute of lock timeout, no sweep).
#[test]
fn no_read_returns_a_value_older_than_a_committed_write() {
    let (a, b, c) = support::three();
    let servers = [&a, &b, &c];
    let keys = spread_keys();
    let toml = recovery_toml(&servers, "60s", "1h");
    old_values(&toml, &keys);
    crash_during_mset("after_primary_commit", &servers, &keys);
    // The commit point passed, and some replicas still hold the old value under a lock.
    let reader = Proxy::start_toml(&toml.replace(
        "write = \"two_phase\"",
        "write = \"two_phase\"\nread = \"round_robin\"",
    ));
    let stale: Vec<(String, usize)> = keys
        .iter()
        .flat_map(|k| {
            replica_set(&reader, k)
                .into_iter()
                .map(move |r| (k.clone(), r))
        })
        .filter(|(k, r)| value(servers[*r], k).as_deref() == Some("old"))
        .collect();
    assert!(!stale.is_empty(), "the crash left no replica behind");
    let mut con = reader.client();
    // MGET over the servers first: its parts check their keys' locks too.
    for _ in 0..2 {
        let many: Vec<String> = redis::cmd("MGET").arg(&keys[..]).query(&mut con).unwrap();
        assert!(many.iter().all(|v| v == "new"), "{many:?}");
    }
    for k in &keys {
        // Round robin over the two replicas: both are read.
        for _ in 0..4 {
            let v: String = con.get(k).unwrap();
            assert_eq!(v, "new", "{k}: a read went back in time");
        }
    }
    let many: Vec<String> = redis::cmd("MGET").arg(&keys[..]).query(&mut con).unwrap();
    assert!(many.iter().all(|v| v == "new"), "{many:?}");
    // The reads rolled the replicas they met forward.
    for (k, r) in &stale {
        assert_eq!(value(servers[*r], k).as_deref(), Some("new"), "{k} on s{r}");
    }
}

/// A lock whose intent is gone (deleted on the server, as a script could) would refuse every
/// write to its key forever: the next write that meets it deletes it and goes through.
#[test]
fn a_lock_without_its_intent_is_released_by_the_next_write() {
    let (a, b, c) = support::three();
    let servers = [&a, &b, &c];
    let toml = recovery_toml(&servers, "60s", "1h");
    let proxy = Proxy::start_toml(&toml);
    let key = "orphaned";
    for &r in &replica_set(&proxy, key) {
        let _: () = servers[r]
            .client()
            .set(
                format!("__keyway:lock:{key}"),
                "0123456789abcdef0123456789abcdef",
            )
            .unwrap();
    }
    let mut con = proxy.client();
    let start = Instant::now();
    let _: () = con.set(key, "v").unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    for &r in &replica_set(&proxy, key) {
        assert_eq!(value(servers[r], key).as_deref(), Some("v"), "s{r}");
    }
    for s in &servers {
        assert!(leftovers(s).is_empty(), "{:?}", leftovers(s));
    }
}

/// Reads that meet a transaction between its commit point and its other participants' commits
/// wait for its live coordinator instead of finishing it themselves, so a writer never finds its
/// own commit done by someone else (which it must report as an unknown outcome).
#[test]
fn reads_during_commits_never_fail_the_writers() {
    let (a, b, c) = support::three();
    let servers = [&a, &b, &c];
    let toml = config_toml(
        &servers,
        &two_phase("read = \"round_robin\"\n[pool.two_phase]\nretries = 30"),
    );
    let proxy = Proxy::start_toml(&toml);
    let keys: Vec<String> = (0..3).map(|i| format!("hot{i}")).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (url, keys, stop) = (proxy.url(), keys.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for k in &keys {
                        let _: Option<String> = con.get(k).unwrap();
                    }
                }
            })
        })
        .collect();
    let mut con = proxy.client();
    let mut failures = Vec::new();
    for i in 0..400 {
        let mut mset = redis::cmd("MSET");
        for k in &keys {
            mset.arg(k).arg(i);
        }
        if let Err(e) = mset.query::<()>(&mut con) {
            failures.push(e.to_string());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    for k in &keys {
        for &r in &replica_set(&proxy, k) {
            assert_eq!(value(servers[r], k).as_deref(), Some("399"), "{k} on s{r}");
        }
    }
}

/// An `MGET` over servers sees each cross-server `MSET` whole or not at all: its parts are read
/// at one instant (validated by a second round), never one part before a transaction's commit
/// point and another after it.
#[test]
fn a_read_over_several_servers_never_sees_half_a_transaction() {
    let (a, b, c) = support::three();
    let servers = [&a, &b, &c];
    let toml = config_toml(
        &servers,
        &two_phase("read = \"round_robin\"\n[pool.two_phase]\nretries = 30"),
    );
    let proxy = Proxy::start_toml(&toml);
    // Three keys whose primaries are three different servers.
    let mut keys: Vec<String> = Vec::new();
    for i in 0.. {
        let k = format!("snap{i}");
        let primary = replica_set(&proxy, &k)[0];
        if keys.iter().all(|o| replica_set(&proxy, o)[0] != primary) {
            keys.push(k);
        }
        if keys.len() == 3 {
            break;
        }
    }
    let mut con = proxy.client();
    let mut init = redis::cmd("MSET");
    for k in &keys {
        init.arg(k).arg("w-init");
    }
    let _: () = init.query(&mut con).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (url, keys, stop) = (proxy.url(), keys.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                let (mut reads, mut torn, mut errors) = (0u32, Vec::new(), Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match redis::cmd("MGET").arg(&keys).query::<Vec<String>>(&mut con) {
                        Ok(values) => {
                            reads += 1;
                            if values.iter().any(|v| *v != values[0]) {
                                torn.push(values);
                            }
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (reads, torn, errors)
            })
        })
        .collect();
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (url, keys) = (proxy.url(), keys.clone());
            std::thread::spawn(move || {
                let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                let mut failures = Vec::new();
                for i in 0..300 {
                    let mut mset = redis::cmd("MSET");
                    for k in &keys {
                        mset.arg(k).arg(format!("w{w}-{i}"));
                    }
                    if let Err(e) = mset.query::<()>(&mut con) {
                        failures.push(e.to_string());
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut reads, mut torn, mut errors) = (0, Vec::new(), Vec::new());
    for r in readers {
        let (n, t, e) = r.join().unwrap();
        reads += n;
        torn.extend(t);
        errors.extend(e);
    }
    // Writes that met each other's locks may be refused (-TRYAGAIN, nothing written); none
    // is torn.
    assert!(
        failures.iter().all(|e| e.contains("TRYAGAIN")),
        "{failures:?}"
    );
    assert!(
        errors.is_empty(),
        "{} reads failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    assert!(reads > 100, "only {reads} reads");
    assert!(
        torn.is_empty(),
        "{} of {reads} MGETs saw half a transaction: {:?}",
        torn.len(),
        &torn[..torn.len().min(3)]
    );
}
