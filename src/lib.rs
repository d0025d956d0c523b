//! Keyway: a stateless sharding proxy for Redis.
//!
//! Applications point any Redis client at Keyway; Keyway spreads their keys over a pool of
//! ordinary `redis-server` processes with rendezvous hashing and answers as if the pool were one
//! server.
//!
//! # Layout
//!
//! Each module owns one layer of the request path and talks only to its neighbours:
//!
//! - [`protocol`]: RESP frames: incremental, bounded, zero-copy decoding, and encoding. Bytes only.
//! - [`command`]: the one command table: flags, key positions, how a command is routed and merged.
//! - [`routing`]: pure functions: key -> slot, rendezvous ranking, the slot table.
//! - [`acl`]: client users: Redis ACL rules compiled and checked, Redis's glob, the users in
//!   force.
//! - [`config`]: the configuration file, its layering (defaults < file < `KEYWAY_*`) and checks.
//! - [`credentials`]: what Keyway authenticates to a server with; the `Secret` type that shows
//!   nowhere.
//! - [`tls`]: rustls both ways: the client listener's and the server connections' TLS, certificate
//!   files re-read when they change.
//! - [`topology`]: the immutable snapshot the request path reads, behind one `ArcSwap`.
//! - [`health`]: the up/down state machine of each server, active probes.
//! - [`backend`]: pipelined, multiplexed connections to each server, FIFO reply matching.
//! - [`txn`]: two-phase commit on plain Redis servers, and its recovery.
//! - [`resync`]: a replica that restarted or came back empty is copied its slots from healthy
//!   replicas before it serves reads again.
//! - [`server`]: the listener, the per-client session, the planner that splits and merges.
//! - [`metrics`]: every metric, in Keyway's own registry.
//! - [`admin`]: the admin HTTP server: metrics, health, readiness, topology.
//! - [`error`]: the errors Keyway answers clients with, typed to the wire.
//! - [`drain`]: the drain switch SIGTERM turns.
//! - `fuzzing` (hidden): the `pub(crate)` parsers the fuzz targets and property tests reach.
#![forbid(unsafe_code)]

pub mod acl;
pub(crate) mod admin;
pub mod backend;
pub mod command;
pub mod config;
pub mod credentials;
pub(crate) mod drain;
pub(crate) mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod metrics;
pub mod protocol;
pub mod resync;
pub mod routing;
pub mod server;
pub mod tls;
pub mod topology;
pub mod txn;
