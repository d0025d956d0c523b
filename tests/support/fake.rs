//! A scripted misbehaving backend, for the faults a real redis-server cannot show.
//!
//! Everything Redis does is tested against real servers ([`super::RedisServer`]); this server
//! imitates nothing of Redis beyond what it takes to stage one fault. [`FakeServer`] listens on
//! 127.0.0.1:0, serves each connection on a std thread, and reads requests as RESP arrays of
//! bulk strings (all that Keyway and redis-rs send). On every connection it answers:
//!
//! - `PING` with `+PONG`, and `CLIENT ...` with `+OK`: Keyway's health prober (redis-rs) opens
//!   a control connection of its own, sends `CLIENT SETINFO LIB-NAME redis-rs` and
//!   `CLIENT SETINFO LIB-VER <version>` (pipelined, no `HELLO`), then `INFO server` (Keyway
//!   reads the server's version from it, answered here with `redis_version` only), `DBSIZE`
//!   (whether the keyspace is empty, for resync: answered `:0`) and `PING`
//!   then `TIME` (answered with this machine's clock) every interval, and
//!   marks the server down unless it gets `+PONG`. So the server stays up, and a test isolates
//!   a data-path fault;
//! - any other request (a data request) with a bulk string of its last argument (`GET k` gets
//!   `k`), so that every reply names its request; except the requests its [`Fault`] takes.
//!
//! The fault fires once, on the first data request the server gets (on Keyway's data
//! connection, since the prober sends none); that connection then follows the fault, and every
//! other connection, and every later one, is well-behaved. The server records what it saw
//! (connections, who closed them, every request) for tests to check and wait on.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the server's threads look at their stop flag (their read timeout).
const POLL: Duration = Duration::from_millis(10);

/// What the server does to the first data request it gets, and to its connection.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answers the request, and in the same write sends `frame`: a reply nobody asked for.
    Unsolicited(Vec<u8>),
    /// Answers the request with `bytes`, which are not RESP, and keeps the connection open.
    Malformed(Vec<u8>),
    /// Answers the request with `bytes`, the start of a reply, then closes the connection (FIN;
    /// it reads on until the peer closes, so that nothing unread turns the close into a reset).
    CutAndClose(Vec<u8>),
    /// Answers the request with `bytes`, the start of a reply, then stalls: it reads on, and
    /// writes nothing more on that connection, until the peer closes it.
    Stall(Vec<u8>),
    /// Waits until `requests` data requests have come on the connection, answers the first
    /// `answered` of them in one write, then closes as [`Fault::CutAndClose`] does.
    CloseMidPipeline { requests: usize, answered: usize },
}

/// What the server does with new connections once its fault fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Accepts and serves them, well-behaved.
    Serve,
    /// Refuses them: the listening socket is closed before the fault's bytes are written, so
    /// that a reconnect is refused, until [`FakeServer::accept_again`].
    Refuse,
}

/// One request the server read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The connection it came on (0 for the first accepted, 1 for the next, ...).
    pub conn: usize,
    /// Its arguments, lossily as text.
    pub args: Vec<String>,
}

#[derive(Default)]
struct Log {
    accepted: usize,
    /// Connections whose peer closed (or reset) them, in the order seen.
    closed_by_peer: Vec<usize>,
    requests: Vec<Seen>,
    /// The connection the fault fired on.
    fired_on: Option<usize>,
}

struct Shared {
    port: u16,
    fault: Mutex<Option<Fault>>,
    after: After,
    /// `None` while refusing connections.
    listener: Mutex<Option<TcpListener>>,
    log: Mutex<Log>,
    stop: AtomicBool,
}

/// Locks a mutex, ignoring poisoning (a panicking connection thread must not hide the log).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, Log> {
        lock(&self.log)
    }
}

/// The fake server: stopped, its threads joined, on drop.
pub struct FakeServer {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeServer {
    /// Listens on a free loopback port; the fault fires once, then new connections are served.
    pub fn start(fault: Fault) -> FakeServer {
        Self::start_with(fault, After::Serve)
    }

    /// Listens on a free loopback port; `after` says what happens to connections once the
    /// fault fired.
    pub fn start_with(fault: Fault, after: After) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake server");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            port,
            fault: Mutex::new(Some(fault)),
            after,
            listener: Mutex::new(Some(listener)),
            log: Mutex::new(Log::default()),
            stop: AtomicBool::new(false),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(&shared))
        };
        FakeServer {
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.shared.port))
    }

    pub fn addr_string(&self) -> String {
        self.addr().to_string()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.log().accepted
    }

    /// The connection the fault fired on, once it did.
    pub fn fired_on(&self) -> Option<usize> {
        self.shared.log().fired_on
    }

    /// Whether the peer closed (or reset) connection `conn`.
    pub fn closed_by_peer(&self, conn: usize) -> bool {
        self.shared.log().closed_by_peer.contains(&conn)
    }

    /// Every request read so far, in the order read.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.log().requests.clone()
    }

    /// Listens again on the same port after [`After::Refuse`] closed it.
    pub fn accept_again(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr()) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "could not listen on {} again: {e}",
                        self.addr()
                    );
                    std::thread::sleep(POLL);
                }
            }
        };
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        *lock(&self.shared.listener) = Some(listener);
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Accepts connections (polling a nonblocking listener, so that it can be closed and stopped)
/// and serves each on a thread; joins them when stopped.
fn accept_loop(shared: &Arc<Shared>) {
    let mut threads = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let accepted = lock(&shared.listener)
            .as_ref()
            .and_then(|l| l.accept().ok());
        let Some((stream, _)) = accepted else {
            std::thread::sleep(POLL / 2);
            continue;
        };
        let id = {
            let mut log = shared.log();
            log.accepted += 1;
            log.accepted - 1
        };
        let shared = shared.clone();
        threads.push(std::thread::spawn(move || serve(&shared, id, stream)));
    }
    for t in threads {
        let _ = t.join();
    }
}

/// How one connection behaves.
enum Mode {
    /// Answers every request.
    Normal,
    /// Answers nothing more (stalled, or closed for writing).
    Silent,
    /// Collecting the answers of a pipeline until `requests` came (see
    /// [`Fault::CloseMidPipeline`]).
    Collecting {
        requests: usize,
        answered: usize,
        replies: Vec<Vec<u8>>,
    },
}

fn serve(shared: &Shared, id: usize, mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(POLL));
    let mut mode = Mode::Normal;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while !shared.stop.load(Ordering::Relaxed) {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        }
        while let Some((args, used)) = parse_request(&buf) {
            buf.drain(..used);
            shared.log().requests.push(Seen {
                conn: id,
                args: args
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect(),
            });
            mode = answer(shared, id, &mut stream, mode, &args);
        }
    }
    if !shared.stop.load(Ordering::Relaxed) {
        shared.log().closed_by_peer.push(id);
    }
}

/// Answers one request in `mode`; returns the connection's next mode.
fn answer(
    shared: &Shared,
    id: usize,
    stream: &mut TcpStream,
    mode: Mode,
    args: &[Vec<u8>],
) -> Mode {
    // Write errors are ignored: the peer is gone, and the read loop will see it.
    match mode {
        Mode::Silent => Mode::Silent,
        Mode::Collecting {
            requests,
            answered,
            mut replies,
        } => {
            replies.push(normal_answer(args));
            if replies.len() < requests {
                return Mode::Collecting {
                    requests,
                    answered,
                    replies,
                };
            }
            let _ = stream.write_all(&replies[..answered.min(requests)].concat());
            let _ = stream.shutdown(Shutdown::Write);
            Mode::Silent
        }
        Mode::Normal => {
            if let Some(reply) = control_answer(args) {
                let _ = stream.write_all(&reply);
                return Mode::Normal;
            }
            let Some(fault) = lock(&shared.fault).take() else {
                let _ = stream.write_all(&normal_answer(args));
                return Mode::Normal;
            };
            shared.log().fired_on = Some(id);
            if shared.after == After::Refuse {
                *lock(&shared.listener) = None;
            }
            match fault {
                Fault::Unsolicited(frame) => {
                    let _ = stream.write_all(&[normal_answer(args), frame].concat());
                    Mode::Normal
                }
                Fault::Malformed(bytes) => {
                    let _ = stream.write_all(&bytes);
                    Mode::Normal
                }
                Fault::CutAndClose(bytes) => {
                    let _ = stream.write_all(&bytes);
                    let _ = stream.shutdown(Shutdown::Write);
                    Mode::Silent
                }
                Fault::Stall(bytes) => {
                    let _ = stream.write_all(&bytes);
                    Mode::Silent
                }
                Fault::CloseMidPipeline { requests, answered } => answer(
                    shared,
                    id,
                    stream,
                    Mode::Collecting {
                        requests,
                        answered,
                        replies: Vec::new(),
                    },
                    args,
                ),
            }
        }
    }
}

/// The reply to a control request (health probes and their handshake), on any connection.
fn control_answer(args: &[Vec<u8>]) -> Option<std::borrow::Cow<'static, [u8]>> {
    let name = args.first()?;
    if name.eq_ignore_ascii_case(b"PING") {
        Some(b"+PONG\r\n"[..].into())
    } else if name.eq_ignore_ascii_case(b"CLIENT") {
        Some(b"+OK\r\n"[..].into())
    } else if name.eq_ignore_ascii_case(b"INFO") {
        Some(b"$22\r\nredis_version:7.0.15\r\n\r\n"[..].into())
    } else if name.eq_ignore_ascii_case(b"DBSIZE") {
        // The prober asks at each new connection whether the keyspace is empty.
        Some(b":0\r\n"[..].into())
    } else if name.eq_ignore_ascii_case(b"TIME") {
        // The prober reads the server's clock after each PING (two-phase prepare deadlines).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let (secs, micros) = (now.as_secs().to_string(), now.subsec_micros().to_string());
        Some(
            format!(
                "*2\r\n${}\r\n{secs}\r\n${}\r\n{micros}\r\n",
                secs.len(),
                micros.len()
            )
            .into_bytes()
            .into(),
        )
    } else {
        None
    }
}

/// The well-behaved answer to a data request: its last argument as a bulk string.
fn normal_answer(args: &[Vec<u8>]) -> Vec<u8> {
    let last = args.last().map(Vec::as_slice).unwrap_or_default();
    let mut out = format!("${}\r\n", last.len()).into_bytes();
    out.extend_from_slice(last);
    out.extend_from_slice(b"\r\n");
    out
}

/// One whole request at the start of `buf` (an array of bulk strings) and its length, or `None`
/// while incomplete.
fn parse_request(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    let (n, mut pos) = header(buf, 0, b'*')?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, start) = header(buf, pos, b'$')?;
        let end = start + len;
        if buf.len() < end + 2 {
            return None;
        }
        args.push(buf[start..end].to_vec());
        pos = end + 2;
    }
    Some((args, pos))
}

/// A `<kind><number>\r\n` line at `pos`: the number and where the line ends.
fn header(buf: &[u8], pos: usize, kind: u8) -> Option<(usize, usize)> {
    let rest = buf.get(pos..)?;
    let first = *rest.first()?;
    assert_eq!(
        first,
        kind,
        "the fake server reads RESP arrays of bulk strings only; got {:?}",
        String::from_utf8_lossy(rest)
    );
    let nl = rest.windows(2).position(|w| w == b"\r\n")?;
    let n = std::str::from_utf8(&rest[1..nl])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad length line {:?}", String::from_utf8_lossy(&rest[..nl])));
    Some((n, pos + nl + 2))
}
