//! Keyway against a backend that breaks the protocol in the ways a real redis-server cannot: an
//! unsolicited reply, a malformed reply, a reply cut by a close, a stall mid-reply, a close
//! mid-pipeline (see `support::fake`). Each test checks what a client sees (an error naming the
//! server, in the place of the replies that were lost), that the broken connection is dropped,
//! and that Keyway is healthy afterwards: a fresh client is served over a new connection, the
//! clients that were connected through the fault are still served, and the server is up.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::time::{Duration, Instant};

use support::fake::{After, FakeServer, Fault};
use support::{metric, wait_until, Proxy, RawClient};

/// Keyway over the fake server alone, named `s0`: one data connection (so the fault hits the
/// connection every client shares), a short request timeout, and health probes fast enough
/// that the fake's PONGs are seen to keep it up.
fn start(fault: Fault, after: After) -> (FakeServer, Proxy) {
    let fake = FakeServer::start_with(fault, after);
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         [pool]\nconnections = 1\ntimeout = \"300ms\"\n\
         [pool.health]\ninterval = \"100ms\"\ntimeout = \"250ms\"\nfall = 3\nrise = 2\n\
         [[pool.servers]]\nname = \"s0\"\naddr = \"{}\"\n",
        fake.addr_string()
    );
    let proxy = Proxy::start_toml(&toml);
    assert!(
        wait_until(Duration::from_secs(5), || fake.accepted() >= 1),
        "keyway connected to the fake server"
    );
    (fake, proxy)
}

/// A raw client of Keyway that gives up on a reply after 5 s (so that a hang fails the test).
fn client(proxy: &Proxy) -> RawClient {
    let c = RawClient::connect(proxy.addr);
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    c
}

/// A client served before the fault, which must still be served after it.
fn bystander(proxy: &Proxy) -> RawClient {
    let mut c = client(proxy);
    c.send(&command(&["PING"]));
    assert_eq!(reply(&mut c), "+PONG\r\n");
    c
}

/// A command as a RESP array.
fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    out.into_bytes()
}

/// The next reply, as text.
fn reply(c: &mut RawClient) -> String {
    let raw = c.read_reply().expect("a reply within the read timeout");
    String::from_utf8_lossy(&raw).into_owned()
}

/// `GET key` and its reply.
fn get(c: &mut RawClient, key: &str) -> String {
    c.send(&command(&["GET", key]));
    reply(c)
}

/// What the fake answers `GET key` with, when it behaves.
fn bulk(key: &str) -> String {
    format!("${}\r\n{key}\r\n", key.len())
}

/// The start of every error a client gets for the fake server.
fn error_prefix(fake: &FakeServer) -> String {
    format!("-ERR server 's0' ({}) ", fake.addr_string())
}

/// One series of Keyway's metrics, which must be exported.
fn series(proxy: &Proxy, name: &str) -> f64 {
    metric(&proxy.metrics(), name).unwrap_or_else(|| panic!("series {name} exists"))
}

fn errors(proxy: &Proxy, kind: &str) -> f64 {
    series(
        proxy,
        &format!("keyway_server_errors_total{{kind=\"{kind}\",server=\"s0\"}}"),
    )
}

/// Waits until Keyway dropped the connection the fault fired on.
fn assert_dropped(fake: &FakeServer) -> usize {
    let conn = fake.fired_on().expect("the fault fired");
    assert!(
        wait_until(Duration::from_secs(5), || fake.closed_by_peer(conn)),
        "keyway dropped the faulty connection {conn}"
    );
    conn
}

/// Keyway is healthy after the fault: a fresh client is served (over a new connection to the
/// server), each client connected through the fault is still served on its own connection,
/// and the server is up. With `strict`, the server never went down: the fault counted as one
/// failure, less than `fall`, and the probes kept succeeding.
fn assert_healthy(proxy: &Proxy, fake: &FakeServer, clients: &mut [&mut RawClient], strict: bool) {
    assert!(
        wait_until(Duration::from_secs(5), || {
            let mut fresh = client(proxy);
            get(&mut fresh, "fresh") == bulk("fresh")
        }),
        "a fresh client is served after the fault"
    );
    let conn = fake.fired_on().expect("the fault fired");
    let served_on: Vec<usize> = fake
        .requests()
        .iter()
        .filter(|r| r.args.get(1).is_some_and(|k| k == "fresh"))
        .map(|r| r.conn)
        .collect();
    assert!(
        !served_on.is_empty() && !served_on.contains(&conn),
        "keyway reconnected: the fresh requests came on {served_on:?}, the fault on {conn}"
    );
    for (i, c) in clients.iter_mut().enumerate() {
        let key = format!("after{i}");
        assert_eq!(get(c, &key), bulk(&key), "client {i} is still served");
    }
    assert!(
        wait_until(Duration::from_secs(5), || series(
            proxy,
            "keyway_server_up{server=\"s0\"}"
        ) == 1.0),
        "s0 is up"
    );
    // One data connection open again, and nothing left counted in flight on it.
    assert_eq!(
        series(proxy, "keyway_server_connections{server=\"s0\"}"),
        1.0
    );
    assert_eq!(
        series(proxy, "keyway_server_in_flight_requests{server=\"s0\"}"),
        0.0
    );
    if strict {
        assert_eq!(
            series(
                proxy,
                "keyway_server_state_changes_total{server=\"s0\",state=\"down\"}"
            ),
            0.0,
            "s0 never went down"
        );
    }
}

/// The data requests (not the prober's) the fake read, as `GET key` keys, on any connection.
fn keys_read(fake: &FakeServer) -> Vec<String> {
    fake.requests()
        .into_iter()
        .filter(|r| r.args.first().is_some_and(|a| a == "GET"))
        .map(|r| r.args[1].clone())
        .collect()
}

#[test]
fn an_unsolicited_reply_drops_the_connection_and_later_requests_work() {
    // The extra frame comes in the same write as the reply to the request, so Keyway reads it
    // with nothing in flight; the listener is closed meanwhile, so that the requests Keyway gets
    // before it may reconnect are seen to fail.
    let (fake, proxy) = start(Fault::Unsolicited(b"+UNASKED\r\n".to_vec()), After::Refuse);
    let mut bystander = bystander(&proxy);
    let mut c = client(&proxy);
    assert_eq!(
        get(&mut c, "a"),
        bulk("a"),
        "the request gets its own reply"
    );
    let conn = assert_dropped(&fake);
    // No connection to the server now: the next request fails at once, naming the server.
    let b = get(&mut c, "b");
    assert!(
        b.starts_with(&format!("{}is unavailable: ", error_prefix(&fake))),
        "{b}"
    );
    assert!(!b.contains("UNASKED"));
    fake.accept_again();
    // Strict is off: the refused reconnects count as failures too, and may take s0 down.
    assert_healthy(&proxy, &fake, &mut [&mut c, &mut bystander], false);
    let read = keys_read(&fake);
    assert_eq!(read.iter().filter(|k| *k == "a").count(), 1, "{read:?}");
    assert!(
        !read.contains(&"b".to_string()),
        "b failed in Keyway: {read:?}"
    );
    assert!(fake
        .requests()
        .iter()
        .any(|r| r.conn == conn && r.args[0] == "GET"));
}

#[test]
fn a_malformed_reply_fails_the_request_and_drops_the_connection() {
    let (fake, proxy) = start(Fault::Malformed(b"?garbage\r\n".to_vec()), After::Serve);
    let mut bystander = bystander(&proxy);
    let mut c = client(&proxy);
    assert_eq!(
        get(&mut c, "a"),
        format!(
            "{}sent a malformed reply: unknown reply type byte '?'\r\n",
            error_prefix(&fake)
        )
    );
    // Counted once per request that got no reply (read before Keyway may fail more in backoff).
    assert_eq!(errors(&proxy, "protocol"), 1.0);
    assert_dropped(&fake);
    assert_healthy(&proxy, &fake, &mut [&mut c, &mut bystander], true);
}

#[test]
fn a_reply_cut_by_a_close_fails_the_request_as_lost() {
    let (fake, proxy) = start(Fault::CutAndClose(b"$10\r\nhalf".to_vec()), After::Serve);
    let mut bystander = bystander(&proxy);
    let mut c = client(&proxy);
    // At the close, not at the request timeout (that would be "did not answer within"); as
    // lost, not unavailable: the request was sent, and the server may have run it.
    assert_eq!(
        get(&mut c, "a"),
        format!(
            "{}lost the connection before replying: connection closed by server\r\n",
            error_prefix(&fake)
        )
    );
    // Counted once per request that got no reply (read before Keyway may fail more in backoff).
    assert_eq!(errors(&proxy, "unavailable"), 1.0);
    assert_dropped(&fake);
    assert_healthy(&proxy, &fake, &mut [&mut c, &mut bystander], true);
}

#[test]
fn a_server_that_stalls_mid_reply_times_out_and_the_connection_is_dropped() {
    let (fake, proxy) = start(Fault::Stall(b"$10\r\nhalf".to_vec()), After::Serve);
    let mut bystander = bystander(&proxy);
    let mut c = client(&proxy);
    let start = Instant::now();
    assert_eq!(
        get(&mut c, "a"),
        format!("{}did not answer within 300ms\r\n", error_prefix(&fake))
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Counted once per request that got no reply (read before Keyway may fail more in backoff).
    assert_eq!(errors(&proxy, "timeout"), 1.0);
    assert_dropped(&fake);
    assert_healthy(&proxy, &fake, &mut [&mut c, &mut bystander], true);
}

#[test]
fn a_close_mid_pipeline_answers_the_replies_that_came_and_fails_the_rest_in_order() {
    const N: usize = 10;
    const K: usize = 4;
    let (fake, proxy) = start(
        Fault::CloseMidPipeline {
            requests: N,
            answered: K,
        },
        After::Serve,
    );
    let mut bystander = bystander(&proxy);
    let mut c = client(&proxy);
    let keys: Vec<String> = (0..N).map(|i| format!("p{i}")).collect();
    let pipeline: Vec<u8> = keys.iter().flat_map(|k| command(&["GET", k])).collect();
    c.send(&pipeline);
    let lost = format!(
        "{}lost the connection before replying: connection closed by server\r\n",
        error_prefix(&fake)
    );
    for (i, key) in keys.iter().enumerate() {
        let want = if i < K { bulk(key) } else { lost.clone() };
        assert_eq!(reply(&mut c), want, "reply {i}");
    }
    // Nothing more: no reply duplicated, none late.
    c.stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let extra = c.read_reply();
    assert!(extra.is_err(), "an extra reply: {extra:?}");
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    // Counted once per request that got no reply (read before Keyway may fail more in backoff).
    assert_eq!(errors(&proxy, "unavailable"), (N - K) as f64);
    let conn = assert_dropped(&fake);
    // Each request was written once, in order, on the connection that closed (after the
    // handshake's PING); none was retried.
    let on_conn: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.conn == conn && r.args[0] == "GET")
        .map(|r| r.args[1].clone())
        .collect();
    assert_eq!(on_conn, keys);
    assert_healthy(&proxy, &fake, &mut [&mut c, &mut bystander], true);
    let read = keys_read(&fake);
    for key in &keys {
        assert_eq!(
            read.iter().filter(|k| *k == key).count(),
            1,
            "{key}: {read:?}"
        );
    }
}
