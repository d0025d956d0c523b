//! Operating Keyway: admin endpoints, metrics, logs, graceful shutdown and client limits.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use redis::Commands;
use support::{
    config_toml, http_get, metric, wait_until, Proxy, ProxyProcess, RawClient, RedisServer,
};

#[test]
fn metrics_count_exactly_the_traffic_sent() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    let proxy = Proxy::start(&[&a, &b]);
    let mut con = proxy.client();
    for i in 0..10 {
        let _: () = con.set(format!("m{i}"), i).unwrap();
    }
    for i in 0..5 {
        let _: i64 = con.get(format!("m{i}")).unwrap();
    }
    for _ in 0..3 {
        let _ = redis::cmd("NOSUCHCOMMAND")
            .query::<redis::Value>(&mut con)
            .unwrap_err();
    }
    let _ = redis::cmd("MOVE")
        .arg("k")
        .arg("1")
        .query::<redis::Value>(&mut con)
        .unwrap_err();
    // An MGET over both servers: one client request, two server requests.
    let _: Vec<Option<i64>> = redis::cmd("MGET")
        .arg(&["m0", "m1", "m2", "m3", "m4", "m5"])
        .query(&mut con)
        .unwrap();
    drop(con);
    let text = proxy.metrics();
    assert_eq!(
        metric(
            &text,
            "keyway_requests_total{command=\"set\",outcome=\"ok\"}"
        ),
        Some(10.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "keyway_requests_total{command=\"get\",outcome=\"ok\"}"
        ),
        Some(5.0)
    );
    assert_eq!(
        metric(
            &text,
            "keyway_requests_total{command=\"other\",outcome=\"error\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &text,
            "keyway_requests_total{command=\"move\",outcome=\"error\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "keyway_requests_total{command=\"mget\",outcome=\"ok\"}"
        ),
        Some(1.0)
    );
    // Every answered request is timed once (redis-rs also sends CLIENT SETINFO on connect).
    let answered: f64 = text
        .lines()
        .filter(|l| l.starts_with("keyway_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(answered >= 20.0, "{text}");
    assert_eq!(
        metric(&text, "keyway_request_duration_seconds_count"),
        Some(answered)
    );
    let server_requests: f64 = ["s0", "s1"]
        .iter()
        .map(|s| {
            let series = format!("keyway_server_requests_total{{server=\"{s}\"}}");
            metric(&text, &series).unwrap_or_else(|| panic!("series {series} exists"))
        })
        .sum();
    assert_eq!(server_requests, 17.0, "10 SET + 5 GET + MGET split in two");
    assert_eq!(
        metric(&text, "keyway_client_connections_accepted_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "keyway_server_connections{server=\"s0\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric(&text, "keyway_topology_version"), Some(1.0));
    assert!(
        text.contains("keyway_process_resident_memory_bytes"),
        "process metrics"
    );
    assert!(text.contains("keyway_process_open_fds"), "process metrics");
    // The client left: the gauge goes back to zero.
    assert!(wait_until(Duration::from_secs(5), || metric(
        &proxy.metrics(),
        "keyway_client_connections"
    )
    .expect("series keyway_client_connections exists")
        == 0.0));
}

#[test]
fn promtool_accepts_the_metrics_output() {
    let a = RedisServer::start();
    let proxy = Proxy::start(&[&a]);
    let mut con = proxy.client();
    let _: () = con.set("k", 1).unwrap();
    let text = proxy.metrics();
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package prometheus; scripts/ensure-deps.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn health_readiness_topology_and_404() {
    let mut a = RedisServer::start();
    let proxy = Proxy::start_toml(&config_toml(&[&a], "timeout = \"200ms\""));
    assert_eq!(http_get(proxy.admin, "/healthz"), (200, "ok\n".into()));
    assert_eq!(http_get(proxy.admin, "/readyz").0, 200);
    let (status, body) = http_get(proxy.admin, "/topology");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["servers"][0]["name"], "s0");
    assert_eq!(json["servers"][0]["addr"], a.addr_string());
    assert_eq!(json["pool"]["replicas"], 1);
    assert_eq!(http_get(proxy.admin, "/nope").0, 404);
    assert_eq!(support::http(proxy.admin, "POST", "/metrics", "").0, 404);
    // The only server dies: not ready (with a reason), but still alive.
    a.kill();
    assert!(wait_until(Duration::from_secs(5), || http_get(
        proxy.admin,
        "/readyz"
    )
    .0 == 503));
    assert!(http_get(proxy.admin, "/readyz").1.contains("no server"));
    assert_eq!(http_get(proxy.admin, "/healthz").0, 200);
}

#[test]
fn admin_and_client_ports_do_not_answer_each_other() {
    let a = RedisServer::start();
    let proxy = Proxy::start(&[&a]);
    // HTTP on the client port gets no metrics: at its Host: header the connection is closed
    // without a reply, as redis-server does (tests/protocol.rs compares the bytes).
    let mut raw = RawClient::connect(proxy.addr);
    raw.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let reply = String::from_utf8_lossy(&raw.read_to_close()).to_string();
    assert_eq!(reply, "");
    // RESP on the admin port is an HTTP error, not a Redis reply.
    let mut s = TcpStream::connect(proxy.admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(!text.contains("PONG"), "{text}");
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
}

#[test]
fn sigterm_answers_the_pipeline_in_flight_then_exits_zero() {
    let a = RedisServer::start();
    let toml = config_toml(&[&a], "timeout = \"10s\"")
        .replace("[pool]", "drain_timeout = \"20s\"\n[pool]");
    let mut proxy = ProxyProcess::start(&toml, &[]);
    let mut raw = RawClient::connect(proxy.addr);
    // The server is stopped, so the whole pipeline is in flight inside Keyway.
    a.signal("STOP");
    let mut pipeline = Vec::new();
    let mut expected = Vec::new();
    for i in 0..1000 {
        let key = format!("drain{i}");
        pipeline.extend_from_slice(
            format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1\r\nv\r\n", key.len()).as_bytes(),
        );
        expected.extend_from_slice(b"+OK\r\n");
    }
    raw.send(&pipeline);
    // Wait until Keyway has read the whole pipeline (it sits in its server queue).
    assert!(wait_until(Duration::from_secs(5), || {
        metric(
            &http_get(proxy.admin, "/metrics").1,
            "keyway_server_in_flight_requests{server=\"s0\"}",
        )
        .expect("series keyway_server_in_flight_requests{server=\"s0\"} exists")
            == 1000.0
    }));
    proxy.signal("TERM");
    assert!(wait_until(Duration::from_secs(5), || http_get(
        proxy.admin,
        "/readyz"
    )
    .0 == 503));
    assert!(http_get(proxy.admin, "/readyz").1.contains("draining"));
    // New clients are no longer accepted.
    assert!(wait_until(Duration::from_secs(5), || {
        TcpStream::connect(proxy.addr).is_err()
    }));
    a.signal("CONT");
    let got = raw.read_exact_or_eof(expected.len());
    assert_eq!(got.len(), expected.len(), "every reply arrives");
    assert_eq!(got, expected);
    // The client is done; Keyway closes it and exits 0.
    assert_eq!(
        proxy.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        proxy.log()
    );
    assert!(proxy.log().contains("drained"), "{}", proxy.log());
}

#[test]
fn a_second_signal_exits_at_once_and_the_drain_deadline_is_kept() {
    let a = RedisServer::start();
    let toml = config_toml(&[&a], "timeout = \"30s\"")
        .replace("[pool]", "drain_timeout = \"60s\"\n[pool]");
    let mut proxy = ProxyProcess::start(&toml, &[]);
    let mut raw = RawClient::connect(proxy.addr);
    a.signal("STOP");
    raw.send(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    assert!(wait_until(Duration::from_secs(5), || metric(
        &http_get(proxy.admin, "/metrics").1,
        "keyway_server_in_flight_requests{server=\"s0\"}"
    )
    .expect(
        "series keyway_server_in_flight_requests{server=\"s0\"} exists"
    ) == 1.0));
    proxy.signal("TERM");
    assert!(wait_until(Duration::from_secs(5), || http_get(
        proxy.admin,
        "/readyz"
    )
    .0 == 503));
    let start = Instant::now();
    proxy.signal("INT");
    let code = proxy.wait_exit(Duration::from_secs(5));
    assert!(
        code.is_some() && start.elapsed() < Duration::from_secs(3),
        "{}",
        proxy.log()
    );
    a.signal("CONT");

    // With a short deadline, a stuck client does not keep Keyway alive.
    let b = RedisServer::start();
    let toml = config_toml(&[&b], "timeout = \"30s\"")
        .replace("[pool]", "drain_timeout = \"500ms\"\n[pool]");
    let mut proxy = ProxyProcess::start(&toml, &[]);
    let mut raw = RawClient::connect(proxy.addr);
    b.signal("STOP");
    raw.send(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    std::thread::sleep(Duration::from_millis(100));
    proxy.signal("TERM");
    assert_eq!(
        proxy.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        proxy.log()
    );
    assert!(
        proxy.log().contains("drain deadline passed"),
        "{}",
        proxy.log()
    );
    b.signal("CONT");
}

#[test]
fn json_logs_and_no_keys_at_info_level() {
    let a = RedisServer::start();
    let mut proxy = ProxyProcess::start(&config_toml(&[&a], ""), &["--log-format", "json"]);
    let mut con = redis::Client::open(format!("redis://{}/", proxy.addr))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = con.set("secret-key-name", "secret-value").unwrap();
    let mut raw = RawClient::connect(proxy.addr);
    raw.send(b"*1\r\n$x\r\n");
    let _ = raw.read_to_close();
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
    let log = proxy.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "keyway is serving"),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("protocol error"))),
        "{log}"
    );
    assert!(
        !log.contains("secret"),
        "keys or values leaked into logs: {log}"
    );
}

#[test]
fn max_clients_refuses_with_an_error() {
    let a = RedisServer::start();
    let proxy = Proxy::start_toml(
        &config_toml(&[&a], "").replace("[pool]", "[limits]\nmax_clients = 2\n[pool]"),
    );
    let mut c1 = proxy.client();
    let mut c2 = proxy.client();
    let _: () = c1.set("a", 1).unwrap();
    let _: () = c2.set("b", 1).unwrap();
    let mut third = RawClient::connect(proxy.addr);
    let reply = third.read_to_close();
    assert_eq!(reply, b"-ERR max number of clients reached\r\n");
    assert_eq!(
        metric(&proxy.metrics(), "keyway_client_connections_refused_total"),
        Some(1.0)
    );
    // Room again once a client leaves.
    drop(c1);
    assert!(wait_until(Duration::from_secs(5), || {
        redis::Client::open(proxy.url())
            .unwrap()
            .get_connection()
            .and_then(|mut c| c.set::<_, _, ()>("c", 1))
            .is_ok()
    }));
}

#[test]
fn a_client_that_never_reads_is_cut_off_at_the_output_limit() {
    let a = RedisServer::start();
    let toml = config_toml(&[&a], "").replace(
        "[pool]",
        "[limits]\nmax_client_output = 4194304\nmax_pipeline = 64\n[pool]",
    );
    let proxy = Proxy::start_toml(&toml);
    let mut con = proxy.client();
    let big = "x".repeat(1024 * 1024);
    let _: () = con.set("big", &big).unwrap();
    let mut raw = RawClient::connect(proxy.addr);
    raw.stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // 1,000 GETs of a 1 MiB value, never reading a byte of the replies.
    let get = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(1000);
    let _ = raw.stream.write_all(&get);
    assert!(
        wait_until(Duration::from_secs(10), || metric(
            &proxy.metrics(),
            "keyway_client_disconnects_total{reason=\"output_limit\"}"
        )
        .expect(
            "series keyway_client_disconnects_total{reason=\"output_limit\"} exists"
        ) == 1.0),
        "{}",
        proxy.metrics()
    );
    // Other clients never noticed.
    let v: String = con.get("big").unwrap();
    assert_eq!(v.len(), big.len());
}

#[test]
fn clients_that_read_get_replies_bigger_than_the_output_limit() {
    let a = RedisServer::start();
    let toml =
        config_toml(&[&a], "").replace("[pool]", "[limits]\nmax_client_output = 4194304\n[pool]");
    let proxy = Proxy::start_toml(&toml);
    let mut con = proxy.client();
    // One reply larger than the limit goes out when nothing else waits.
    let big = "y".repeat(6 * 1024 * 1024);
    let _: () = con.set("huge", &big).unwrap();
    let v: String = con.get("huge").unwrap();
    assert_eq!(v.len(), big.len());
    assert_eq!(
        metric(
            &proxy.metrics(),
            "keyway_client_disconnects_total{reason=\"output_limit\"}"
        ),
        Some(0.0)
    );
    // With the default limit (64 MiB), a client that reads its replies gets a 40 MiB pipeline
    // whole, however fast the replies come: the limit bounds what waits for the client (as
    // redis-server's client-output-buffer-limit does), never a reader below it.
    let proxy = Proxy::start(&[&a]);
    let mut con = proxy.client();
    let _: () = con.set("m", "z".repeat(1024 * 1024)).unwrap();
    let mut pipe = redis::pipe();
    for _ in 0..40 {
        pipe.cmd("GET").arg("m");
    }
    let got: Vec<String> = pipe.query(&mut con).unwrap();
    assert_eq!(got.len(), 40);
    assert_eq!(
        metric(
            &proxy.metrics(),
            "keyway_client_disconnects_total{reason=\"output_limit\"}"
        ),
        Some(0.0)
    );
}

#[test]
fn idle_clients_are_closed_after_the_idle_timeout() {
    let a = RedisServer::start();
    let toml =
        config_toml(&[&a], "").replace("[pool]", "[limits]\nidle_timeout = \"300ms\"\n[pool]");
    let proxy = Proxy::start_toml(&toml);
    let mut raw = RawClient::connect(proxy.addr);
    raw.send(b"PING\r\n");
    let start = Instant::now();
    let got = raw.read_to_close();
    assert_eq!(got, b"+PONG\r\n");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        metric(
            &proxy.metrics(),
            "keyway_client_disconnects_total{reason=\"idle_timeout\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn a_drain_closes_idle_clients_and_clients_holding_half_a_command() {
    // Neither a parked client nor one that sent part of a frame and went quiet may hold a drain
    // up to its deadline: both are closed as soon as Keyway drains, and it exits 0.
    let a = RedisServer::start();
    let toml = config_toml(&[&a], "").replace("[pool]", "drain_timeout = \"60s\"\n[pool]");
    let mut proxy = ProxyProcess::start(&toml, &[]);
    let mut idle = RawClient::connect(proxy.addr);
    // Several round trips: the session parks between them, with its drain waiter registered
    // once, at the first park.
    for _ in 0..3 {
        idle.send(b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(idle.read_exact_or_eof(7), b"+PONG\r\n");
    }
    let mut half = RawClient::connect(proxy.addr);
    half.send(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n");
    assert_eq!(half.read_exact_or_eof(7), b"+PONG\r\n");
    proxy.signal("TERM");
    assert_eq!(
        half.read_to_close(),
        b"",
        "the half-sent command gets no reply"
    );
    assert_eq!(idle.read_to_close(), b"");
    assert_eq!(
        proxy.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        proxy.log()
    );
    // Exiting well inside the 60 s deadline shows neither client held the drain up.
    assert!(proxy.log().contains("drained;"), "{}", proxy.log());
}
