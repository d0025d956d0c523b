//! Unit tests of the up/down state machine and of the prober.

use super::*;
use crate::metrics::Metrics;

fn health(fall: u32, rise: u32) -> (Health, ServerMetrics) {
    let m = Metrics::new().server("x");
    let options = HealthOptions {
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(100),
        fall,
        rise,
    };
    (Health::new(Arc::from("x"), options, m.clone()), m)
}

#[test]
fn fall_consecutive_failures_take_it_down() {
    let (h, m) = health(3, 2);
    h.failure("a");
    h.failure("b");
    h.success(); // the streak restarts
    h.failure("c");
    h.failure("d");
    assert!(h.is_up());
    h.failure("e");
    assert!(!h.is_up());
    assert_eq!(m.up.get(), 0);
    assert_eq!(m.went_down.get(), 1);
}

#[test]
fn rise_consecutive_successes_bring_it_back() {
    let (h, m) = health(1, 2);
    h.failure("x");
    assert!(!h.is_up());
    h.success();
    h.failure("again"); // the streak restarts
    h.success();
    assert!(!h.is_up());
    h.success();
    assert!(h.is_up());
    assert_eq!(m.went_up.get(), 1);
    assert_eq!(m.up.get(), 1);
}

#[test]
fn failure_replies_are_recognised() {
    assert!(Health::is_failure_reply(b"-LOADING Redis is loading\r\n"));
    assert!(Health::is_failure_reply(b"-MASTERDOWN Link down\r\n"));
    assert!(Health::is_failure_reply(b"-READONLY You can't write\r\n"));
    assert!(!Health::is_failure_reply(b"-ERR wrong\r\n"));
    assert!(!Health::is_failure_reply(b"+OK\r\n"));
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_new_server_is_up() {
    let (h, m) = health(3, 2);
    assert!(h.is_up());
    assert_eq!(m.up.get(), 1);
}

#[test]
fn it_goes_down_after_exactly_fall_failures_in_a_row() {
    for fall in 1..=5 {
        let (h, m) = health(fall, 2);
        for _ in 1..fall {
            h.failure("x");
        }
        assert!(h.is_up(), "fall {fall}: up after {} failures", fall - 1);
        h.failure("x");
        assert!(!h.is_up(), "fall {fall}: down after {fall} failures");
        // More failures while Down change nothing.
        h.failure("x");
        assert!(!h.is_up());
        assert_eq!(m.went_down.get(), 1, "fall {fall}");
    }
}

#[test]
fn it_comes_up_after_exactly_rise_successes_in_a_row() {
    for rise in 1..=5 {
        let (h, m) = health(1, rise);
        h.failure("x");
        for _ in 1..rise {
            h.success();
        }
        assert!(!h.is_up(), "rise {rise}: down after {} successes", rise - 1);
        h.success();
        assert!(h.is_up(), "rise {rise}: up after {rise} successes");
        // More successes while Up change nothing.
        h.success();
        assert!(h.is_up());
        assert_eq!(m.went_up.get(), 1, "rise {rise}");
    }
}

#[test]
fn a_success_while_up_restarts_the_failure_streak() {
    let (h, m) = health(2, 1);
    for _ in 0..10 {
        h.failure("x");
        assert!(h.is_up(), "never two failures in a row");
        h.success();
    }
    assert_eq!(m.went_down.get(), 0);
}

#[test]
fn a_failure_while_down_restarts_the_success_streak() {
    let (h, m) = health(1, 2);
    h.failure("x");
    for _ in 0..10 {
        h.success();
        assert!(!h.is_up(), "never two successes in a row");
        h.failure("x");
    }
    assert_eq!(m.went_up.get(), 0);
}

#[test]
fn probe_errors_say_what_happened() {
    assert_eq!(
        ProbeError::Timeout(ms(200)).to_string(),
        "health probe timed out after 200ms"
    );
    assert_eq!(
        ProbeError::Reply("PANG".into()).to_string(),
        "health probe failed: unexpected PING reply \"PANG\""
    );
}

/// A listener on 127.0.0.1 that accepts, never answers, and counts the connections it got.
async fn silent_server() -> (Arc<str>, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            open.push(socket);
        }
    });
    (Arc::from(addr), accepted)
}

/// Virtual time: the prober probes every `interval`; against a server that never answers,
/// each probe dials anew (a connection that failed, or never finished its handshake, is not
/// kept) and fails at its timeout, and the third (`fall`) takes the server Down exactly then.
/// Cancelled, it stops.
#[tokio::test(start_paused = true)]
async fn the_prober_probes_every_interval_and_fall_timeouts_take_a_silent_server_down() {
    let (addr, accepted) = silent_server().await;
    let m = Metrics::new().server("x");
    let options = HealthOptions {
        interval: ms(1000),
        timeout: ms(200),
        fall: 3,
        rise: 2,
    };
    let h = Arc::new(Health::new(Arc::from("x"), options, m.clone()));
    let stop = tokio_util::sync::CancellationToken::new();
    let start = tokio::time::Instant::now();
    let prober = tokio::spawn(probe(
        h.clone(),
        addr,
        Arc::new(Credentials::none()),
        None,
        stop.clone(),
    ));
    // Probes at 0, 1000, 2000, 3000 ms, each failing 200 ms later.
    for (at, probes, up) in [
        (100, 1, true),
        (1100, 2, true),
        (2100, 3, true),
        (2199, 3, true),
        (2201, 3, false),
        (3100, 4, false),
    ] {
        tokio::time::sleep_until(start + ms(at)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), probes, "probes by {at} ms");
        assert_eq!(h.is_up(), up, "up at {at} ms");
    }
    assert_eq!(m.went_down.get(), 1);
    stop.cancel();
    prober.await.expect("the prober ends");
    tokio::time::sleep(ms(10_000)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 4, "no probe once stopped");
}

#[test]
fn a_new_run_id_marks_the_server_recovering_before_it_is_back_up() {
    let (h, m) = health(1, 1);
    h.set_identity(Some(Arc::from("run-1")), Some(true));
    assert!(!h.is_recovering(), "the first identity is no restart");
    h.failure("killed");
    h.set_identity(Some(Arc::from("run-1")), Some(true));
    assert!(!h.is_recovering(), "the same run_id is the same process");
    assert_eq!(h.restarts(), 0);
    // Restarted: recovering as the identity is read, before the probe's success.
    h.set_identity(Some(Arc::from("run-2")), Some(false));
    assert!(h.is_recovering());
    assert_eq!(h.restarts(), 1);
    assert_eq!(m.recovering.get(), 1);
    h.success();
    assert!(h.is_up());
    assert!(!h.is_readable(), "up, but no reads until resynced");
    h.set_recovering(false);
    assert!(h.is_readable());
    assert_eq!(m.recovering.get(), 0);
    let id = h.identity();
    assert_eq!(id.run_id.as_deref(), Some("run-2"));
    assert_eq!(id.has_data, Some(false));
    assert_eq!(id.reads, 3);
    // A probe that could not read the run_id forgets nothing.
    h.set_identity(None, None);
    assert_eq!(h.identity().run_id.as_deref(), Some("run-2"));
    assert!(!h.is_recovering());
}

#[test]
fn info_fields_are_read_by_exact_name() {
    let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\nrun_id_extra:no\r\n";
    assert_eq!(info_field(info, "run_id").as_deref(), Some("abc123"));
    assert_eq!(redis_version(info).as_deref(), Some("7.0.15"));
    assert_eq!(info_field(info, "run").as_deref(), None);
}
