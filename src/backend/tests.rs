//! Unit tests of the connection task and pool.

use super::*;
use crate::metrics::Metrics;
use std::sync::atomic::AtomicBool;

/// A pool on a runtime that then shuts down: the connection task is gone, so requests fail
/// at once with an error instead of waiting in a queue nobody reads.
#[test]
fn requests_fail_at_once_once_the_connection_task_is_gone() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A listener that accepts (the kernel's backlog) and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let metrics = Metrics::new();
    let health = HealthOptions {
        interval: Duration::from_secs(60),
        timeout: Duration::from_secs(1),
        fall: 3,
        rise: 2,
    };
    let options = PoolOptions {
        connections: 1,
        timeout: Duration::from_secs(60),
    };
    let (pool, mut queued) = runtime.block_on(async {
        let pool = Pool::spawn(
            "s",
            &addr,
            &options,
            health,
            metrics.server("s"),
            Arc::new(Credentials::none()),
            None,
        );
        // Let the task connect and take one request; the next stays queued.
        let written = pool.send(0, Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(written);
        let queued = pool.send(0, Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"));
        (pool, queued)
    });
    drop(runtime);
    match queued.try_recv() {
        Ok(Err(BackendError::Unavailable { reason, .. })) => {
            assert_eq!(&*reason, "connection task stopped");
        }
        other => panic!("queued request: {other:?}"),
    }
    let mut later = pool.send(0, Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"));
    assert!(matches!(
        later.try_recv(),
        Ok(Err(BackendError::Unavailable { .. }))
    ));
}

/// A frame no health probe sends, to tell the pool's connection from the prober's.
const ECHO: &[u8] = b"*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\n";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A pool of one connection to `addr` with request `timeout`, whose prober probes once at the
/// start and then not for an hour (nor gives up on that probe before), out of the way.
fn pool(addr: &str, timeout: Duration, metrics: &Metrics) -> Pool {
    let health = HealthOptions {
        interval: Duration::from_secs(3600),
        timeout: Duration::from_secs(3600),
        fall: 3,
        rise: 2,
    };
    let options = PoolOptions {
        connections: 1,
        timeout,
    };
    Pool::spawn(
        "s",
        addr,
        &options,
        health,
        metrics.server("s"),
        Arc::new(Credentials::none()),
        None,
    )
}

/// An address nothing listens on: a listener's port, the listener dropped.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// When each of the pool's dials began.
fn dials(pool: &Pool) -> Vec<Instant> {
    pool.shared.dials.lock().expect("dials").clone()
}

/// Waits (virtually, 1 ms at a time, at most `within`) until `check` holds.
async fn eventually(within: Duration, check: impl Fn() -> bool) -> bool {
    let until = Instant::now() + within;
    while !check() {
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(ms(1)).await;
    }
    true
}

#[test]
fn backoff_doubles_from_20ms_to_at_most_1s_and_a_reply_resets_it() {
    let mut backoff = Backoff::default();
    let waits: Vec<Duration> = (0..9).map(|_| backoff.next_wait()).collect();
    let want = [20, 40, 80, 160, 320, 640, 1000, 1000, 1000].map(ms);
    assert_eq!(waits, want);
    backoff.reset();
    assert_eq!(backoff.next_wait(), ms(20));
    assert_eq!(backoff.next_wait(), ms(40));
}

/// Virtual time: a server that refuses connections is redialled after 20 ms, then 40, 80, ...,
/// never more than 1 s apart; a request meanwhile fails at once, naming the refusal.
#[tokio::test(start_paused = true)]
async fn a_refused_server_is_redialled_with_doubling_backoff_and_requests_fail_at_once() {
    let metrics = Metrics::new();
    let pool = pool(&closed_port(), Duration::from_secs(5), &metrics);
    tokio::time::sleep(ms(6000)).await;
    let dials = dials(&pool);
    let gaps: Vec<Duration> = dials.windows(2).map(|w| w[1] - w[0]).collect();
    // Dials at 0, 20, 60, 140, 300, 620, 1260, 2260, 3260, 4260, 5260 ms.
    let want = [20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000].map(ms);
    assert_eq!(gaps, want);

    // 6000 ms is within the backoff that began at 5260.
    let asked = Instant::now();
    let reply = pool.send(0, Bytes::from_static(ECHO)).await.expect("reply");
    assert_eq!(
        Instant::now(),
        asked,
        "answered at once, not at the next dial"
    );
    match reply {
        Err(BackendError::Unavailable { server, reason, .. }) => {
            assert_eq!(&*server, "s");
            assert!(reason.contains("refused"), "{reason}");
        }
        other => panic!("a request during backoff: {other:?}"),
    }
    assert_eq!(metrics.server("s").unavailable.get(), 1);
}

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// A listener on 127.0.0.1 that accepts and reads, answers `+PONG` to each `PING` while
/// `pongs` holds, and nothing else, ever: a server that hangs once connections are up. Each
/// connection's bytes are sent on the returned channel when the peer closes it.
async fn ping_only_server(
    pongs: Arc<std::sync::atomic::AtomicBool>,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (closed, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let closed = closed.clone();
            let pongs = pongs.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut answered = 0;
                while let Ok(n) = socket.read_buf(&mut got).await {
                    if n == 0 {
                        break;
                    }
                    let pings = got.windows(PING.len()).filter(|w| *w == PING).count();
                    while answered < pings && pongs.load(Ordering::SeqCst) {
                        let _ = socket.write_all(b"+PONG\r\n").await;
                        answered += 1;
                    }
                }
                let _ = closed.send(got);
            });
        }
    });
    (addr, rx)
}

/// Virtual time: a request to a server that never answers fails exactly at its deadline with
/// "did not answer within", and the connection is dropped and, after the first backoff,
/// dialled again.
#[tokio::test(start_paused = true)]
async fn an_unanswered_request_fails_at_its_deadline_and_the_connection_is_redialled() {
    let (addr, mut closed) = ping_only_server(Arc::new(AtomicBool::new(true))).await;
    let metrics = Metrics::new();
    let timeout = ms(500);
    let pool = pool(&addr, timeout, &metrics);
    assert!(eventually(ms(100), || pool.open_connections() == 1).await);

    let asked = Instant::now();
    let reply = pool.send(0, Bytes::from_static(ECHO)).await.expect("reply");
    assert_eq!(
        Instant::now() - asked,
        timeout,
        "failed exactly at the deadline"
    );
    match reply {
        Err(e @ BackendError::Timeout { .. }) => {
            assert_eq!(
                e.to_string(),
                "server 's' (".to_string() + &addr + ") did not answer within 500ms"
            );
        }
        other => panic!("an unanswered request: {other:?}"),
    }
    assert_eq!(metrics.server("s").timeouts.get(), 1);

    // The connection that carried it, after the handshake's PING, is closed (the prober's
    // stays open).
    let got = closed.recv().await.expect("a connection closed");
    assert_eq!(got, [PING, ECHO].concat());
    // And dialled again after 20 ms.
    assert!(eventually(ms(100), || dials(&pool).len() == 2).await);
    let dials = dials(&pool);
    assert_eq!(dials[1] - asked, timeout + ms(20));
    assert!(eventually(ms(100), || pool.open_connections() == 1).await);
}

/// A pool of one connection to `addr`: request `timeout`, and a health probe timeout of
/// `probe_timeout` (probing once at the start, then not for an hour), `fall` = 3.
fn pool_probed(addr: &str, timeout: Duration, probe_timeout: Duration, metrics: &Metrics) -> Pool {
    let health = HealthOptions {
        interval: Duration::from_secs(3600),
        timeout: probe_timeout,
        fall: 3,
        rise: 2,
    };
    let options = PoolOptions {
        connections: 1,
        timeout,
    };
    Pool::spawn(
        "s",
        addr,
        &options,
        health,
        metrics.server("s"),
        Arc::new(Credentials::none()),
        None,
    )
}

/// Virtual time: a connection serves only once the server answered its handshake's PING, and
/// once a connection has failed, requests that arrive while the next connect waits for a hung
/// server fail at once, naming why it reconnects, instead of waiting for the handshake's
/// timeout.
#[tokio::test(start_paused = true)]
async fn requests_fail_at_once_while_a_hung_server_is_redialled() {
    let pongs = Arc::new(AtomicBool::new(true));
    let (addr, _closed) = ping_only_server(pongs.clone()).await;
    let metrics = Metrics::new();
    let timeout = ms(500);
    let pool = pool(&addr, timeout, &metrics);
    assert!(eventually(ms(100), || pool.open_connections() == 1).await);
    // The server hangs: the request in flight fails at its deadline, the connection goes.
    pongs.store(false, Ordering::SeqCst);
    let reply = pool.send(0, Bytes::from_static(ECHO)).await.expect("reply");
    assert!(
        matches!(reply, Err(BackendError::Timeout { .. })),
        "{reply:?}"
    );
    // Redialled after 20 ms: the kernel accepts, the PING gets no answer.
    assert!(eventually(ms(100), || dials(&pool).len() == 2).await);
    tokio::time::sleep(ms(10)).await;
    assert_eq!(pool.open_connections(), 0, "no PONG, not connected");
    let asked = Instant::now();
    let reply = pool.send(0, Bytes::from_static(ECHO)).await.expect("reply");
    assert_eq!(
        Instant::now(),
        asked,
        "answered at once, not after the handshake"
    );
    match reply {
        Err(e @ BackendError::Unavailable { .. }) => {
            assert!(!e.may_have_run());
            assert_eq!(
                e.detail(),
                "unavailable: reconnecting after: request timed out after 500ms"
            );
        }
        other => panic!("a request while reconnecting: {other:?}"),
    }
    // The server answers again: the next dial's handshake passes and requests are served.
    pongs.store(true, Ordering::SeqCst);
    assert!(eventually(ms(3000), || pool.open_connections() == 1).await);
}

/// Virtual time: once the health checks mark the server down, a request waiting on it fails
/// when it has waited the probe's timeout (100 ms), not the request timeout (5 s); while the
/// server is up, a request waits its whole timeout.
#[tokio::test(start_paused = true)]
async fn a_request_on_a_server_marked_down_fails_after_the_probe_timeout() {
    let (addr, _closed) = ping_only_server(Arc::new(AtomicBool::new(true))).await;
    let metrics = Metrics::new();
    let pool = pool_probed(&addr, ms(5000), ms(100), &metrics);
    assert!(eventually(ms(100), || pool.open_connections() == 1).await);
    // The prober's one probe (INFO, never answered) failed: one failure of fall = 3.
    tokio::time::sleep(ms(200)).await;
    assert!(pool.health().is_up());
    let asked = Instant::now();
    let reply = pool.send(0, Bytes::from_static(ECHO)).await.expect("reply");
    assert_eq!(Instant::now() - asked, ms(5000), "up: the whole timeout");
    assert!(
        matches!(reply, Err(BackendError::Timeout { .. })),
        "{reply:?}"
    );
    assert!(eventually(ms(3000), || pool.open_connections() == 1).await);
    // Marked down (the probes' failures and this one), with a request waiting.
    let asked = Instant::now();
    let waiting = pool.send(0, Bytes::from_static(ECHO));
    tokio::time::sleep(ms(30)).await;
    for _ in 0..3 {
        pool.health().failure("test");
    }
    assert!(!pool.health().is_up());
    let reply = waiting.await.expect("reply");
    assert_eq!(Instant::now() - asked, ms(100));
    match reply {
        Err(e @ BackendError::Down { .. }) => {
            assert!(e.may_have_run(), "it was sent");
            assert_eq!(
                e.to_string(),
                format!("server 's' ({addr}) is down by the health checks and did not answer within 100ms")
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A request written on a connection that the server then closes fails as lost: it may have
/// run.
#[tokio::test]
async fn a_request_on_a_connection_closed_by_the_server_is_lost_not_unsent() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Ok(n) = socket.read_buf(&mut got).await {
                    if n == 0 {
                        return;
                    }
                    if got.windows(PING.len()).any(|w| w == PING) && !got.ends_with(ECHO) {
                        let _ = socket.write_all(b"+PONG\r\n").await;
                    }
                    if got.ends_with(ECHO) {
                        // Read, and closed without a reply.
                        return;
                    }
                }
            });
        }
    });
    let metrics = Metrics::new();
    let pool = pool(&addr, ms(5000), &metrics);
    assert!(eventually(ms(2000), || pool.open_connections() == 1).await);
    let reply = pool.send(0, Bytes::from_static(ECHO)).await.expect("reply");
    match reply {
        Err(e @ BackendError::Lost { .. }) => {
            assert!(e.may_have_run());
            assert!(
                e.detail().starts_with("connection lost before the reply: "),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
}
