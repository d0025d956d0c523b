//! Unit tests of the connection task and pool.

use super::*;
use crate::metrics::Metrics;

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

/// A listener on 127.0.0.1 that accepts, reads, and never answers. Each connection's bytes
/// are sent on the returned channel when the peer closes it.
async fn silent_server() -> (String, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (closed, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Ok(n) = socket.read_buf(&mut got).await {
                    if n == 0 {
                        break;
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
    let (addr, mut closed) = silent_server().await;
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

    // The connection that carried it is closed (the prober's stays open).
    let got = closed.recv().await.expect("a connection closed");
    assert_eq!(got, ECHO);
    // And dialled again after 20 ms.
    assert!(eventually(ms(100), || dials(&pool).len() == 2).await);
    let dials = dials(&pool);
    assert_eq!(dials[1] - asked, timeout + ms(20));
    assert!(eventually(ms(100), || pool.open_connections() == 1).await);
}
