//! The planner: where a command goes and how its replies come back as one.
//!
//! For each request it looks the command up in the command table, finds its keys, and picks one
//! of a few plans:
//!
//! - **one server**: every key in one slot (or keyless and any server will do): forward the
//!   original frame to that slot's primary and pass the reply through untouched;
//! - **split**: MGET, MSET, DEL, UNLINK, EXISTS, TOUCH over keys of several servers: one
//!   sub-command per server, replies merged (MGET in key order, counts summed);
//! - **every server**: DBSIZE, FLUSHDB, KEYS, SCRIPT LOAD, ...: same frame to all, replies merged;
//! - **SCAN**: the cursor carries the index of the server being scanned;
//! - **local**: answered by Keyway itself;
//! - **refused**: an error that names the command and why.
//!
//! Commands whose keys span slots and that cannot be split get a `CROSSSLOT` error that
//! points at hash tags.

use std::sync::Arc;

use bytes::Bytes;

use super::merge;
use super::session::{error_bytes, Pending};
use super::{local, Shared};
use crate::command::{self, Kind, Merge};
use crate::protocol::Request;
use crate::routing::{key_slot, Slot};
use crate::topology::Topology;

/// Keys in one SCAN cursor are `server cursor << SCAN_SHIFT | server index`.
pub(crate) const SCAN_SHIFT: u32 = 10;

pub(crate) const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot \
     (keyway shards keys by slot; put a hash tag in the keys, e.g. {user1}.a and {user1}.b, \
     to keep them on one server)";

/// Per-session planning state: the snapshot in use and scratch space reused across requests.
pub(crate) struct Planner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) topo: Arc<Topology>,
    /// The client id; also picks this client's connection of each server's pool.
    pub(crate) id: u64,
    /// CLIENT SETNAME.
    pub(crate) client_name: Option<Bytes>,
    keys: Vec<usize>,
}

impl Planner {
    pub(crate) fn new(shared: Arc<Shared>, id: u64) -> Planner {
        let topo = shared.topology.load();
        Planner {
            shared,
            topo,
            id,
            client_name: None,
            keys: Vec::new(),
        }
    }

    /// Takes the current topology for the requests that follow.
    pub(crate) fn refresh(&mut self) {
        let current = self.shared.topology.load();
        if current.version != self.topo.version {
            self.topo = current;
        }
    }

    fn pick(&self) -> usize {
        // Truncation is fine: only the remainder modulo the pool size matters.
        self.id as usize
    }

    /// Plans one request and starts its server requests. Returns its pending reply, the
    /// command it was (when the table knows it), and whether the client asked to close (QUIT).
    pub(crate) async fn dispatch(
        &mut self,
        request: Request,
    ) -> (Pending, Option<&'static command::CommandSpec>, bool) {
        let spec = match command::resolve(request.args()) {
            Ok(spec) => spec,
            Err(e) => {
                let known = std::str::from_utf8(request.name())
                    .ok()
                    .and_then(command::lookup);
                return (Pending::Ready(error_bytes(&e.to_string())), known, false);
            }
        };
        let (reply, quit) = self.plan(spec, request).await;
        (reply, Some(spec), quit)
    }

    async fn plan(
        &mut self,
        spec: &'static command::CommandSpec,
        request: Request,
    ) -> (Pending, bool) {
        match spec.kind {
            Kind::Local => local::answer(self, spec, &request),
            Kind::Refused(_) => {
                let msg = format!("command '{}' is not supported by keyway", spec.name);
                (Pending::Ready(error_bytes(&msg)), false)
            }
            Kind::Keyed => (self.keyed(spec, request).await, false),
            Kind::Split { merge, group } => (self.split(spec, request, merge, group).await, false),
            Kind::AllServers(merge) => (self.all_servers(request, merge).await, false),
            Kind::AnyServer => (self.any_server(request).await, false),
            Kind::RandomKey => (self.random_key(request).await, false),
            Kind::Scan => (self.scan(request).await, false),
            // `resolve` never returns a container entry; answer as redis would if it did.
            Kind::Container => {
                let msg = format!("wrong number of arguments for '{}' command", spec.name);
                (Pending::Ready(error_bytes(&msg)), false)
            }
        }
    }

    fn slot(&self, key: &[u8]) -> Slot {
        key_slot(key, self.topo.hash_tag)
    }

    /// Sends a frame to the server at a slot-table index.
    async fn send_to(&self, server: u16, frame: Bytes) -> Pending {
        match self.topo.server(server) {
            Some(s) => Pending::Forward(s.pool.send(self.pick(), frame).await),
            None => Pending::Ready(error_bytes(
                "keyway: internal routing error (no such server)",
            )),
        }
    }

    /// A command whose keys must share one slot.
    async fn keyed(&mut self, spec: &'static command::CommandSpec, request: Request) -> Pending {
        self.keys.clear();
        if let Err(e) = command::key_indexes(spec, request.args(), &mut self.keys) {
            return Pending::Ready(error_bytes(&e.to_string()));
        }
        let args = request.args();
        let mut slot = None;
        for &i in &self.keys {
            let Some(key) = args.get(i) else { continue };
            let s = self.slot(key);
            match slot {
                None => slot = Some(s),
                Some(first) if first != s => return Pending::Ready(error_bytes(CROSSSLOT)),
                Some(_) => {}
            }
        }
        match slot {
            Some(slot) => {
                let server = self.topo.table.primary(slot);
                self.send_to(server, request.frame().clone()).await
            }
            // EVAL with numkeys 0 and the like: any server will do.
            None => self.any_server(request).await,
        }
    }

    /// MGET, MSET, DEL, ...: one sub-command per server holding some of the keys.
    async fn split(
        &mut self,
        spec: &'static command::CommandSpec,
        request: Request,
        how: Merge,
        group: usize,
    ) -> Pending {
        let args = request.args();
        let group = group.max(1);
        if args.len() < 1 + group || !(args.len() - 1).is_multiple_of(group) {
            let msg = format!("wrong number of arguments for '{}' command", spec.name);
            return Pending::Ready(error_bytes(&msg));
        }
        let n_keys = (args.len() - 1) / group;
        // Server of each key, in key order.
        let servers: Vec<u16> = args[1..]
            .chunks(group)
            .map(|g| {
                self.topo
                    .table
                    .primary(self.slot(g.first().map_or(&[][..], |k| k)))
            })
            .collect();
        let first = servers.first().copied().unwrap_or(0);
        if servers.iter().all(|&s| s == first) {
            return self.send_to(first, request.frame().clone()).await;
        }
        // One sub-command per distinct server, remembering which keys it carries.
        let mut parts: Vec<(u16, Vec<usize>)> = Vec::new();
        for (k, &s) in servers.iter().enumerate() {
            match parts.iter_mut().find(|(srv, _)| *srv == s) {
                Some((_, ks)) => ks.push(k),
                None => parts.push((s, vec![k])),
            }
        }
        let name = args.first().cloned().unwrap_or_default();
        let mut replies = Vec::with_capacity(parts.len());
        let mut positions = Vec::with_capacity(parts.len());
        for (server, ks) in parts {
            let mut sub = Vec::with_capacity(1 + ks.len() * group);
            sub.push(name.clone());
            for &k in &ks {
                let start = 1 + k * group;
                sub.extend(
                    args.get(start..start + group)
                        .unwrap_or_default()
                        .iter()
                        .cloned(),
                );
            }
            let frame = Request::from_args(sub).frame().clone();
            replies.push(self.send_to(server, frame).await);
            positions.push(ks);
        }
        Pending::Merge(Box::pin(merge::split(how, replies, positions, n_keys)))
    }

    /// DBSIZE, FLUSHDB, KEYS, SCRIPT LOAD, ...: the same frame to every server.
    async fn all_servers(&mut self, request: Request, how: Merge) -> Pending {
        let mut replies = Vec::with_capacity(self.topo.servers.len());
        for s in &self.topo.servers {
            replies.push(Pending::Forward(
                s.pool.send(self.pick(), request.frame().clone()).await,
            ));
        }
        Pending::Merge(Box::pin(merge::all(how, replies)))
    }

    /// A keyless command any one server can answer; clients are spread over the servers.
    async fn any_server(&mut self, request: Request) -> Pending {
        let n = self.topo.servers.len().max(1);
        let index = (self.pick() % n) as u16;
        self.send_to(index, request.frame().clone()).await
    }

    /// RANDOMKEY: a random server, then the others in turn until one has a key.
    async fn random_key(&mut self, request: Request) -> Pending {
        let topo = self.topo.clone();
        let start = rand::random_range(0..topo.servers.len().max(1));
        let pick = self.pick();
        let frame = request.frame().clone();
        Pending::Merge(Box::pin(merge::random_key(topo, start, pick, frame)))
    }

    /// SCAN cursor [MATCH p] [COUNT n] [TYPE t]: one server at a time, in topology order.
    async fn scan(&mut self, request: Request) -> Pending {
        let args = request.args();
        let Some(cursor) = args
            .get(1)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse::<u64>().ok())
        else {
            return Pending::Ready(error_bytes("ERR invalid cursor"));
        };
        let index = (cursor & ((1 << SCAN_SHIFT) - 1)) as usize;
        let server_cursor = cursor >> SCAN_SHIFT;
        if index >= self.topo.servers.len() {
            return Pending::Ready(error_bytes("ERR invalid cursor"));
        }
        let mut sub: Vec<Bytes> = args.to_vec();
        if let Some(c) = sub.get_mut(1) {
            *c = Bytes::from(server_cursor.to_string());
        }
        let frame = Request::from_args(sub).frame().clone();
        let reply = self.send_to(index as u16, frame).await;
        let servers = self.topo.servers.len();
        Pending::Merge(Box::pin(merge::scan(reply, index, servers)))
    }
}
