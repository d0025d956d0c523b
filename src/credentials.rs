//! What Keyway authenticates to a server with, and the one type a password lives in.
//!
//! A password is a [`Secret`]: its `Debug` prints `"<redacted>"`, it has no `Display`, and it is
//! never serialized, so that no log line, `INFO`, `/topology`, `keyway check` output or config
//! dump can show it by accident; the only way to the bytes is [`Secret::expose`], called where
//! `AUTH` is written.
//!
//! A server's [`Credentials`] say where its password comes from: a file (`password_file`, read
//! again at every new connection, so that a rotated Kubernetes Secret applies at the next
//! reconnect; while the file cannot be read the last password read from it stays in use), or
//! the value of `KEYWAY_POOL__PASSWORD`, or nowhere (no `AUTH`). The data connections
//! ([`crate::backend`]) and the health prober ([`crate::health`]) of a server share one
//! `Credentials`, and so one last good password.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A password. Shown nowhere: `Debug` prints `"<redacted>"`, and nothing else formats it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: &str) -> Secret {
        Secret(Arc::from(value))
    }

    /// The password itself, for the one place that sends it (`AUTH`).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Takes any scalar (a string, and also a number or a boolean, which a password in a TOML file
/// may look like), so that a type error can never quote the value: whether a password may be
/// given where it was found is decided afterwards, by the config checks.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        struct Scalar;
        impl serde::de::Visitor<'_> for Scalar {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a password string")
            }
            fn visit_str<E>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret::new(&v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret::new(&v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Secret, E> {
                Ok(Secret::new(&v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Secret, E> {
                Ok(Secret::new(&v.to_string()))
            }
        }
        d.deserialize_any(Scalar)
    }
}

/// Why a password file gave no password. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    /// The file could not be read.
    #[error("password_file {path} cannot be read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is empty, or holds only line ends.
    #[error("password_file {path} holds no password (it is empty)")]
    Empty { path: PathBuf },
}

/// The most a secret file (password, admin token) may hold.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads a secret file: a regular file (not a device or a pipe, which could be read forever or
/// block) of at most [`MAX_SECRET_FILE`] bytes.
///
/// # Errors
///
/// An I/O error, also for a file that is not regular or is larger than the cap.
pub fn read_secret_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.take(MAX_SECRET_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_SECRET_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_SECRET_FILE} bytes"
        )));
    }
    Ok(text)
}

/// Reads a password file: its whole content, without the trailing line ends a mounted
/// Kubernetes Secret or an editor leaves (`\n`, `\r\n`); other whitespace is part of the
/// password, as Redis sees it.
///
/// # Errors
///
/// [`PasswordFileError`] when the file cannot be read or holds nothing.
pub fn read_password_file(path: &Path) -> Result<Secret, PasswordFileError> {
    let text = read_secret_file(path).map_err(|source| PasswordFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(PasswordFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(Secret::new(password))
}

/// Where a server's password comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    /// No password: Keyway sends no `AUTH`.
    None,
    /// A file, read at every new connection.
    File(PathBuf),
    /// A value read once at start (`KEYWAY_POOL__PASSWORD`).
    Value(Secret),
}

/// What one `AUTH` sends: `AUTH [username] password`.
#[derive(Clone, Debug)]
pub struct Auth {
    /// `None`: Redis's `default` user (one-argument `AUTH`, which Redis < 6 also understands).
    pub username: Option<String>,
    /// The password.
    pub password: Secret,
}

/// How Keyway authenticates to one server, shared by its data connections and its prober.
pub struct Credentials {
    username: Option<String>,
    source: PasswordSource,
    /// The last password the file gave, used while it cannot be read.
    last: Mutex<Option<Secret>>,
    /// Whether the last read of the file failed (the warning is logged once per failure streak).
    failing: AtomicBool,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("source", &self.source)
            .finish()
    }
}

impl Credentials {
    /// Credentials with `username` (`None`: the `default` user) and a password from `source`.
    pub fn new(username: Option<String>, source: PasswordSource) -> Credentials {
        Credentials {
            username,
            source,
            last: Mutex::new(None),
            failing: AtomicBool::new(false),
        }
    }

    /// No credentials: connections send no `AUTH`.
    pub fn none() -> Credentials {
        Credentials::new(None, PasswordSource::None)
    }

    /// The user name, if one is set.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// Where the password comes from.
    pub fn source(&self) -> &PasswordSource {
        &self.source
    }

    /// What a connection opened now authenticates with (`None`: send no `AUTH`). A password
    /// file is read now; if it cannot be read, the last password it gave is used and a warning
    /// naming `server` and the file (never the password) is logged.
    ///
    /// # Errors
    ///
    /// The file cannot be read and never could: there is no password to send. The message
    /// names the file, not a secret.
    pub fn current(&self, server: &str) -> Result<Option<Auth>, String> {
        let password = match &self.source {
            PasswordSource::None => return Ok(None),
            PasswordSource::Value(secret) => secret.clone(),
            PasswordSource::File(path) => self.read_file(server, path)?,
        };
        Ok(Some(Auth {
            username: self.username.clone(),
            password,
        }))
    }

    fn read_file(&self, server: &str, path: &Path) -> Result<Secret, String> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match read_password_file(path) {
            Ok(secret) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(server, path = %path.display(), "password_file can be read again");
                }
                *last = Some(secret.clone());
                Ok(secret)
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        server,
                        error = %e,
                        kept = last.is_some(),
                        "password_file cannot be read; the last password read from it stays in use"
                    );
                }
                last.clone().ok_or_else(|| {
                    format!("{e}, and no password was read from it before: not connecting")
                })
            }
        }
    }

    /// `text` (a server's error reply, say) with every occurrence of the password last used
    /// replaced by `<redacted>`: a server may quote its arguments (`-ERR unknown command
    /// 'AUTH', with args beginning with: ...` where AUTH is renamed).
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let value = match &self.source {
            PasswordSource::Value(secret) => Some(secret.clone()),
            _ => None,
        };
        for secret in [last, value].into_iter().flatten() {
            if !secret.expose().is_empty() {
                out = out.replace(secret.expose(), "<redacted>");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows_in_debug() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "\"<redacted>\"");
        let c = Credentials::new(Some("keyway".into()), PasswordSource::Value(s));
        let shown = format!("{c:?} {:?}", c.current("s0"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("keyway"), "{shown}");
    }

    #[test]
    fn the_file_loses_its_trailing_line_ends_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, " a b \r\n").unwrap();
        assert_eq!(read_password_file(&path).unwrap().expose(), " a b ");
        std::fs::write(&path, "\n").unwrap();
        let e = read_password_file(&path).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn a_rotated_file_applies_and_a_vanished_one_keeps_the_last_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        let c = Credentials::new(None, PasswordSource::File(path.clone()));
        let e = c.current("s0").unwrap_err();
        assert!(e.contains("cannot be read"), "{e}");
        std::fs::write(&path, "one\n").unwrap();
        assert_eq!(c.current("s0").unwrap().unwrap().password.expose(), "one");
        std::fs::write(&path, "two\n").unwrap();
        assert_eq!(c.current("s0").unwrap().unwrap().password.expose(), "two");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(c.current("s0").unwrap().unwrap().password.expose(), "two");
        assert_eq!(
            c.redact("-ERR unknown command 'AUTH', with args beginning with: 'two'"),
            "-ERR unknown command 'AUTH', with args beginning with: '<redacted>'"
        );
    }

    #[test]
    fn no_password_means_no_auth() {
        assert!(Credentials::none().current("s0").unwrap().is_none());
    }
}
