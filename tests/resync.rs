//! Restarted replicas are resynced before they serve reads: a server killed and started again
//! empty (or from its AOF, behind its peers) is marked recovering, copied its slots from a
//! healthy replica while writes go on, and only then read from again.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{config_toml, http_get, metric, replica_set, wait_until, Proxy, RedisServer};

/// Fast health checks, so that the kill and the restart are seen quickly.
const FAST_HEALTH: &str =
    "[pool.health]\ninterval = \"100ms\"\ntimeout = \"200ms\"\nfall = 2\nrise = 2";

fn series(proxy: &Proxy, series: &str) -> f64 {
    metric(&proxy.metrics(), series).unwrap_or_else(|| panic!("series {series} exists"))
}

fn completed(proxy: &Proxy, server: &str) -> f64 {
    series(
        proxy,
        &format!("keyway_resyncs_total{{outcome=\"completed\",server=\"{server}\"}}"),
    )
}

/// DUMP of `key` on `server` (nil: `None`).
fn dump(server: &RedisServer, key: &str) -> Option<Vec<u8>> {
    redis::cmd("DUMP")
        .arg(key)
        .query(&mut server.client())
        .expect("DUMP")
}

/// Every key of `keys` is the same (DUMP) on every server of its replica set.
fn assert_replicas_equal(proxy: &Proxy, servers: &[&RedisServer], keys: &[String]) {
    let mut cons: Vec<redis::Connection> = servers.iter().map(|s| s.client()).collect();
    let mut differ = Vec::new();
    for key in keys {
        let set = replica_set(proxy, key);
        let dumps: Vec<Option<Vec<u8>>> = set
            .iter()
            .map(|&i| {
                redis::cmd("DUMP")
                    .arg(key)
                    .query(&mut cons[i])
                    .expect("DUMP")
            })
            .collect();
        if dumps.windows(2).any(|w| w[0] != w[1]) {
            differ.push(key.clone());
        }
    }
    assert!(
        differ.is_empty(),
        "{} keys differ between replicas, e.g. {:?}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );
}

#[test]
fn a_replica_restarted_empty_serves_no_reads_until_resynced() {
    let (mut a, b, c) = (
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    );
    let toml = config_toml(
        &[&a, &b, &c],
        &format!(
            "replicas = 2\nwrite = \"all\"\nread = \"primary\"\ntimeout = \"500ms\"\nresync_keys_per_second = 1000\n{FAST_HEALTH}"
        ),
    );
    let proxy = Proxy::start_toml(&toml);
    let mut con = proxy.client();
    let keys: Vec<String> = (0..2_000).map(|i| format!("key:{i}")).collect();
    let mut pipe = redis::pipe();
    for (i, k) in keys.iter().enumerate() {
        pipe.cmd("SET").arg(k).arg(format!("value-{i}")).ignore();
    }
    let () = pipe.query(&mut con).expect("2,000 SETs through keyway");
    let on_a = keys
        .iter()
        .filter(|k| replica_set(&proxy, k).contains(&0))
        .count();
    assert!(on_a > 500, "s0 replicates {on_a} of the keys");
    let counters: Vec<String> = (0..20).map(|i| format!("counter:{i}")).collect();

    // s0 dies, is seen down, and comes back empty on its port.
    a.kill();
    let s0_up = "keyway_server_up{server=\"s0\"}";
    assert!(wait_until(Duration::from_secs(10), || series(
        &proxy, s0_up
    ) == 0.0));
    assert_eq!(completed(&proxy, "s0"), 0.0);
    let stop = Arc::new(AtomicBool::new(false));

    // Readers: every key, again and again; none may read nil (every write was acknowledged).
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (stop, keys, url) = (stop.clone(), keys.clone(), proxy.url());
            std::thread::spawn(move || {
                let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                let (mut reads, mut nils) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    for chunk in keys.chunks(100).skip(r) {
                        let mut pipe = redis::pipe();
                        for k in chunk {
                            pipe.cmd("GET").arg(k);
                        }
                        let got: Vec<Option<String>> = pipe.query(&mut con).expect("GETs");
                        reads += got.len() as u64;
                        nils.extend(
                            chunk
                                .iter()
                                .zip(&got)
                                .filter(|(_, v)| v.is_none())
                                .map(|(k, _)| k.clone()),
                        );
                    }
                }
                (reads, nils)
            })
        })
        .collect();
    a.restart();
    // Back up means recovering: the new run_id was read before the probes brought it up.
    assert!(wait_until(Duration::from_secs(10), || series(
        &proxy, s0_up
    ) == 1.0));
    assert_eq!(completed(&proxy, "s0"), 0.0);
    // A writer: INCR on the counters, counting those acknowledged.
    let incrs = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (stop, counters, url) = (stop.clone(), counters.clone(), proxy.url());
        let incrs = incrs.clone();
        std::thread::spawn(move || {
            let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
            let mut acked: HashMap<String, i64> = HashMap::new();
            let mut failed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for k in &counters {
                    match redis::cmd("INCR").arg(k).query::<i64>(&mut con) {
                        Ok(_) => {
                            *acked.entry(k.clone()).or_default() += 1;
                            incrs.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => failed += 1,
                    }
                }
            }
            (acked, failed)
        })
    };

    assert!(
        wait_until(Duration::from_secs(60), || completed(&proxy, "s0") >= 1.0),
        "no resync completed: {}",
        proxy.metrics()
    );
    assert!(
        incrs.load(Ordering::Relaxed) > 0,
        "no INCR acknowledged while s0 recovered"
    );
    assert_eq!(
        series(&proxy, "keyway_server_recovering{server=\"s0\"}"),
        0.0
    );
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = writer.join().unwrap();
    let mut reads = 0;
    for r in readers {
        let (n, nils) = r.join().unwrap();
        reads += n;
        assert!(
            nils.is_empty(),
            "{} reads returned nil for acknowledged keys, e.g. {:?}",
            nils.len(),
            &nils[..nils.len().min(5)]
        );
    }
    assert!(reads >= 2_000, "{reads} reads during the resync");
    assert!(!acked.is_empty(), "no INCR acknowledged during the resync");
    // The copy brought every key of s0's slots.
    let copied = series(&proxy, "keyway_resync_keys_total{server=\"s0\"}");
    assert!(
        copied >= on_a as f64,
        "{copied} keys copied, s0 holds {on_a}"
    );
    let (_, topology) = http_get(proxy.admin, "/topology");
    assert!(topology.contains("\"recovering\":false"), "{topology}");

    // Replicas equal, key by key; counters equal to what was acknowledged (none failed: no
    // fault happened while they were written, so each one's outcome is known).
    let all: Vec<String> = keys.iter().chain(&counters).cloned().collect();
    assert_replicas_equal(&proxy, &[&a, &b, &c], &all);
    assert_eq!(failed, 0, "INCRs failed while s0 recovered");
    for (k, n) in &acked {
        for &i in &replica_set(&proxy, k) {
            let server = [&a, &b, &c][i];
            let v: i64 = redis::cmd("GET")
                .arg(k)
                .query(&mut server.client())
                .unwrap();
            assert_eq!(v, *n, "{k} on s{i}");
        }
    }
    assert_eq!(
        dump(&a, "key:0").is_some(),
        replica_set(&proxy, "key:0").contains(&0)
    );
}

#[test]
fn a_replica_restarted_from_its_aof_behind_its_peers_is_resynced() {
    let (mut a, b, c) = (
        RedisServer::start_persistent(),
        RedisServer::start_persistent(),
        RedisServer::start_persistent(),
    );
    // replicas = 3 under quorum: writes go on while s0 is away, so that its AOF falls behind.
    let toml = config_toml(
        &[&a, &b, &c],
        &format!("replicas = 3\nwrite = \"quorum\"\ntimeout = \"500ms\"\n{FAST_HEALTH}"),
    );
    let proxy = Proxy::start_toml(&toml);
    let mut con = proxy.client();
    let keys: Vec<String> = (0..300).map(|i| format!("aof:{i}")).collect();
    for k in &keys {
        let () = redis::cmd("SET")
            .arg(k)
            .arg("before")
            .query(&mut con)
            .unwrap();
    }
    a.kill();
    assert!(wait_until(Duration::from_secs(10), || series(
        &proxy,
        "keyway_server_up{server=\"s0\"}"
    ) == 0.0));
    // While s0 is away: 100 keys overwritten, 50 deleted, 50 new ones.
    for k in &keys[..100] {
        let () = redis::cmd("SET")
            .arg(k)
            .arg("after")
            .query(&mut con)
            .unwrap();
    }
    for k in &keys[100..150] {
        let _: i64 = redis::cmd("DEL").arg(k).query(&mut con).unwrap();
    }
    let fresh: Vec<String> = (0..50).map(|i| format!("aof:new:{i}")).collect();
    for k in &fresh {
        let () = redis::cmd("SET").arg(k).arg("new").query(&mut con).unwrap();
    }
    a.restart();
    assert!(
        dump(&a, &keys[120]).is_some(),
        "s0 came back with its old data (a key deleted while it was away)"
    );
    assert!(
        wait_until(Duration::from_secs(60), || completed(&proxy, "s0") >= 1.0),
        "no resync completed: {}",
        proxy.metrics()
    );
    let all: Vec<String> = keys.iter().chain(&fresh).cloned().collect();
    assert_replicas_equal(&proxy, &[&a, &b, &c], &all);
    let mut s0 = a.client();
    for k in &keys[100..150] {
        let n: i64 = redis::cmd("EXISTS").arg(k).query(&mut s0).unwrap();
        assert_eq!(n, 0, "{k}, deleted while s0 was away, is gone from s0 too");
    }
    let v: String = redis::cmd("GET").arg(&keys[0]).query(&mut s0).unwrap();
    assert_eq!(v, "after");
}

#[test]
fn with_one_replica_a_restart_is_served_as_it_is() {
    let (mut a, b) = (RedisServer::start(), RedisServer::start());
    let toml = config_toml(&[&a, &b], &format!("replicas = 1\n{FAST_HEALTH}"));
    let proxy = Proxy::start_toml(&toml);
    a.kill();
    assert!(wait_until(Duration::from_secs(10), || series(
        &proxy,
        "keyway_server_up{server=\"s0\"}"
    ) == 0.0));
    a.restart();
    assert!(wait_until(Duration::from_secs(10), || series(
        &proxy,
        "keyway_server_up{server=\"s0\"}"
    ) == 1.0));
    // Nothing to copy from: no resync, and the server is not left recovering.
    assert!(wait_until(Duration::from_secs(10), || series(
        &proxy,
        "keyway_server_recovering{server=\"s0\"}"
    ) == 0.0));
    assert_eq!(completed(&proxy, "s0"), 0.0);
}

#[test]
fn a_keyway_that_starts_while_a_replica_is_empty_resyncs_it() {
    let (mut a, b) = (RedisServer::start(), RedisServer::start());
    let toml = config_toml(
        &[&a, &b],
        &format!("replicas = 2\nwrite = \"all\"\ntimeout = \"500ms\"\n{FAST_HEALTH}"),
    );
    let keys: Vec<String> = (0..200).map(|i| format!("first:{i}")).collect();
    {
        let proxy = Proxy::start_toml(&toml);
        let mut con = proxy.client();
        for k in &keys {
            let () = redis::cmd("SET").arg(k).arg("v").query(&mut con).unwrap();
        }
    }
    // s0 restarts empty while no Keyway runs: no run_id to compare with, only its emptiness.
    a.restart();
    assert_eq!(a.dbsize(), 0);
    let proxy = Proxy::start_toml(&toml);
    assert!(
        wait_until(Duration::from_secs(60), || completed(&proxy, "s0") >= 1.0),
        "no resync completed: {}",
        proxy.metrics()
    );
    assert_eq!(a.dbsize(), 200);
    assert_replicas_equal(&proxy, &[&a, &b], &keys);
    // s1 was never empty: it was not resynced.
    assert_eq!(completed(&proxy, "s1"), 0.0);
}

/// Every server of the pool restarts at once (a node reboot) and comes back with its data from
/// its AOF: none is a healthy copy of another, so none waits for one. Each keeps its data and
/// serves reads again once its resync found no source, instead of serving none forever.
#[test]
fn a_pool_restarted_whole_serves_again_from_its_own_data() {
    let mut servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_persistent()).collect();
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let toml = config_toml(
        &refs,
        &format!(
            "replicas = 2\nwrite = \"all\"\nread = \"primary\"\ntimeout = \"500ms\"\n{FAST_HEALTH}"
        ),
    );
    let proxy = Proxy::start_toml(&toml);
    let mut con = proxy.client();
    let keys: Vec<String> = (0..300).map(|i| format!("key:{i}")).collect();
    let mut pipe = redis::pipe();
    for (i, k) in keys.iter().enumerate() {
        pipe.cmd("SET").arg(k).arg(format!("value-{i}")).ignore();
    }
    let () = pipe.query(&mut con).expect("300 SETs through keyway");
    for s in &mut servers {
        s.kill();
    }
    for name in ["s0", "s1", "s2"] {
        let up = format!("keyway_server_up{{server=\"{name}\"}}");
        assert!(wait_until(Duration::from_secs(10), || series(&proxy, &up) == 0.0));
    }
    for s in &mut servers {
        s.restart();
    }
    for name in ["s0", "s1", "s2"] {
        let up = format!("keyway_server_up{{server=\"{name}\"}}");
        assert!(wait_until(Duration::from_secs(10), || series(&proxy, &up) == 1.0));
    }
    let read_all = || -> Result<Vec<Option<String>>, String> {
        let mut con = redis::Client::open(proxy.url())
            .map_err(|e| e.to_string())?
            .get_connection()
            .map_err(|e| e.to_string())?;
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("GET").arg(k);
        }
        pipe.query(&mut con).map_err(|e| e.to_string())
    };
    let mut last = Err(String::new());
    let served = wait_until(Duration::from_secs(30), || {
        last = read_all();
        last.is_ok()
    });
    assert!(
        served,
        "reads still refused 30 s after the restart: {last:?}\n{}",
        proxy.metrics()
    );
    let values = last.unwrap_or_default();
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v.as_deref(), Some(format!("value-{i}").as_str()), "key:{i}");
    }
    for name in ["s0", "s1", "s2"] {
        let recovering = format!("keyway_server_recovering{{server=\"{name}\"}}");
        assert!(
            wait_until(Duration::from_secs(10), || series(&proxy, &recovering)
                == 0.0),
            "{name} still recovering"
        );
    }
}
