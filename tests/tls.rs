//! TLS both ways, against real peers: `redis-cli --tls` and a rustls client through Keyway's
//! `tls_listen`, and Keyway towards redis-server's own `--tls-port`. Certificates (a CA, server
//! and client certificates, expired ones) are made at test time with rcgen.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use support::{free_port, http_get, metric, wait_until, Proxy, RedisServer};

/// A test CA and the files it signs, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

#[derive(Clone, Copy)]
enum Validity {
    Now,
    Expired,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `sans` (server and client use) and its key, written as `name.pem`
    /// and `name.key`; returns (certificate file, key file, certificate PEM).
    fn leaf(&self, name: &str, sans: &[&str], validity: Validity) -> (PathBuf, PathBuf, String) {
        let cert = self.dir.path().join(format!("{name}.pem"));
        let key = self.dir.path().join(format!("{name}.key"));
        let pem = self.write_leaf(&cert, &key, name, sans, validity);
        (cert, key, pem)
    }

    /// Writes a new certificate and key to `cert` and `key`, each by a rename (as a mounted
    /// Secret changes).
    fn write_leaf(
        &self,
        cert: &Path,
        key: &Path,
        name: &str,
        sans: &[&str],
        validity: Validity,
    ) -> String {
        let key_pair = KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if let Validity::Expired = validity {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let pem = params.signed_by(&key_pair, &self.ca).unwrap().pem();
        let swap = |path: &Path, text: &str| {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        };
        swap(key, &key_pair.serialize_pem());
        swap(cert, &pem);
        pem
    }
}

fn toml_path(p: &Path) -> String {
    p.display().to_string()
}

/// A rustls client configuration trusting `pki`'s CA, with a client certificate if given.
#[allow(deprecated)]
fn client_config(pki: &Pki, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.ca_file()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client {
        Some((cert, key)) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    })
}

type TlsClient = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A blocking TLS connection to `addr` for the name `127.0.0.1`, handshake done.
fn tls_connect(config: Arc<rustls::ClientConfig>, addr: SocketAddr) -> std::io::Result<TlsClient> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Sends `request` and reads its reply: a simple one (`+`, `-`, `:`) or a bulk string.
fn call(tls: &mut TlsClient, request: &[u8]) -> std::io::Result<Vec<u8>> {
    tls.write_all(request)?;
    tls.flush()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let lines = reply.windows(2).filter(|w| w == b"\r\n").count();
        let whole = match reply.first() {
            Some(b'$') if !reply.starts_with(b"$-1") => lines >= 2,
            Some(_) => lines >= 1,
            None => false,
        };
        if whole {
            return Ok(reply);
        }
        let n = tls.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        reply.extend_from_slice(&buf[..n]);
    }
}

/// The certificate the peer presented, DER.
fn peer_cert(tls: &TlsClient) -> Vec<u8> {
    tls.conn.peer_certificates().unwrap()[0].to_vec()
}

/// `redis-cli` with `args`; returns (success, stdout + stderr).
fn redis_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.trim().to_string())
}

/// Keyway with `tls_listen` on loopback over `servers`, `[tls]` lines as given.
fn keyway_tls(servers: &[&RedisServer], tls: &str, top: &str) -> Proxy {
    let mut toml = support::config_toml(servers, "");
    toml = format!("tls_listen = \"127.0.0.1:0\"\n{top}\n{toml}\n[tls]\n{tls}\n");
    Proxy::start_toml(&toml)
}

fn tls_section(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\n{extra}",
        toml_path(cert),
        toml_path(key)
    )
}

#[test]
fn redis_cli_speaks_tls_to_keyway_and_replies_match_redis_server() {
    let pki = Pki::new("keyway");
    let (cert, key, _) = pki.leaf("keyway", &["127.0.0.1", "localhost"], Validity::Now);
    let (s0, s1) = (RedisServer::start(), RedisServer::start());
    let proxy = keyway_tls(&[&s0, &s1], &tls_section(&cert, &key, ""), "");
    let tls_port = proxy.tls_addr.unwrap().port().to_string();
    let ca = toml_path(&pki.ca_file());
    let cli = |args: &[&str]| {
        let mut all = vec!["--tls", "--cacert", &ca, "-h", "127.0.0.1", "-p", &tls_port];
        all.extend_from_slice(args);
        redis_cli(&all)
    };
    assert_eq!(cli(&["SET", "tls:k", "v1"]), (true, "OK".to_string()));
    assert_eq!(cli(&["GET", "tls:k"]), (true, "v1".to_string()));
    // The plain listener stays, and sees the same data.
    let mut plain = proxy.client();
    let v: String = redis::cmd("GET").arg("tls:k").query(&mut plain).unwrap();
    assert_eq!(v, "v1");

    // Byte for byte against redis-server, through a rustls client: a pipeline of replies of
    // several shapes, and an error.
    let mut tls = tls_connect(client_config(&pki, None), proxy.tls_addr.unwrap()).unwrap();
    let mut direct = support::RawClient::connect(s0.addr());
    for request in [
        &b"*3\r\n$3\r\nSET\r\n$5\r\ntls:a\r\n$3\r\nabc\r\n"[..],
        b"*2\r\n$3\r\nGET\r\n$5\r\ntls:a\r\n",
        b"*2\r\n$4\r\nINCR\r\n$5\r\ntls:a\r\n",
        b"*2\r\n$3\r\nGET\r\n$9\r\ntls:nokey\r\n",
    ] {
        let through = call(&mut tls, request).unwrap();
        direct.send(request);
        let expected = direct.read_reply().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&through),
            String::from_utf8_lossy(&expected)
        );
    }
    // A large value crosses many TLS records both ways.
    let big = "x".repeat(300_000);
    let set = format!("*3\r\n$3\r\nSET\r\n$7\r\ntls:big\r\n$300000\r\n{big}\r\n");
    assert_eq!(call(&mut tls, set.as_bytes()).unwrap(), b"+OK\r\n");
    let got = call(&mut tls, b"*2\r\n$3\r\nGET\r\n$7\r\ntls:big\r\n").unwrap();
    assert_eq!(got, format!("$300000\r\n{big}\r\n").into_bytes());
    assert_eq!(cli(&["STRLEN", "tls:big"]), (true, "300000".to_string()));
}

#[test]
fn mutual_tls_refuses_clients_without_a_trusted_certificate() {
    let pki = Pki::new("keyway");
    let other = Pki::new("stranger");
    let (cert, key, _) = pki.leaf("keyway", &["127.0.0.1"], Validity::Now);
    let (ccert, ckey, _) = pki.leaf("client", &["client.test"], Validity::Now);
    let (xcert, xkey, _) = pki.leaf("expired-client", &["client.test"], Validity::Expired);
    let (scert, skey, _) = other.leaf("stranger", &["client.test"], Validity::Now);
    let s0 = RedisServer::start();
    let client_ca = format!("client_ca_file = \"{}\"", toml_path(&pki.ca_file()));
    let proxy = keyway_tls(&[&s0], &tls_section(&cert, &key, &client_ca), "");
    let addr = proxy.tls_addr.unwrap();

    let mut ok = tls_connect(client_config(&pki, Some((&ccert, &ckey))), addr).unwrap();
    assert_eq!(call(&mut ok, b"PING\r\n").unwrap(), b"+PONG\r\n");

    let failures_before = metric(
        &proxy.metrics(),
        "keyway_client_tls_handshake_failures_total",
    )
    .unwrap_or(0.0);
    // Without a certificate, with an expired one, with one from another CA: no reply, ever.
    // (Under TLS 1.3 the client learns it at its first read.)
    for (what, client) in [
        ("no certificate", None),
        ("expired", Some((xcert.as_path(), xkey.as_path()))),
        ("another CA", Some((scert.as_path(), skey.as_path()))),
    ] {
        let result = tls_connect(client_config(&pki, client), addr)
            .and_then(|mut tls| call(&mut tls, b"PING\r\n"));
        assert!(result.is_err(), "{what}: {result:?}");
    }
    let refused = wait_until(Duration::from_secs(10), || {
        metric(
            &proxy.metrics(),
            "keyway_client_tls_handshake_failures_total",
        )
        .unwrap_or(0.0)
            >= failures_before + 3.0
    });
    assert!(refused, "three failed handshakes counted");
    // redis-cli with the certificate too.
    let port = addr.port().to_string();
    let ca = toml_path(&pki.ca_file());
    let (c, k) = (toml_path(&ccert), toml_path(&ckey));
    let with = redis_cli(&[
        "--tls",
        "--cacert",
        &ca,
        "--cert",
        &c,
        "--key",
        &k,
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "PING",
    ]);
    assert_eq!(with, (true, "PONG".to_string()));
    // The first client was never disturbed.
    assert_eq!(call(&mut ok, b"PING\r\n").unwrap(), b"+PONG\r\n");
}

#[test]
fn plaintext_and_unfinished_handshakes_on_the_tls_port_are_closed() {
    let pki = Pki::new("keyway");
    let (cert, key, _) = pki.leaf("keyway", &["127.0.0.1"], Validity::Now);
    let s0 = RedisServer::start();
    let proxy = keyway_tls(
        &[&s0],
        &tls_section(&cert, &key, "handshake_timeout = \"500ms\""),
        "",
    );
    let addr = proxy.tls_addr.unwrap();
    let closed_within = |mut sock: TcpStream, limit: Duration| {
        sock.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 1024];
        // Whatever comes back (a TLS alert at most), the connection ends.
        loop {
            match sock.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => assert!(!buf[..n].starts_with(b"+"), "a RESP reply to plaintext"),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    };
    // Plaintext RESP: closed at once (a TLS alert, no reply).
    let mut plain = TcpStream::connect(addr).unwrap();
    plain.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    assert!(closed_within(plain, Duration::from_secs(10)));
    // Silence after connecting, and half a ClientHello: both cut after handshake_timeout.
    let silent = TcpStream::connect(addr).unwrap();
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();
    let started = std::time::Instant::now();
    assert!(closed_within(silent, Duration::from_secs(15)));
    assert!(closed_within(half, Duration::from_secs(15)));
    assert!(started.elapsed() < Duration::from_secs(15));
    let counted = wait_until(Duration::from_secs(10), || {
        metric(
            &proxy.metrics(),
            "keyway_client_tls_handshake_failures_total",
        )
        .unwrap_or(0.0)
            >= 3.0
    });
    assert!(counted);
    // None of it costs a client slot for long.
    assert!(wait_until(Duration::from_secs(10), || {
        metric(&proxy.metrics(), "keyway_client_connections").unwrap_or(1.0) == 0.0
    }));
    // The port still serves TLS clients.
    let mut tls = tls_connect(client_config(&pki, None), addr).unwrap();
    assert_eq!(call(&mut tls, b"PING\r\n").unwrap(), b"+PONG\r\n");
}

#[test]
fn a_rotated_certificate_serves_new_handshakes_and_connected_clients_stay() {
    let pki = Pki::new("keyway");
    let (cert, key, first) = pki.leaf("keyway", &["127.0.0.1"], Validity::Now);
    let s0 = RedisServer::start();
    let proxy = keyway_tls(&[&s0], &tls_section(&cert, &key, ""), "");
    let addr = proxy.tls_addr.unwrap();
    let config = client_config(&pki, None);
    let mut old = tls_connect(config.clone(), addr).unwrap();
    assert_eq!(call(&mut old, b"PING\r\n").unwrap(), b"+PONG\r\n");
    let first_der = peer_cert(&old);

    let second = pki.write_leaf(&cert, &key, "keyway-rotated", &["127.0.0.1"], Validity::Now);
    assert_ne!(first, second);
    let rotated = wait_until(Duration::from_secs(10), || {
        let new = tls_connect(config.clone(), addr).unwrap();
        peer_cert(&new) != first_der
    });
    assert!(rotated, "new handshakes present the new certificate");
    let mut new = tls_connect(config.clone(), addr).unwrap();
    assert_eq!(call(&mut new, b"PING\r\n").unwrap(), b"+PONG\r\n");
    // The client connected before the rotation is still served, on its old session.
    assert_eq!(call(&mut old, b"PING\r\n").unwrap(), b"+PONG\r\n");
    assert_eq!(peer_cert(&old), first_der);

    // A broken file (half written) is not taken: the last good certificate stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let mut after = tls_connect(config.clone(), addr).unwrap();
    assert_eq!(call(&mut after, b"PING\r\n").unwrap(), b"+PONG\r\n");
}

/// A redis-server that speaks TLS only (`--port 0 --tls-port P`), killed on drop. Its clients
/// need a certificate (redis-server's default `tls-auth-clients yes`).
struct TlsRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    /// Starts one and waits until it answers a verified TLS PING.
    fn start(pki: &Pki, cert: &Path, key: &Path, client: (&Path, &Path)) -> TlsRedis {
        let server = TlsRedis::spawn(pki, cert, key);
        let up = wait_until(Duration::from_secs(10), || {
            server.cli(pki, client, &["PING"]).1 == "PONG"
        });
        assert!(up, "redis-server with --tls-port answers");
        server
    }

    /// Starts one presenting `cert` and waits until its port accepts connections (no
    /// verification: `cert` may be one no client accepts).
    fn spawn(pki: &Pki, cert: &Path, key: &Path) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", dir.path().to_str().unwrap()])
            .args(["--logfile", dir.path().join("redis.log").to_str().unwrap()])
            .args(["--tls-cert-file", cert.to_str().unwrap()])
            .args(["--tls-key-file", key.to_str().unwrap()])
            .args(["--tls-ca-cert-file", pki.ca_file().to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let server = TlsRedis {
            child,
            port,
            _dir: dir,
        };
        let listening = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(listening, "redis-server listens on its --tls-port");
        server
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn cli(&self, pki: &Pki, client: (&Path, &Path), args: &[&str]) -> (bool, String) {
        let port = self.port.to_string();
        let ca = toml_path(&pki.ca_file());
        let (c, k) = (toml_path(client.0), toml_path(client.1));
        let mut all = vec![
            "--tls",
            "--cacert",
            &ca,
            "--cert",
            &c,
            "--key",
            &k,
            "-h",
            "127.0.0.1",
            "-p",
            &port,
        ];
        all.extend_from_slice(args);
        redis_cli(&all)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_pool_toml(servers: &[&TlsRedis], pool: &str, tls: &str) -> String {
    let mut t = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[pool]\ntimeout = \"2s\"\n{pool}\n[pool.health]\ninterval = \"200ms\"\ntimeout = \"1s\"\n[pool.tls]\n{tls}\n"
    );
    for (i, s) in servers.iter().enumerate() {
        t.push_str(&format!(
            "[[pool.servers]]\nname = \"s{i}\"\naddr = \"{}\"\n",
            s.addr()
        ));
    }
    t
}

#[test]
fn keyway_speaks_tls_to_redis_servers_for_forwarding_two_phase_blocking_and_pubsub() {
    let pki = Pki::new("redis");
    let (scert, skey, _) = pki.leaf("redis", &["127.0.0.1"], Validity::Now);
    let (ccert, ckey, _) = pki.leaf("keyway-client", &["keyway.test"], Validity::Now);
    let client = (ccert.as_path(), ckey.as_path());
    let s0 = TlsRedis::start(&pki, &scert, &skey, client);
    let s1 = TlsRedis::start(&pki, &scert, &skey, client);
    let tls = format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
        toml_path(&pki.ca_file()),
        toml_path(&ccert),
        toml_path(&ckey)
    );
    let proxy = Proxy::start_toml(&tls_pool_toml(
        &[&s0, &s1],
        "replicas = 2\nwrite = \"two_phase\"",
        &tls,
    ));
    let mut c = proxy.client();
    // Two-phase across both servers (prepare and commit scripts over TLS).
    let () = redis::cmd("MSET")
        .arg("tp:a")
        .arg("1")
        .arg("tp:b")
        .arg("2")
        .query(&mut c)
        .unwrap();
    let got: Vec<String> = redis::cmd("MGET")
        .arg("tp:a")
        .arg("tp:b")
        .query(&mut c)
        .unwrap();
    assert_eq!(got, vec!["1", "2"]);
    for s in [&s0, &s1] {
        assert_eq!(s.cli(&pki, client, &["GET", "tp:a"]), (true, "1".into()));
    }
    let n: i64 = redis::cmd("INCR").arg("tp:a").query(&mut c).unwrap();
    assert_eq!(n, 2);
    // Health probes over TLS: ready, both servers up.
    assert!(wait_until(Duration::from_secs(10), || http_get(
        proxy.admin,
        "/readyz"
    )
    .0 == 200));
    let topo = proxy.shared.topology.load();
    assert!(topo.servers.iter().all(|s| s.pool.health().is_up()));

    drop(c);
    drop(proxy);

    // Blocking commands take connections of their own (a lease), over TLS too (not under
    // two_phase, which refuses them).
    let proxy = Proxy::start_toml(&tls_pool_toml(&[&s0, &s1], "", &tls));
    let mut c = proxy.client();
    let url = proxy.url();
    let blocked = std::thread::spawn(move || {
        let mut b = redis::Client::open(url).unwrap().get_connection().unwrap();
        let got: (String, String) = redis::cmd("BLPOP")
            .arg("tp:q")
            .arg(10)
            .query(&mut b)
            .unwrap();
        got
    });
    assert!(wait_until(Duration::from_secs(10), || {
        let clients = s0.cli(&pki, client, &["CLIENT", "LIST"]).1;
        clients.contains("cmd=blpop")
            || s1
                .cli(&pki, client, &["CLIENT", "LIST"])
                .1
                .contains("cmd=blpop")
    }));
    let () = redis::cmd("LPUSH")
        .arg("tp:q")
        .arg("x")
        .query(&mut c)
        .map(|_: i64| ())
        .unwrap();
    assert_eq!(
        blocked.join().unwrap(),
        ("tp:q".to_string(), "x".to_string())
    );

    // Pub/sub: the subscriber connection is TLS too.
    let mut sub = proxy.client();
    sub.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut sub = sub.as_pubsub();
    sub.subscribe("tp:news").unwrap();
    let delivered = wait_until(Duration::from_secs(10), || {
        redis::cmd("PUBLISH")
            .arg("tp:news")
            .arg("hello")
            .query::<i64>(&mut c)
            .unwrap()
            == 1
    });
    assert!(delivered);
    let msg = sub.get_message().unwrap();
    assert_eq!(msg.get_payload::<String>().unwrap(), "hello");
}

#[test]
fn a_server_certificate_for_another_name_or_expired_marks_the_server_down_with_the_reason() {
    let pki = Pki::new("redis");
    let (ccert, ckey, _) = pki.leaf("keyway-client", &["keyway.test"], Validity::Now);
    let (good, good_key, _) = pki.leaf("redis", &["127.0.0.1"], Validity::Now);
    let (old, old_key, _) = pki.leaf("redis-expired", &["127.0.0.1"], Validity::Expired);
    let tls = |extra: &str| {
        format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}",
            toml_path(&pki.ca_file()),
            toml_path(&ccert),
            toml_path(&ckey)
        )
    };
    for (what, cert, key, extra, reason) in [
        (
            "wrong name",
            &good,
            &good_key,
            "server_name = \"cache.other.test\"",
            "not valid for name",
        ),
        ("expired", &old, &old_key, "", "expired"),
    ] {
        let s = TlsRedis::spawn(&pki, cert, key);
        let proxy = Proxy::start_toml_no_wait(&tls_pool_toml(&[&s], "", &tls(extra)));
        let down = wait_until(Duration::from_secs(15), || {
            let (code, body) = http_get(proxy.admin, "/readyz");
            code == 503 && body.contains("TLS handshake failed") && body.contains(reason)
        });
        assert!(down, "{what}: {:?}", http_get(proxy.admin, "/readyz"));
        let mut c = proxy.client();
        let e = redis::cmd("GET")
            .arg("k")
            .query::<Option<String>>(&mut c)
            .unwrap_err();
        assert!(e.to_string().contains("s0"), "{what}: {e}");
    }
}

/// An address of this machine other than loopback (where the route to a public address
/// leaves; no packet is sent), if it has one.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    probe
        .connect("192.0.2.200:9")
        .or_else(|_| probe.connect("8.8.8.8:53"))
        .ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn protected_mode_admits_a_remote_client_by_its_certificate_only() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("skipped: this machine has no address other than loopback");
        return;
    };
    let pki = Pki::new("keyway");
    let (cert, key, _) = pki.leaf("keyway", &["127.0.0.1"], Validity::Now);
    let (ccert, ckey, _) = pki.leaf("client", &["client.test"], Validity::Now);
    let s0 = RedisServer::start();
    let remote = |proxy: &Proxy| SocketAddr::new(ip, proxy.tls_addr.unwrap().port());
    let toml = |extra: &str| {
        format!(
            "tls_listen = \"0.0.0.0:0\"\n{}\n[tls]\n{}",
            support::config_toml(&[&s0], ""),
            tls_section(&cert, &key, extra)
        )
    };
    // Mutual TLS: a certificate admits a client from a non-loopback address; no certificate,
    // no handshake.
    let client_ca = format!("client_ca_file = \"{}\"", toml_path(&pki.ca_file()));
    let proxy = Proxy::start_toml(&toml(&client_ca));
    let mut admitted =
        tls_connect(client_config(&pki, Some((&ccert, &ckey))), remote(&proxy)).unwrap();
    assert_eq!(call(&mut admitted, b"PING\r\n").unwrap(), b"+PONG\r\n");
    let refused = tls_connect(client_config(&pki, None), remote(&proxy))
        .and_then(|mut tls| call(&mut tls, b"PING\r\n"));
    assert!(refused.is_err(), "{refused:?}");
    drop(proxy);
    // Without client_ca_file, TLS alone does not lift protected mode: -DENIED over TLS.
    let proxy = Proxy::start_toml(&toml(""));
    let mut denied = tls_connect(client_config(&pki, None), remote(&proxy)).unwrap();
    let reply = call(&mut denied, b"PING\r\n").unwrap();
    assert!(
        reply.starts_with(b"-DENIED "),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // From loopback it serves.
    let mut local = tls_connect(client_config(&pki, None), proxy.tls_addr.unwrap()).unwrap();
    assert_eq!(call(&mut local, b"PING\r\n").unwrap(), b"+PONG\r\n");
}
