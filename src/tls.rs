//! TLS with rustls (ring), both ways: Keyway as a TLS server to its clients ([`Acceptor`],
//! `tls_listen` and `[tls]`) and as a TLS client to the redis-servers ([`Connector`],
//! `[pool.tls]`), and the one stream type both give ([`Stream`]).
//!
//! # Certificate files are re-read when they change
//!
//! An [`Acceptor`] or a [`Connector`] holds the files it was made from and what they looked
//! like (size, modification time, inode) when it last read them. Each new handshake asks for
//! the current configuration ([`Acceptor::current`], [`Connector::current`]), which looks at the
//! files again (a `stat` each) and, when one changed, reads them all and builds a new rustls
//! configuration. Connections already established keep theirs; new handshakes take the new
//! one. A changed set that does not load (a half-written file, a key that does not match the
//! certificate) is logged and the previous configuration stays in use until the files load
//! again, as a password file that cannot be read keeps the last password
//! ([`crate::credentials`]). A Kubernetes Secret mounted as a volume is updated by swapping a
//! symlink: `stat` follows it, so the swap shows as a new inode.
//!
//! # What is verified
//!
//! Towards the servers: the server's certificate chain up to `ca_file`'s certificates, its
//! validity dates, and its name (`server_name`, by default the host part of the server's
//! address; an IP address must then be in the certificate's IP SANs). `insecure_skip_verify`
//! turns all of that off (the connection is encrypted, and anyone in the path can read it);
//! it is logged as a warning when the configuration is loaded and at every reload.
//!
//! Towards clients: with `client_ca_file`, a client must present a certificate that chains up
//! to it and is within its validity dates (mutual TLS); a client without one is refused during
//! the handshake.
//!
//! # Writes go all the way out
//!
//! `tokio-rustls` may accept plaintext, encrypt it, fail to write all of the records (the
//! socket is full) and still report the plaintext as written: the rest goes out at the next
//! write or flush. Keyway's sessions and server connections wait for a reply after a write,
//! not for a flush, so [`Stream`]'s `poll_write` reports bytes as written only once their
//! records are all on the socket (it keeps the count of bytes taken and answers `Pending` until
//! then; the caller writes the same bytes again, as `AsyncWrite` callers do after `Pending`,
//! and gets that count).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The most a certificate, key or CA file may hold.
const MAX_FILE: u64 = 1024 * 1024;

/// Why TLS material could not be loaded. Names files, never their content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{what} {path} cannot be read: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file holds no usable PEM item of the kind expected.
    #[error("{what} {path}: {message}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    /// rustls refused the material (a key that does not match its certificate, say).
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    /// Settings that do not go together.
    #[error("{0}")]
    Settings(String),
}

/// The ring provider: it builds with a C compiler alone (aws-lc-rs wants more tooling), and
/// its key exchange groups (X25519, P-256, P-384) are what redis-server and Redis clients offer.
#[allow(
    deprecated,
    reason = "rustls 0.23.48 deprecates ring's provider for its lack of post-quantum key exchange, which Redis peers do not offer yet"
)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let err = |source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    if !file.metadata().map_err(err)?.is_file() {
        return Err(err(io::Error::other("not a regular file")));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(err(io::Error::other(format!(
            "larger than {MAX_FILE} bytes"
        ))));
    }
    Ok(bytes)
}

/// The certificates of a PEM file (a chain, or a CA bundle).
fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(what, path)?;
    let pem = |message: String| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        message: format!("holds no usable PEM private key ({e})"),
    })
}

fn roots(what: &'static str, path: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in certs(what, path)? {
        store
            .add(cert)
            .map_err(|source| TlsError::Rustls { what, source })?;
    }
    Ok(Arc::new(store))
}

/// What a file looked like when it was read: a change of any of these is a change of file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        inode: m.ino(),
    })
}

/// A rustls configuration built from files, rebuilt when they change (see the module docs).
struct Reloading<T> {
    /// Which side, for log lines: "tls" or "pool.tls".
    section: &'static str,
    files: Vec<PathBuf>,
    state: Mutex<Loaded<T>>,
}

struct Loaded<T> {
    stamps: Vec<Option<Stamp>>,
    config: Arc<T>,
    /// The last reload failed (logged once per failure streak).
    failing: bool,
}

impl<T> Reloading<T> {
    fn new(
        section: &'static str,
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError>,
    ) -> Result<Reloading<T>, TlsError> {
        let stamps = files.iter().map(|f| stamp(f)).collect();
        let config = Arc::new(build()?);
        Ok(Reloading {
            section,
            files,
            state: Mutex::new(Loaded {
                stamps,
                config,
                failing: false,
            }),
        })
    }

    /// The configuration for a handshake starting now: rebuilt first if a file changed.
    fn current(&self, build: impl Fn() -> Result<T, TlsError>) -> Arc<T> {
        let stamps: Vec<_> = self.files.iter().map(|f| stamp(f)).collect();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if stamps != state.stamps {
            state.stamps = stamps;
            match build() {
                Ok(config) => {
                    state.config = Arc::new(config);
                    state.failing = false;
                    tracing::info!(section = self.section, files = ?self.files, "TLS files changed: reloaded; new handshakes use them");
                }
                Err(e) => {
                    if !state.failing {
                        tracing::warn!(section = self.section, error = %e, "TLS files changed but do not load: the previous certificates stay in use");
                    }
                    state.failing = true;
                }
            }
        }
        state.config.clone()
    }
}

/// Keyway's TLS server side (`[tls]`): its certificate and key, and the CA its clients'
/// certificates must chain to (mutual TLS), if any.
pub struct Acceptor {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    configs: Reloading<rustls::ServerConfig>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("client_ca_file", &self.client_ca_file)
            .finish()
    }
}

impl Acceptor {
    /// Loads the certificate, key and client CA.
    ///
    /// # Errors
    ///
    /// [`TlsError`] when a file cannot be read or parsed, or the key does not match.
    pub fn new(
        cert_file: PathBuf,
        key_file: PathBuf,
        client_ca_file: Option<PathBuf>,
    ) -> Result<Acceptor, TlsError> {
        let mut files = vec![cert_file.clone(), key_file.clone()];
        files.extend(client_ca_file.clone());
        let build = || build_server(&cert_file, &key_file, client_ca_file.as_deref());
        let configs = Reloading::new("tls", files, build)?;
        Ok(Acceptor {
            cert_file,
            key_file,
            client_ca_file,
            configs,
        })
    }

    /// Whether clients must present a certificate (a `client_ca_file` is set).
    pub fn mutual(&self) -> bool {
        self.client_ca_file.is_some()
    }

    /// The configuration a handshake starting now uses (files re-read if they changed).
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.configs.current(|| {
            build_server(
                &self.cert_file,
                &self.key_file,
                self.client_ca_file.as_deref(),
            )
        })
    }

    /// Runs the server side of a handshake on `tcp`.
    ///
    /// # Errors
    ///
    /// The handshake failed: plaintext or garbage, a client certificate missing or not
    /// trusted, no protocol version in common, the connection lost.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<Stream> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current());
        let tls = acceptor.accept(tcp).await?;
        Ok(Stream::new(Inner::Server(Box::new(tls))))
    }
}

fn build_server(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    let chain = certs("tls.cert_file", cert_file)?;
    let key = key("tls.key_file", key_file)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "tls",
            source,
        })?;
    let builder = match client_ca_file {
        Some(ca) => {
            let roots = roots("tls.client_ca_file", ca)?;
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| TlsError::Settings(format!("tls.client_ca_file: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rustls {
            what: "tls.cert_file and tls.key_file",
            source,
        })
}

/// Keyway's TLS client side towards the servers (`[pool.tls]`).
pub struct Connector {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    insecure_skip_verify: bool,
    configs: Reloading<rustls::ClientConfig>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

impl Connector {
    /// Loads the CA and the client certificate, if any.
    ///
    /// # Errors
    ///
    /// [`TlsError`] when a file cannot be read or parsed, the key does not match, only one of
    /// `cert_file` and `key_file` is set, or neither `ca_file` nor `insecure_skip_verify` is.
    pub fn new(
        ca_file: Option<PathBuf>,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
        insecure_skip_verify: bool,
    ) -> Result<Connector, TlsError> {
        if cert_file.is_some() != key_file.is_some() {
            return Err(TlsError::Settings(
                "pool.tls: cert_file and key_file go together (a client certificate and its key)"
                    .into(),
            ));
        }
        if ca_file.is_none() && !insecure_skip_verify {
            return Err(TlsError::Settings(
                "pool.tls: set ca_file (the CA the servers' certificates chain to), or insecure_skip_verify = true to verify nothing".into(),
            ));
        }
        let files: Vec<PathBuf> = [&ca_file, &cert_file, &key_file]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let build = || {
            build_client(
                ca_file.as_deref(),
                cert_file.as_deref(),
                key_file.as_deref(),
                insecure_skip_verify,
            )
        };
        let configs = Reloading::new("pool.tls", files, build)?;
        Ok(Connector {
            ca_file,
            cert_file,
            key_file,
            insecure_skip_verify,
            configs,
        })
    }

    /// Whether the servers' certificates go unverified (`insecure_skip_verify`).
    pub fn insecure(&self) -> bool {
        self.insecure_skip_verify
    }

    /// The configuration a handshake starting now uses (files re-read if they changed).
    pub fn current(&self) -> Arc<rustls::ClientConfig> {
        self.configs.current(|| {
            build_client(
                self.ca_file.as_deref(),
                self.cert_file.as_deref(),
                self.key_file.as_deref(),
                self.insecure_skip_verify,
            )
        })
    }

    /// Runs the client side of a handshake on `tcp`, for a server named `name`.
    ///
    /// # Errors
    ///
    /// The handshake failed: a certificate not trusted, expired or for another name, a
    /// server that does not speak TLS, the connection lost.
    pub async fn connect(&self, name: ServerName<'static>, tcp: TcpStream) -> io::Result<Stream> {
        let connector = tokio_rustls::TlsConnector::from(self.current());
        let tls = connector.connect(name, tcp).await?;
        Ok(Stream::new(Inner::Client(Box::new(tls))))
    }
}

fn build_client(
    ca_file: Option<&Path>,
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
    insecure_skip_verify: bool,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "pool.tls",
            source,
        })?;
    let builder = if insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        let ca = ca_file.ok_or_else(|| TlsError::Settings("pool.tls: no ca_file".into()))?;
        let roots = roots("pool.tls.ca_file", ca)?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| TlsError::Settings(format!("pool.tls.ca_file: {e}")))?;
        builder.with_webpki_verifier(verifier)
    };
    match (cert_file, key_file) {
        (Some(cert), Some(key_path)) => {
            let chain = certs("pool.tls.cert_file", cert)?;
            let key = key("pool.tls.key_file", key_path)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| TlsError::Rustls {
                    what: "pool.tls.cert_file and pool.tls.key_file",
                    source,
                })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// `insecure_skip_verify`: accepts any certificate, checking only that the handshake's
/// signatures are made with the key it holds.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The name a server's certificate must carry: `server_name` if set, else the host part of
/// its `host:port` address (an IP address is checked against the certificate's IP SANs).
///
/// # Errors
///
/// The name is not a valid DNS name or IP address.
pub fn server_name(server_name: Option<&str>, addr: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match server_name {
        Some(name) => name,
        None => addr
            .rsplit_once(':')
            .map(|(host, _)| host)
            .unwrap_or(addr)
            .trim_start_matches('[')
            .trim_end_matches(']'),
    };
    ServerName::try_from(host.to_string()).map_err(|e| {
        TlsError::Settings(format!(
            "pool.tls.server_name: '{host}' is not a DNS name or an IP address ({e})"
        ))
    })
}

/// TLS towards one server: the pool's connector and the name that server's certificate must
/// carry.
#[derive(Clone)]
pub struct ServerTls {
    connector: Arc<Connector>,
    name: ServerName<'static>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("connector", &self.connector)
            .field("name", &self.name)
            .finish()
    }
}

impl ServerTls {
    /// TLS with `connector`, checking that the certificate is for `name`.
    pub fn new(connector: Arc<Connector>, name: ServerName<'static>) -> ServerTls {
        ServerTls { connector, name }
    }
}

/// Opens a connection to a server at `addr` (`host:port`): TCP (no Nagle), then the TLS
/// handshake when `tls` is set, all within `timeout`. Every connection Keyway opens to a server
/// comes from here: forwarding, health probes, two-phase, sweeps, blocking and pub/sub.
///
/// # Errors
///
/// Why it failed, for logs, health reasons and client errors: a refused or timed-out connect,
/// a certificate not trusted, expired or for another name (rustls's words, prefixed with
/// `TLS handshake failed`).
pub async fn dial(
    addr: &str,
    timeout: std::time::Duration,
    tls: Option<&ServerTls>,
) -> Result<Conn, String> {
    let open = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        match tls {
            None => Ok(Conn::Plain(tcp)),
            Some(tls) => tls
                .connector
                .connect(tls.name.clone(), tcp)
                .await
                .map(|s| Conn::Tls(Box::new(s)))
                .map_err(|e| format!("TLS handshake failed: {e}")),
        }
    };
    match tokio::time::timeout(timeout, open).await {
        Ok(result) => result,
        Err(_) => Err(format!("connect timed out after {timeout:?}")),
    }
}

/// A connection to a server: plain TCP or TLS.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<Stream>),
}

impl Conn {
    /// The TCP connection under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.tcp(),
        }
    }

    /// Whether a kept idle connection is still quiet: nothing to read (the server sent
    /// nothing, not even a close).
    pub fn is_quiet(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.tcp().try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Splits it into halves that a reader and a writer own.
    pub fn into_split(self) -> (ConnRead, ConnWrite) {
        match self {
            Conn::Plain(s) => {
                let (r, w) = s.into_split();
                (ConnRead::Plain(r), ConnWrite::Plain(w))
            }
            Conn::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ConnRead::Tls(r), ConnWrite::Tls(w))
            }
        }
    }
}

/// The reading half of a [`Conn`].
pub enum ConnRead {
    /// Plain TCP.
    Plain(tokio::net::tcp::OwnedReadHalf),
    /// TLS.
    Tls(tokio::io::ReadHalf<Stream>),
}

/// The writing half of a [`Conn`].
pub enum ConnWrite {
    /// Plain TCP.
    Plain(tokio::net::tcp::OwnedWriteHalf),
    /// TLS.
    Tls(tokio::io::WriteHalf<Stream>),
}

macro_rules! delegate_read {
    ($t:ty, $($v:ident),+) => {
        impl AsyncRead for $t {
            #[inline]
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($t:ty, $($v:ident),+) => {
        impl AsyncWrite for $t {
            #[inline]
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }
            #[inline]
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_flush(cx),)+
                }
            }
            #[inline]
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$v(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

impl ConnWrite {
    /// Writes what the socket takes now, without waiting: `WouldBlock` when it takes nothing.
    ///
    /// # Errors
    ///
    /// The socket failed, or (`WouldBlock`) would have to wait.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ConnWrite::Plain(w) => w.try_write(buf),
            ConnWrite::Tls(w) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match Pin::new(w).poll_write(&mut cx, buf) {
                    Poll::Ready(result) => result,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }
}

delegate_read!(Conn, Plain, Tls);
delegate_write!(Conn, Plain, Tls);
delegate_read!(ConnRead, Plain, Tls);
delegate_write!(ConnWrite, Plain, Tls);

enum Inner {
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A TLS connection over TCP, either side. Writes are reported only once their records are on
/// the socket (see the module docs).
pub struct Stream {
    inner: Inner,
    /// Plaintext bytes taken by the last `poll_write` whose records are not all written yet.
    taken: usize,
}

impl Stream {
    fn new(inner: Inner) -> Stream {
        Stream { inner, taken: 0 }
    }

    /// The TCP connection under it.
    pub fn tcp(&self) -> &TcpStream {
        match &self.inner {
            Inner::Client(s) => s.get_ref().0,
            Inner::Server(s) => s.get_ref().0,
        }
    }

    /// Whether the peer presented a certificate that was verified (a client, under mutual
    /// TLS; a server, always unless `insecure_skip_verify`).
    pub fn peer_verified(&self) -> bool {
        match &self.inner {
            Inner::Client(s) => s.get_ref().1.peer_certificates().is_some(),
            Inner::Server(s) => s.get_ref().1.peer_certificates().is_some(),
        }
    }

    /// The negotiated protocol version, for logs (`TLSv1_3`).
    pub fn version(&self) -> Option<rustls::ProtocolVersion> {
        match &self.inner {
            Inner::Client(s) => s.get_ref().1.protocol_version(),
            Inner::Server(s) => s.get_ref().1.protocol_version(),
        }
    }

    /// Ready when a read would not wait: plaintext already decrypted and buffered, the peer's
    /// close, or bytes on the socket.
    ///
    /// # Errors
    ///
    /// The buffered records are not valid TLS, or the socket failed.
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let state = match &mut self.inner {
            Inner::Client(s) => s.get_mut().1.process_new_packets(),
            Inner::Server(s) => s.get_mut().1.process_new_packets(),
        };
        match state {
            Ok(s) if s.plaintext_bytes_to_read() > 0 || s.peer_has_closed() => Poll::Ready(Ok(())),
            Ok(_) => self.tcp().poll_read_ready(cx),
            Err(e) => Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
        }
    }

    /// Whether a kept idle connection is still quiet: nothing to read on the socket (the peer
    /// sent nothing, not even a close).
    pub fn is_quiet(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.tcp().try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    fn pin_inner(&mut self) -> Pin<&mut (dyn AsyncReadWrite + Unpin)> {
        match &mut self.inner {
            Inner::Client(s) => Pin::new(&mut **s),
            Inner::Server(s) => Pin::new(&mut **s),
        }
    }

    fn take_plaintext(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Client(s) => s.get_mut().1.writer().write(buf),
            Inner::Server(s) => s.get_mut().1.writer().write(buf),
        }
    }
}

trait AsyncReadWrite: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite> AsyncReadWrite for T {}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().pin_inner().poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.taken == 0 {
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            // Everything earlier is on the socket (see below), so rustls has room.
            this.taken = this.take_plaintext(buf)?;
        }
        // The records of what was taken, all of them, before it counts as written.
        ready!(this.pin_inner().poll_flush(cx))?;
        Poll::Ready(Ok(std::mem::take(&mut this.taken)))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().pin_inner().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().pin_inner().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_defaults_to_the_host_of_the_address() {
        let n = server_name(None, "redis-0.redis:6379").unwrap();
        assert_eq!(n.to_str(), "redis-0.redis");
        let n = server_name(None, "127.0.0.1:6379").unwrap();
        assert_eq!(n.to_str(), "127.0.0.1");
        let n = server_name(None, "[::1]:6379").unwrap();
        assert_eq!(n.to_str(), "::1");
        let n = server_name(Some("cache.internal"), "10.0.0.1:6379").unwrap();
        assert_eq!(n.to_str(), "cache.internal");
        assert!(server_name(Some("not a name"), "x:1").is_err());
    }

    #[test]
    fn a_connector_needs_a_ca_or_an_explicit_skip() {
        let e = Connector::new(None, None, None, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ca_file") && e.contains("insecure_skip_verify"),
            "{e}"
        );
        let e = Connector::new(None, Some("c".into()), None, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("go together"), "{e}");
        assert!(Connector::new(None, None, None, true).is_ok());
    }

    /// A certificate for 127.0.0.1 and its key, self-signed, written to `cert` and `key`.
    fn write_self_signed(cert: &Path, key: &Path, name: &str) {
        let pair = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let pem = params.self_signed(&pair).unwrap().pem();
        std::fs::write(key, pair.serialize_pem()).unwrap();
        std::fs::write(cert, pem).unwrap();
    }

    #[test]
    fn changed_files_are_reloaded_and_broken_ones_keep_the_last_good_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        write_self_signed(&cert, &key, "one");
        let acceptor = Acceptor::new(cert.clone(), key.clone(), None).unwrap();
        let first = acceptor.current();
        // Unchanged files: the same configuration, nothing rebuilt.
        assert!(Arc::ptr_eq(&first, &acceptor.current()));
        // New files (a rename, as a Secret's symlink swap gives a new inode).
        let (cert2, key2) = (dir.path().join("c2.pem"), dir.path().join("k2.pem"));
        write_self_signed(&cert2, &key2, "two");
        std::fs::rename(&key2, &key).unwrap();
        std::fs::rename(&cert2, &cert).unwrap();
        let second = acceptor.current();
        assert!(!Arc::ptr_eq(&first, &second));
        // A broken certificate (half written): the last good configuration stays.
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
        assert!(Arc::ptr_eq(&second, &acceptor.current()));
        // A key that does not match its certificate: refused at load, kept at reload.
        write_self_signed(&cert2, &key2, "three");
        std::fs::rename(&cert2, &cert).unwrap();
        assert!(Arc::ptr_eq(&second, &acceptor.current()));
        let e = Acceptor::new(cert.clone(), key.clone(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.cert_file and tls.key_file"), "{e}");
        // Once the pair matches again, it is taken.
        std::fs::rename(&key2, &key).unwrap();
        assert!(!Arc::ptr_eq(&second, &acceptor.current()));
    }

    #[test]
    fn files_that_are_not_pem_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let e = Acceptor::new(path.clone(), path.clone(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.cert_file") && e.contains("cert.pem"), "{e}");
        let e = Acceptor::new(dir.path().join("missing"), path, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be read"), "{e}");
    }
}
