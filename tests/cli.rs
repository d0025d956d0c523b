//! The command line: `keyway check`, `keyway route`, and configuration layering through
//! `KEYWAY_*` environment variables.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

use std::process::{Command, Output};

fn keyway(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyway"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run keyway")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const GOOD: &str = "listen = \"127.0.0.1:6380\"\n[pool]\nreplicas = 1\n\
[[pool.servers]]\nname = \"a\"\naddr = \"127.0.0.1:7001\"\n\
[[pool.servers]]\nname = \"b\"\naddr = \"127.0.0.1:7002\"\n\
[[pool.servers]]\nname = \"c\"\naddr = \"127.0.0.1:7003\"\n";

fn write(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn check_accepts_the_shipped_example_and_names_bad_keys_with_their_line() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/keyway.toml");
    let o = keyway(&["check", "--config", example], &[]);
    assert!(o.status.success(), "{}", text(&o));

    let dir = tempfile::tempdir().unwrap();
    let typo = write(
        &dir,
        "typo.toml",
        &GOOD.replace("replicas = 1", "replicas = 1\nconections = 2"),
    );
    let o = keyway(&["check", "--config", &typo], &[]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(t.contains("conections") && t.contains("line 4"), "{t}");

    let dup = write(
        &dir,
        "dup.toml",
        &GOOD.replace("name = \"c\"", "name = \"a\""),
    );
    let o = keyway(&["check", "--config", &dup], &[]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(
        t.contains("pool.servers[2].name") && t.contains("line 11"),
        "{t}"
    );

    let o = keyway(&["check", "--config", "/nonexistent/keyway.toml"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("cannot read"), "{}", text(&o));
}

#[test]
fn environment_variables_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good.toml", GOOD);
    // A valid override applies...
    let o = keyway(
        &["check", "--config", &good],
        &[("KEYWAY_POOL__REPLICAS", "2")],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("replicas 2"), "{}", text(&o));
    // ...an invalid one is refused by name...
    let o = keyway(
        &["check", "--config", &good],
        &[("KEYWAY_POOL__REPLICAS", "5")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("pool.replicas"), "{}", text(&o));
    // ...and an unknown one too.
    let o = keyway(
        &["check", "--config", &good],
        &[("KEYWAY_LISTNE", "127.0.0.1:1")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("listne"), "{}", text(&o));
    // Kubernetes' links for a Service named keyway (or keyway-redis) are not settings: ignored,
    // with a warning naming them.
    let o = keyway(
        &["check", "--config", &good],
        &[
            ("KEYWAY_PORT", "tcp://10.0.0.1:6380"),
            ("KEYWAY_PORT_6380_TCP_ADDR", "10.0.0.1"),
            ("KEYWAY_SERVICE_HOST", "10.0.0.1"),
            ("KEYWAY_REDIS_SERVICE_PORT_HTTP", "80"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("KEYWAY_PORT") && text(&o).contains("service link"),
        "{}",
        text(&o)
    ); // Valid but probably not meant: said, and still ok.
    let o = keyway(
        &["check", "--config", &good],
        &[
            ("KEYWAY_POOL__REPLICAS", "2"),
            ("KEYWAY_POOL__WRITE", "quorum"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("warning: pool.write = \"quorum\" with replicas = 2 needs both replicas"),
        "{}",
        text(&o)
    );
}

#[test]
fn route_prints_each_keys_slot_and_ranked_servers() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good.toml", GOOD);
    let o = keyway(
        &["route", "--config", &good, "foo", "{user1}.a", "{user1}.b"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    // CRC16 slot of "foo" as Redis Cluster computes it.
    assert!(lines[0].starts_with("foo\tslot 12182\treplicas "), "{out}");
    // Keys with one hash tag share slot and servers.
    let rest = |l: &str| l.split_once('\t').map(|(_, r)| r.to_string()).unwrap();
    assert_eq!(rest(lines[1]), rest(lines[2]));
    // Each ranking lists every server once: the replica first, then the others.
    for l in &lines {
        let fields: Vec<&str> = l.split('\t').collect();
        let replicas = fields[2].strip_prefix("replicas ").unwrap();
        let then = fields[3].strip_prefix("then ").unwrap();
        let mut all: Vec<&str> = replicas.split(',').chain(then.split(',')).collect();
        assert_eq!(all.len(), 3, "{l}");
        all.sort();
        assert_eq!(all, ["a", "b", "c"], "{l}");
    }
}

/// A secret file that is a device (`/dev/zero` reads forever) or larger than 64 KiB is refused
/// at once by `keyway check`, for the admin token and for the servers' password.
#[test]
fn check_refuses_secret_files_that_are_devices_or_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, "x".repeat(70 * 1024)).unwrap();
    for path in ["/dev/zero", big.to_str().unwrap()] {
        for (key, at_top) in [("admin_token_file", true), ("password_file", false)] {
            let body = if at_top {
                format!("{key} = \"{path}\"\n{GOOD}")
            } else {
                GOOD.replace(
                    "replicas = 1\n",
                    &format!("replicas = 1\n{key} = \"{path}\"\n"),
                )
            };
            let config = write(&dir, "secret.toml", &body);
            let started = std::time::Instant::now();
            let out = keyway(&["check", "--config", &config], &[]);
            assert!(!out.status.success(), "{key} = {path}: {}", text(&out));
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
        }
    }
}

/// `keyway check` refuses what would make an unsafe or broken proxy, naming the key: two servers
/// on one address, a zero limit, `admin` equal to `listen`, a probe interval under 10 ms, and a
/// URL with a password as an address (whose password it never prints).
#[test]
fn check_refuses_duplicate_addresses_zero_limits_shared_ports_tiny_intervals_and_urls() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            GOOD.replace("127.0.0.1:7003", "127.0.0.1:7001"),
            "pool.servers[2].addr",
            "same address",
        ),
        (
            format!("{GOOD}[limits]\nmax_pipeline = 0\n"),
            "limits.max_pipeline",
            "at least 1",
        ),
        (
            format!("{GOOD}[limits]\nmax_client_output = 0\n"),
            "limits.max_client_output",
            "at least 1",
        ),
        (
            GOOD.replace(
                "listen = \"127.0.0.1:6380\"",
                "listen = \"127.0.0.1:6380\"\nadmin = \"127.0.0.1:6380\"",
            ),
            "`admin`",
            "must differ from listen",
        ),
        (
            GOOD.replace(
                "replicas = 1",
                "replicas = 1\n[pool.health]\ninterval = \"1ns\"",
            ),
            "pool.health.interval",
            "at least 10ms",
        ),
        (
            GOOD.replace("127.0.0.1:7002", "redis://:hunter2-secret@127.0.0.1:7002"),
            "pool.servers[1].addr",
            "looks like a URL",
        ),
    ];
    for (i, (toml, key, why)) in cases.iter().enumerate() {
        let path = write(&dir, &format!("bad{i}.toml"), toml);
        let o = keyway(&["check", "--config", &path], &[]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{toml}\n{t}");
        assert!(
            t.contains(key) && t.contains(why),
            "want {key}: {why}, got {t}"
        );
        assert!(!t.contains("hunter2"), "the password is printed: {t}");
    }
}
