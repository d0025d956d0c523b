//! Scripts and function libraries that clients loaded through Keyway, kept so that a server
//! missing one (restarted without persistence, added by a topology swap, flushed directly) gets
//! it loaded again when a client calls it: `EVALSHA` answered `NOSCRIPT` or `FCALL` answered
//! `Function not found` load it on that server and are sent once more.
//!
//! Only what Keyway saw succeed is remembered: `SCRIPT LOAD` (under the SHA1 the servers
//! answered) and `FUNCTION LOAD` (under the library name they answered); `SCRIPT FLUSH`,
//! `FUNCTION FLUSH`, `FUNCTION RESTORE` and `FUNCTION DELETE` forget, so that a flushed script
//! stays flushed. Scripts that `EVAL` ran are not remembered: a client that calls `EVALSHA`
//! without `SCRIPT LOAD` gets `NOSCRIPT` where redis-server would, and its library's fallback
//! to `EVAL` works as against one server. The whole cache holds at most [`CAPACITY`] bytes;
//! past it a new script is not remembered (logged once), and is still loaded on every server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

use crate::command::Traits;

/// Bytes of scripts and libraries (bodies and names) remembered at most.
pub(crate) const CAPACITY: usize = 16 << 20;

/// What a command does to the cache, from its traits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Role {
    /// Nothing: most commands.
    None,
    /// `EVALSHA sha ...`: load the script again on `NOSCRIPT`.
    CallScript,
    /// `FCALL name ...`: load the libraries again on `Function not found`.
    CallFunction,
    /// `SCRIPT LOAD body`.
    LoadScript,
    /// `FUNCTION LOAD [REPLACE] code`.
    LoadFunction,
    /// `SCRIPT FLUSH`.
    ForgetScripts,
    /// `FUNCTION DELETE name`.
    ForgetFunction,
    /// `FUNCTION FLUSH`, `FUNCTION RESTORE`.
    ForgetFunctions,
}

impl Role {
    /// The role of a command with these traits.
    pub(crate) fn of(traits: Traits) -> Role {
        // Checked in table order; a command has at most one of these traits.
        let roles = [
            (Traits::CALLS_SCRIPT, Role::CallScript),
            (Traits::CALLS_FUNCTION, Role::CallFunction),
            (Traits::LOADS_SCRIPT, Role::LoadScript),
            (Traits::LOADS_FUNCTION, Role::LoadFunction),
            (Traits::FORGETS_SCRIPTS, Role::ForgetScripts),
            (Traits::FORGETS_FUNCTION, Role::ForgetFunction),
            (Traits::FORGETS_FUNCTIONS, Role::ForgetFunctions),
        ];
        roles
            .into_iter()
            .find(|(t, _)| traits.contains(*t))
            .map_or(Role::None, |(_, role)| role)
    }
}

#[derive(Default)]
struct Entries {
    /// SHA1 (lower-case hex, as the servers answer it) -> script body.
    scripts: HashMap<Bytes, Bytes>,
    /// Library name -> its code, as given to `FUNCTION LOAD`.
    libraries: HashMap<Bytes, Bytes>,
    /// Sum of the lengths of every key and value above.
    bytes: usize,
}

/// The scripts and libraries Keyway saw loaded. Locked briefly, only by the commands above.
#[derive(Default)]
pub(crate) struct ScriptCache {
    entries: Mutex<Entries>,
    /// Whether the "cache full" warning was logged.
    warned: AtomicBool,
}

impl ScriptCache {
    /// Remembers a script the servers loaded under `sha`.
    pub(crate) fn add_script(&self, sha: &[u8], body: Bytes) {
        let sha = Bytes::from(sha.to_ascii_lowercase());
        self.insert(|e| &mut e.scripts, sha, body);
    }

    /// Remembers a library the servers loaded under `name` (replacing one of that name).
    pub(crate) fn add_library(&self, name: &[u8], code: Bytes) {
        self.insert(|e| &mut e.libraries, Bytes::copy_from_slice(name), code);
    }

    fn insert(
        &self,
        map: fn(&mut Entries) -> &mut HashMap<Bytes, Bytes>,
        key: Bytes,
        value: Bytes,
    ) {
        let Ok(mut e) = self.entries.lock() else {
            return;
        };
        let size = key.len() + value.len();
        let old = map(&mut e).get(&key).map_or(0, |v| key.len() + v.len());
        if e.bytes - old + size > CAPACITY {
            drop(e);
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    capacity = CAPACITY,
                    "script cache full: scripts and libraries loaded from now on are not loaded again on a server that loses them"
                );
            }
            return;
        }
        e.bytes = e.bytes - old + size;
        map(&mut e).insert(key, value);
    }

    /// The body of the script with this SHA1, if remembered.
    pub(crate) fn script(&self, sha: &[u8]) -> Option<Bytes> {
        let e = self.entries.lock().ok()?;
        e.scripts.get(sha.to_ascii_lowercase().as_slice()).cloned()
    }

    /// The code of every remembered library.
    pub(crate) fn libraries(&self) -> Vec<Bytes> {
        self.entries
            .lock()
            .map(|e| e.libraries.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets every script (`SCRIPT FLUSH`).
    pub(crate) fn forget_scripts(&self) {
        if let Ok(mut e) = self.entries.lock() {
            let freed: usize = e.scripts.iter().map(|(k, v)| k.len() + v.len()).sum();
            e.scripts.clear();
            e.bytes -= freed;
        }
    }

    /// Forgets one library (`FUNCTION DELETE`).
    pub(crate) fn forget_library(&self, name: &[u8]) {
        if let Ok(mut e) = self.entries.lock() {
            if let Some(code) = e.libraries.remove(name) {
                e.bytes -= name.len() + code.len();
            }
        }
    }

    /// Forgets every library (`FUNCTION FLUSH`, `FUNCTION RESTORE`).
    pub(crate) fn forget_libraries(&self) {
        if let Ok(mut e) = self.entries.lock() {
            let freed: usize = e.libraries.iter().map(|(k, v)| k.len() + v.len()).sum();
            e.libraries.clear();
            e.bytes -= freed;
        }
    }

    /// Bytes remembered.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.entries.lock().map(|e| e.bytes).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_table() {
        let role = |name: &str, sub: Option<&str>| {
            let name = match sub {
                Some(s) => format!("{name}|{s}"),
                None => name.to_string(),
            };
            crate::command::lookup(&name).map(|s| Role::of(s.traits))
        };
        assert_eq!(role("evalsha", None), Some(Role::CallScript));
        assert_eq!(role("evalsha_ro", None), Some(Role::CallScript));
        assert_eq!(role("fcall", None), Some(Role::CallFunction));
        assert_eq!(role("fcall_ro", None), Some(Role::CallFunction));
        assert_eq!(role("script", Some("load")), Some(Role::LoadScript));
        assert_eq!(role("script", Some("flush")), Some(Role::ForgetScripts));
        assert_eq!(role("function", Some("load")), Some(Role::LoadFunction));
        assert_eq!(role("function", Some("delete")), Some(Role::ForgetFunction));
        assert_eq!(role("function", Some("flush")), Some(Role::ForgetFunctions));
        assert_eq!(
            role("function", Some("restore")),
            Some(Role::ForgetFunctions)
        );
        assert_eq!(role("eval", None), Some(Role::None));
        assert_eq!(role("get", None), Some(Role::None));
    }

    #[test]
    fn remembers_forgets_and_counts_bytes() {
        let c = ScriptCache::default();
        c.add_script(b"ABC", Bytes::from_static(b"return 1"));
        assert_eq!(c.script(b"abc"), Some(Bytes::from_static(b"return 1")));
        c.add_library(b"lib", Bytes::from_static(b"#!lua name=lib"));
        c.add_library(b"lib", Bytes::from_static(b"#!lua name=lib\n"));
        assert_eq!(c.bytes(), 3 + 8 + 3 + 15);
        c.forget_library(b"lib");
        assert!(c.libraries().is_empty());
        c.forget_scripts();
        assert_eq!(c.script(b"abc"), None);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn stops_remembering_at_capacity() {
        let c = ScriptCache::default();
        c.add_script(b"a", Bytes::from(vec![b'x'; CAPACITY - 1]));
        c.add_script(b"b", Bytes::from_static(b"yy"));
        assert_eq!(c.script(b"b"), None);
        assert_eq!(c.bytes(), CAPACITY);
        // Replacing within the cap is fine.
        c.add_script(b"a", Bytes::from_static(b"z"));
        c.add_script(b"b", Bytes::from_static(b"yy"));
        assert!(c.script(b"b").is_some());
    }
}
