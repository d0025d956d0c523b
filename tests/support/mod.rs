//! Test support: real `redis-server` processes and an in-process Keyway.
//!
//! Every test talks to real servers: [`RedisServer`] starts `redis-server` on a free loopback
//! port in its own temporary directory (no persistence) and kills it on drop. [`Proxy`] runs
//! Keyway in the test process on its own runtime. Helpers wait for conditions instead of
//! sleeping ([`wait_until`]). The one exception to real servers is [`fake`]: a scripted
//! backend for the protocol faults a redis-server cannot show (never to imitate Redis).
#![allow(dead_code)]

pub mod fake;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A `redis-server` child process on 127.0.0.1, killed (and its directory removed) on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    /// The `default` user's password (`--requirepass`), which [`RedisServer::client`] sends;
    /// change it with [`RedisServer::set_password`].
    pub password: Option<String>,
}

/// Whether a reply to PING says the server is up: PONG, or NOAUTH from a server with a password.
fn answers_ping(reply: std::io::Result<Vec<u8>>) -> bool {
    reply.is_ok_and(|r| r == b"+PONG\r\n" || r.starts_with(b"-NOAUTH"))
}

impl RedisServer {
    /// Starts a server with no persistence and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line arguments (`["--maxmemory", "10mb"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        for _attempt in 0..5 {
            let port = free_port();
            if let Some(server) = Self::try_start(port, extra) {
                return server;
            }
        }
        panic!("could not start redis-server (is it installed? see README)");
    }

    /// Starts a server on a given port (used to bring a killed server back on its address).
    pub fn start_on(port: u16) -> RedisServer {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = Self::try_start(port, &[]) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server would not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_start(port: u16, extra: &[&str]) -> Option<RedisServer> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", dir.path().to_str()?])
            .args(["--logfile", log.to_str()?])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (is it installed? see README)");
        let mut server = RedisServer {
            child: Some(child),
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            password: extra
                .iter()
                .position(|a| *a == "--requirepass")
                .and_then(|i| extra.get(i + 1))
                .map(|p| p.to_string()),
        };
        let up = wait_until(Duration::from_secs(5), || {
            if let Some(c) = server.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    return true; // exited: stop waiting, reported below
                }
            }
            answers_ping(raw_command(server.addr(), &["PING"]))
        });
        let alive = server
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if up && alive {
            Some(server)
        } else {
            None
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn addr_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Starts a server whose `default` user needs `password` (`--requirepass`).
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::start_with(&["--requirepass", password])
    }

    /// A synchronous redis-rs connection straight to this server (bypassing Keyway), as the
    /// `default` user with [`RedisServer::password`].
    pub fn client(&self) -> redis::Connection {
        use redis::IntoConnectionInfo;
        let mut settings = redis::RedisConnectionInfo::default();
        if let Some(pw) = &self.password {
            settings = settings.set_password(pw);
        }
        let info = redis::ConnectionAddr::Tcp("127.0.0.1".into(), self.port)
            .into_connection_info()
            .expect("connection info")
            .set_redis_settings(settings);
        redis::Client::open(info)
            .and_then(|c| c.get_connection())
            .expect("connect to redis-server")
    }

    /// Changes the `default` user's password on the running server (`CONFIG SET requirepass`);
    /// connections already authenticated stay so, as in Redis.
    pub fn set_password(&mut self, password: &str) {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg(password)
            .query(&mut self.client())
            .expect("CONFIG SET requirepass");
        self.password = Some(password.to_string());
    }

    /// Creates the ACL user `name` with `password` and every right
    /// (`ACL SETUSER name on >password ~* &* +@all`).
    pub fn add_acl_user(&self, name: &str, password: &str) {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(name)
            .arg("on")
            .arg(format!(">{password}"))
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .query(&mut self.client())
            .expect("ACL SETUSER");
    }

    /// `DBSIZE` straight from the server.
    pub fn dbsize(&self) -> i64 {
        redis::cmd("DBSIZE")
            .query(&mut self.client())
            .expect("DBSIZE")
    }

    /// Sends a signal (`"STOP"`, `"CONT"`, `"KILL"`) to the server process.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Kills the server with SIGKILL and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a server that keeps its data across restarts (AOF, fsync always).
    pub fn start_persistent() -> RedisServer {
        Self::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// Starts the server again on its port, directory and arguments (after [`RedisServer::kill`]):
    /// a persistent server comes back with its data.
    pub fn restart(&mut self) {
        self.kill();
        let log = self.dir.path().join("redis.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &self.port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ])
                .args(["--dir", self.dir.path().to_str().expect("utf-8")])
                .args(["--logfile", log.to_str().expect("utf-8")])
                .args(&self.extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            self.child = Some(child);
            let addr = self.addr();
            if wait_until(Duration::from_secs(5), || {
                answers_ping(raw_command(addr, &["PING"]))
            }) {
                return;
            }
            self.kill();
            assert!(
                Instant::now() < deadline,
                "redis-server would not restart: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A stopped process cannot die of SIGKILL until it is continued on some kernels.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Three servers, the usual pool of a test.
pub fn three() -> (RedisServer, RedisServer, RedisServer) {
    (
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    )
}

/// `n` servers, for tests that index them.
pub fn servers(n: usize) -> Vec<RedisServer> {
    (0..n).map(|_| RedisServer::start()).collect()
}

/// Sends one command as a RESP array over a fresh TCP connection and returns the raw reply bytes
/// read until the first complete line (enough for simple replies).
pub fn raw_command(addr: SocketAddr, args: &[&str]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
    }
    s.write_all(out.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.ends_with(b"\r\n") {
            break;
        }
    }
    Ok(buf)
}

/// A raw TCP client for byte-level tests (malformed frames, pipelines).
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.set_nodelay(true).ok();
        RawClient { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads until exactly `n` bytes arrived or the peer closed; returns what arrived.
    pub fn read_exact_or_eof(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match self.stream.read(&mut buf[got..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
        buf.truncate(got);
        buf
    }

    /// Reads until the peer closes the connection (or the read timeout passes).
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = self.stream.read_to_end(&mut buf);
        buf
    }

    /// Reads one whole reply (nested arrays included) and returns its raw bytes. Reads no byte
    /// past it, so that it mixes with the other reads. An error when the read timeout passes
    /// or the peer closes first.
    pub fn read_reply(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_frame_into(&mut out)?;
        Ok(out)
    }

    fn read_frame_into(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let start = out.len();
        let mut byte = [0u8; 1];
        while !out.ends_with(b"\r\n") || out.len() < start + 3 {
            self.stream.read_exact(&mut byte)?;
            out.push(byte[0]);
        }
        let line = &out[start..out.len() - 2];
        let count = || -> std::io::Result<i64> {
            std::str::from_utf8(&line[1..])
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad reply line {line:?}")))
        };
        match line[0] {
            // Bulk string; RESP3's blob error and verbatim string.
            b'$' | b'!' | b'=' => {
                if let Ok(len) = usize::try_from(count()?) {
                    let mut body = vec![0u8; len + 2];
                    self.stream.read_exact(&mut body)?;
                    out.extend_from_slice(&body);
                }
            }
            // Array; RESP3's set and push.
            b'*' | b'~' | b'>' => {
                for _ in 0..count()?.max(0) {
                    self.read_frame_into(out)?;
                }
            }
            // RESP3's map: keys and values.
            b'%' => {
                for _ in 0..count()?.max(0) * 2 {
                    self.read_frame_into(out)?;
                }
            }
            // RESP3's attribute: its pairs, then the reply it describes.
            b'|' => {
                for _ in 0..count()?.max(0) * 2 + 1 {
                    self.read_frame_into(out)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends one command (arguments as RESP bulk strings) and reads its whole reply.
    pub fn call(&mut self, args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
        }
        self.send(out.as_bytes());
        self.read_reply().expect("a reply")
    }
}

/// The `[pool]` config of a test: servers named `s0`, `s1`, ... in the order given, with
/// extra `[pool]` lines (`"timeout = \"200ms\""`).
pub fn config_toml(servers: &[&RedisServer], pool_extra: &str) -> String {
    let mut t = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n[pool]\n",
        admin_token_file()
    );
    t.push_str(pool_extra);
    t.push('\n');
    for (i, s) in servers.iter().enumerate() {
        t.push_str(&format!(
            "[[pool.servers]]\nname = \"s{i}\"\naddr = \"{}\"\n",
            s.addr_string()
        ));
    }
    t
}

/// The admin bearer token of the test configs (see [`config_toml`]).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A file holding [`ADMIN_TOKEN`], written once per test process.
pub fn admin_token_file() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("keyway-test-admin-token-{}", std::process::id()));
        std::fs::write(&path, format!("{ADMIN_TOKEN}\n")).expect("write the admin token file");
        path.to_string_lossy().into_owned()
    })
}

/// The `Authorization` header value that admin mutations need in the test configs.
pub fn bearer() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

/// Keyway running inside the test process on its own runtime; stopped on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    /// The TLS client address (`tls_listen`), when the config has one.
    pub tls_addr: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub shared: std::sync::Arc<keyway::server::Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Keyway over `servers` (named `s0`, `s1`, ...) with default settings.
    pub fn start(servers: &[&RedisServer]) -> Proxy {
        Self::start_toml(&config_toml(servers, ""))
    }

    /// Keyway on a full TOML config, without waiting for its server connections (for servers
    /// that cannot be reached, or refuse it).
    pub fn start_toml_no_wait(toml: &str) -> Proxy {
        let config =
            keyway::config::Config::from_toml_with_env(toml, std::path::Path::new("test.toml"))
                .expect("test config is valid");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let running = runtime
            .block_on(keyway::server::start(&config))
            .expect("keyway starts");
        Proxy {
            addr: running.addr,
            tls_addr: running.tls_addr,
            admin: running.admin_addr,
            shared: running.shared,
            runtime: Some(runtime),
        }
    }

    /// Keyway on a full TOML config (its `listen` should be `127.0.0.1:0`).
    pub fn start_toml(toml: &str) -> Proxy {
        let proxy = Self::start_toml_no_wait(toml);
        // Ready when every server connection is up (the pool connects eagerly).
        let topo = proxy.shared.topology.load();
        let want: u64 = topo
            .servers
            .iter()
            .map(|_| topo.config.connections as u64)
            .sum();
        wait_until(Duration::from_secs(5), || {
            topo.servers
                .iter()
                .map(|s| s.pool.open_connections())
                .sum::<u64>()
                >= want
        });
        proxy
    }

    /// Runs a future on Keyway's runtime (to call library functions in its context).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.as_ref().expect("runtime").block_on(f)
    }

    /// A synchronous redis-rs connection through Keyway.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(format!("redis://{}/", self.addr))
            .and_then(|c| c.get_connection())
            .expect("connect to keyway")
    }

    /// The current `/metrics` text.
    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").1
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A minimal HTTP/1.1 request over std TCP: returns (status code, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(addr, method, path, body, &[])
}

/// As [`http`], with extra headers (`("Authorization", "Bearer ...")`).
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: keyway\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write request");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `GET` on the admin port.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, "")
}

/// The value of one series in Prometheus text (`name{labels}` exactly as exported), or `None`
/// when the text has no such series. Never a default: a test that waits for a series to read 0
/// must fail when the series is renamed or no longer exported, not pass on its absence.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// Keyway as a child process (the real binary), for signals and logs; killed on drop.
pub struct ProxyProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts `keyway serve` on a config whose `listen` and `admin` are replaced by free ports.
    pub fn start(toml: &str, extra_args: &[&str]) -> ProxyProcess {
        Self::start_env(toml, extra_args, &[])
    }

    /// As [`ProxyProcess::start`], with extra environment variables (`KW_FAILPOINT`).
    ///
    /// A free port can be taken by another process between `free_port` and Keyway's bind: then
    /// Keyway exits with "Address already in use" and is started again on new ports.
    pub fn start_env(toml: &str, extra_args: &[&str], envs: &[(&str, &str)]) -> ProxyProcess {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = tempfile::tempdir().expect("temp dir");
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let toml = toml
                .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\""))
                .replace("admin = \"127.0.0.1:0\"", &format!("admin = \"{admin}\""));
            let path = dir.path().join("keyway.toml");
            std::fs::write(&path, toml).expect("write config");
            match Self::launch(dir, &path, addr, admin, extra_args, envs) {
                Ok(p) => return p,
                Err(log) if attempt < 5 && log.contains("Address already in use") => {}
                Err(log) => panic!("keyway did not become ready: {log}"),
            }
        }
    }

    /// Starts `keyway serve --config PATH` on a config file the test placed itself (its
    /// `listen` and `admin` must be the given addresses).
    pub fn start_path(
        path: &std::path::Path,
        addr: SocketAddr,
        admin: SocketAddr,
        extra_args: &[&str],
    ) -> ProxyProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::launch(dir, path, addr, admin, extra_args, &[])
            .unwrap_or_else(|log| panic!("keyway did not become ready: {log}"))
    }

    /// Spawns the binary (its stderr into `dir`) and waits until `/readyz` says ready; the
    /// log of a Keyway that exited or did not become ready (it is killed on drop).
    fn launch(
        dir: tempfile::TempDir,
        path: &std::path::Path,
        addr: SocketAddr,
        admin: SocketAddr,
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<ProxyProcess, String> {
        let child = Command::new(env!("CARGO_BIN_EXE_keyway"))
            .args(["serve", "--config", path.to_str().expect("utf-8 path")])
            .args(extra_args)
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("log file"))
            .spawn()
            .expect("spawn keyway");
        let p = ProxyProcess {
            child,
            addr,
            admin,
            dir,
        };
        let mut p = p;
        let mut exited = false;
        let up = wait_until(Duration::from_secs(10), || {
            exited = matches!(p.child.try_wait(), Ok(Some(_)));
            exited || (TcpStream::connect(p.admin).is_ok() && http_get(p.admin, "/readyz").0 == 200)
        });
        if up && !exited {
            Ok(p)
        } else {
            Err(p.log())
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits up to `limit` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A key whose slot's primary (first server of its ranking) is server `index` (servers named
/// s0, s1, ... sort like their indexes).
pub fn key_on(proxy: &Proxy, index: usize, prefix: &str) -> String {
    keys_on(proxy, index, prefix, 1).remove(0)
}

/// `n` keys whose slot's primary is server `index`.
pub fn keys_on(proxy: &Proxy, index: usize, prefix: &str, n: usize) -> Vec<String> {
    let topo = proxy.shared.topology.load();
    (0..1_000_000)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| {
            let slot = keyway::routing::key_slot(k.as_bytes(), topo.hash_tag);
            usize::from(topo.table.primary(slot)) == index
        })
        .take(n)
        .collect()
}

/// The servers (indexes) holding `key`'s slot, primary first, per the topology.
pub fn replica_set(proxy: &Proxy, key: &str) -> Vec<usize> {
    let topo = proxy.shared.topology.load();
    let slot = keyway::routing::key_slot(key.as_bytes(), topo.hash_tag);
    topo.replica_set(slot)
        .iter()
        .map(|&i| usize::from(i))
        .collect()
}

/// `INFO commandstats` calls of one command on a server (0 if never called).
pub fn command_calls(server: &RedisServer, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.client())
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
