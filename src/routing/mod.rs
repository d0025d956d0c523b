//! Routing: a pure function of (key, topology). No I/O, no sockets, no async, no allocation per
//! request.
//!
//! The request path asks one question of this module: *which servers hold this key?* It is
//! answered in two steps, both fixed forever because changing either moves users' keys:
//!
//! 1. [`key_slot`]: key -> [`Slot`], `CRC16-XMODEM(key or its hash tag) mod 16384`, exactly as
//!    Redis Cluster does (so `CLUSTER KEYSLOT` on any Redis gives the same number).
//! 2. [`SlotTable::ranked`]: slot -> servers, best first. The table is built once per topology
//!    version by weighted rendezvous (HRW) ranking ([`score`]); a lookup is one array index, so
//!    routing cost does not grow with the number of servers.
//!
//! 3. [`choose_read`]: which healthy member of a slot's replica set serves a read, by the
//!    pool's [`ReadPolicy`] ([`alternate`]: where a failed read is retried).
//!
//! [`primary_moves`] compares two tables (what a topology change moves). The design, the exact
//! hash input encoding and the movement figures are in `docs/routing.md`.

mod hrw;
mod read;
mod slot;
mod table;

pub use hrw::{score, unit_interval, HRW_SEED};
pub use read::{alternate, choose_read, ReadPolicy};
pub use slot::{key_slot, HashTag, Slot, SLOTS};
pub use table::{check_servers, primary_moves, SlotTable, MAX_SERVERS};

/// A routing input that cannot be used: a bad `hash_tag` setting or a server list no slot table
/// can be built from. Caused by configuration (never by a client); not retryable: the topology
/// that carries it must be refused and the old one kept.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoutingError {
    /// `hash_tag` is neither empty nor exactly two ASCII characters.
    #[error("hash_tag must be exactly two ASCII characters (like \"{{}}\") or empty to disable tags, got {0:?}")]
    InvalidHashTag(String),
    /// The server list is empty.
    #[error("a slot table needs at least one server")]
    NoServers,
    /// More servers than a `u16` index can name.
    #[error("{0} servers given, at most {MAX_SERVERS} are supported")]
    TooManyServers(usize),
    /// A weight that is not finite and strictly positive.
    #[error("server {name:?} has weight {weight}: a weight must be finite and greater than 0")]
    InvalidWeight {
        /// The server's name.
        name: String,
        /// The weight given.
        weight: f64,
    },
    /// Two servers share a name (servers are identified by name).
    #[error("server name {0:?} appears more than once")]
    DuplicateName(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_setting_and_the_value() {
        let e = HashTag::parse("{").unwrap_err().to_string();
        assert!(e.contains("\"{}\"") && e.contains("\"{\""), "{e}");
        let e = SlotTable::build(&[("a", 0.0)], 1).unwrap_err().to_string();
        assert_eq!(
            e,
            "server \"a\" has weight 0: a weight must be finite and greater than 0"
        );
    }
}
