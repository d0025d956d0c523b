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

use bytes::{Bytes, BytesMut};

use super::merge;
use super::session::{error_bytes, Pending};
use super::{local, Shared};
use crate::backend::Gather;
use crate::command::{self, Kind, Merge};
use crate::config::{ReadPolicy, WriteMode};
use crate::protocol::{write_bulk, Args, NumberLine, Request};

use crate::routing::{key_slot, Slot};
use crate::topology::{Placement, PlacementError, Topology};
use crate::txn;

/// One server's (or replica set's) share of a split command.
struct SubCommand<'t> {
    placement: Placement<'t>,
    /// Keys it carries.
    keys: usize,
    /// Bytes their encoded arguments take.
    len: usize,
    /// The part goes to its server as the primary of a key's slot, found up: later keys with
    /// the same primary join it without a health check of their own.
    primary: bool,
}

/// The index in `parts` of the part that carries a key of `slot`, added if it is new.
///
/// Most keys' slots are served by their primary: a key whose primary already has a part, found
/// up, joins it with one table lookup and no health check. Other keys take the slot's placement
/// (health, failover policy, replica set).
fn part_for<'t>(
    parts: &mut Vec<SubCommand<'t>>,
    topo: &'t Topology,
    slot: Slot,
) -> Result<usize, PlacementError> {
    let single = topo.replicas == 1;
    let primary = topo.table.primary(slot);
    if single {
        let known = parts
            .iter()
            .position(|p| p.primary && p.placement == Placement::One(primary));
        if let Some(i) = known {
            return Ok(i);
        }
    }
    let placement = topo.placement(slot)?;
    let i = match parts.iter().position(|p| p.placement == placement) {
        Some(i) => i,
        None => {
            parts.push(SubCommand {
                placement,
                keys: 0,
                len: 0,
                primary: false,
            });
            parts.len() - 1
        }
    };
    // Only a primary that is up: when none of a slot's servers is, its placement is its primary
    // all the same, which says nothing of other slots.
    if single && placement == Placement::One(primary) && topo.is_up(primary) {
        if let Some(p) = parts.get_mut(i) {
            p.primary = true;
        }
    }
    Ok(i)
}

/// Keys in one SCAN cursor are `server cursor << SCAN_SHIFT | server index`.
pub(crate) const SCAN_SHIFT: u32 = 10;

pub(crate) const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot \
     (keyway shards keys by slot; put a hash tag in the keys, e.g. {user1}.a and {user1}.b, \
     to keep them on one server)";

const SPOP_FANOUT: &str = "ERR SPOP picks members at random, so replicas would pop different \
     members; keyway refuses it when writes go to several replicas (write = all or quorum)";

/// Most arguments of one staged command: scripts apply it with Lua's `unpack`, which fails past
/// about 8000 values (an error no `pcall` can catch).
const MAX_STAGED_ARGS: usize = 7000;

/// Appends the arguments in `range`, encoded: one copy of their span of the frame.
fn put_args(out: &mut BytesMut, args: Args<'_>, range: std::ops::Range<usize>) {
    match args.encoded(range.clone()) {
        Some(span) => out.extend_from_slice(span),
        None => {
            for i in range {
                write_bulk(out, args.get(i).unwrap_or_default());
            }
        }
    }
}

/// Why a write cannot be staged in a two-phase transaction, if it cannot.
fn not_stageable(spec: &command::CommandSpec) -> Option<String> {
    let why = if spec.flags.contains(command::Flags::NOSCRIPT) {
        "it cannot run inside a script"
    } else if spec.flags.contains(command::Flags::BLOCKING) {
        "it blocks"
    } else if matches!(spec.name, "spop" | "srandmember") {
        "it picks members at random, so replicas would differ"
    } else {
        return None;
    };
    Some(format!(
        "ERR command '{}' is refused under write = two_phase: {why}",
        spec.name
    ))
}

/// Whether a command changes data (so it follows the write mode): the `write` flag, or a script
/// or function call that may write (`EVAL`, `EVALSHA`, `FCALL`; their `_RO` forms only read).
fn is_write(spec: &command::CommandSpec) -> bool {
    spec.flags.contains(command::Flags::WRITE)
        || spec.flags.contains(command::Flags::MAY_REPLICATE)
        || matches!(spec.name, "eval" | "evalsha" | "fcall")
}

/// What a client has set that outlives a burst of requests: kept while its session is parked,
/// when no [`Planner`] exists.
pub(crate) struct ClientState {
    /// CLIENT SETNAME.
    name: Option<Bytes>,
    /// Round-robin position of this client's reads.
    rr: usize,
}

impl ClientState {
    /// A new client's state. Reads start their round robin at the client id, so that clients
    /// do not all begin on the same replica.
    pub(crate) fn new(id: u64) -> ClientState {
        ClientState {
            name: None,
            // Truncation is fine: only the remainder modulo the replica count matters.
            rr: id as usize,
        }
    }
}

/// Per-session planning state for one active stretch: the snapshot in use and scratch space
/// reused across requests. A parked session keeps only its [`ClientState`], so that it holds
/// no topology snapshot (an old snapshot would keep removed servers' connections open).
pub(crate) struct Planner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) topo: Arc<Topology>,
    /// The client id; also picks this client's connection of each server's pool.
    pub(crate) id: u64,
    /// CLIENT SETNAME.
    pub(crate) client_name: Option<Bytes>,
    keys: Vec<usize>,
    /// Round-robin position of this client's reads.
    rr: usize,
}

impl Planner {
    /// A planner on the current topology for client `id`, resuming `client`'s settings, with
    /// `keys` (empty) as its scratch list of key positions.
    pub(crate) fn new(
        shared: Arc<Shared>,
        id: u64,
        client: ClientState,
        keys: Vec<usize>,
    ) -> Planner {
        let topo = shared.topology.load();
        Planner {
            shared,
            topo,
            id,
            client_name: client.name,
            keys,
            rr: client.rr,
        }
    }

    /// Ends the stretch: what must outlive it, and the scratch list for reuse.
    pub(crate) fn into_client(self) -> (ClientState, Vec<usize>) {
        (
            ClientState {
                name: self.client_name,
                rr: self.rr,
            },
            self.keys,
        )
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
    pub(crate) fn dispatch(
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
        let (reply, quit) = self.plan(spec, request);
        (reply, Some(spec), quit)
    }

    fn plan(&mut self, spec: &'static command::CommandSpec, request: Request) -> (Pending, bool) {
        match spec.kind {
            Kind::Local => local::answer(self, spec, &request),
            Kind::Refused(_) => {
                let msg = format!("command '{}' is not supported by keyway", spec.name);
                (Pending::Ready(error_bytes(&msg)), false)
            }
            Kind::Keyed => (self.keyed(spec, request), false),
            Kind::Split { merge, group } => (self.split(spec, request, merge, group), false),
            Kind::AllServers(merge) => (self.all_servers(request, merge), false),
            Kind::AnyServer => (self.any_server(request), false),
            Kind::RandomKey => (self.random_key(request), false),
            Kind::Scan => (self.scan(request), false),
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
    fn send_to(&self, server: u16, frame: Bytes) -> Pending {
        match self.topo.server(server) {
            Some(s) => Pending::Forward(s.pool.send(self.pick(), frame)),
            None => Pending::Ready(error_bytes(
                "keyway: internal routing error (no such server)",
            )),
        }
    }

    /// A command whose keys must share one slot.
    fn keyed(&mut self, spec: &'static command::CommandSpec, request: Request) -> Pending {
        self.keys.clear();
        if let Err(e) = command::key_indexes(spec, request.args(), &mut self.keys) {
            return Pending::Ready(error_bytes(&e.to_string()));
        }
        let args = request.args();
        if matches!(spec.name, "xread" | "xreadgroup")
            && args.iter().any(|a| a.eq_ignore_ascii_case(b"BLOCK"))
        {
            // A blocking read would hold a pipelined connection that other clients share.
            let msg = format!(
                "ERR command '{}' with BLOCK is not supported by keyway: blocking commands would stall the server connections other clients share",
                spec.name
            );
            return Pending::Ready(error_bytes(&msg));
        }
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
                let write = is_write(spec);
                if write && self.topo.write == WriteMode::TwoPhase {
                    return self.two_phase_keyed(spec, &request, slot);
                }
                if write && spec.name == "spop" && self.fans_out() {
                    return Pending::Ready(error_bytes(SPOP_FANOUT));
                }
                let topo = self.topo.clone();
                match topo.placement(slot) {
                    Ok(placement) => {
                        if let (Some(old), Placement::One(new), false) =
                            (topo.warm_from(slot), placement, write)
                        {
                            if spec.name == "get" && old != new {
                                return self.warm_get(new, old, request);
                            }
                        }
                        self.route(placement, write, request.frame().clone())
                    }
                    Err(e) => Pending::Ready(error_bytes(&e.to_string())),
                }
            }
            // EVAL with numkeys 0 and the like: any server will do.
            None => self.any_server(request),
        }
    }

    /// A keyed write under `write = "two_phase"`: the whole command staged on every replica of
    /// its slot.
    fn two_phase_keyed(
        &mut self,
        spec: &'static command::CommandSpec,
        request: &Request,
        slot: Slot,
    ) -> Pending {
        if let Some(why) = not_stageable(spec) {
            return Pending::Ready(error_bytes(&why));
        }
        let args = request.args();
        if args.len() > MAX_STAGED_ARGS {
            return Pending::Ready(error_bytes(&format!(
                "ERR command '{}' with {} arguments is refused under write = two_phase: a staged command may have at most {MAX_STAGED_ARGS} (split it)",
                spec.name,
                args.len()
            )));
        }
        let keys: Vec<Bytes> = self.keys.iter().filter_map(|&i| args.bytes(i)).collect();
        let readback: Vec<Bytes> = match (spec.name, args.bytes(1), args.bytes(2)) {
            ("incr" | "incrby" | "decr" | "decrby", Some(key), _) => {
                vec![Bytes::from_static(b"GET"), key]
            }
            ("hincrby", Some(key), Some(field)) => {
                vec![Bytes::from_static(b"HGET"), key, field]
            }
            _ => Vec::new(),
        };
        let shape = if readback.is_empty() {
            txn::ReplyShape::Single
        } else {
            txn::ReplyShape::Integer
        };
        let set = self.topo.replica_set(slot);
        let primary = set.first().copied().unwrap_or(0);
        let parts = set
            .iter()
            .map(|&server| {
                let part = txn::Part {
                    keys: keys.clone(),
                    steps: vec![txn::Step {
                        command: args.to_vec(),
                        readback: readback.clone(),
                        counts: server == primary,
                    }],
                };
                (server, part)
            })
            .collect();
        self.run_transaction(txn::Plan {
            parts,
            primary,
            reply: shape,
        })
    }

    /// MSET, DEL, UNLINK under `write = "two_phase"`: one transaction over the union of the
    /// keys' replica sets, one staged step per key and replica.
    fn two_phase_split(
        &mut self,
        spec: &'static command::CommandSpec,
        request: &Request,
        group: usize,
    ) -> Pending {
        let args = request.args();
        let name = args.bytes(0).unwrap_or_default();
        let (step_name, shape) = match spec.name {
            "mset" => (Bytes::from_static(b"SET"), txn::ReplyShape::Ok),
            _ => (name, txn::ReplyShape::Sum),
        };
        let mut parts: std::collections::BTreeMap<u16, txn::Part> = Default::default();
        let mut primary = None;
        for at in (1..args.len()).step_by(group) {
            let Some(key) = args.bytes(at) else { continue };
            let set = self.topo.replica_set(self.slot(&key));
            let key_primary = set.first().copied().unwrap_or(0);
            primary.get_or_insert(key_primary);
            for &server in set {
                let part = parts.entry(server).or_default();
                part.keys.push(key.clone());
                let mut command = vec![step_name.clone()];
                command.extend((at..at + group).filter_map(|i| args.bytes(i)));
                part.steps.push(txn::Step {
                    command,
                    readback: Vec::new(),
                    counts: server == key_primary,
                });
            }
        }
        let primary = primary.unwrap_or(0);
        self.run_transaction(txn::Plan {
            parts,
            primary,
            reply: shape,
        })
    }

    fn run_transaction(&mut self, plan: txn::Plan) -> Pending {
        let topo = self.topo.clone();
        let pick = self.pick();
        let shared = self.shared.clone();
        let options = txn::TxOptions {
            lock_timeout: topo.config.two_phase.lock_timeout,
            retries: topo.config.two_phase.retries,
        };
        // A task of its own: it starts now, and it finishes even if the client goes away (an
        // abandoned transaction would hold its locks until recovery).
        Pending::Task(tokio::spawn(async move {
            txn::execute(topo, pick, plan, &options, &shared.metrics).await
        }))
    }

    /// GET during the warm-up after a swap: a miss on the slot's new primary is tried on its
    /// previous one, and a hit is returned and copied to the new primary with its TTL.
    fn warm_get(&mut self, new: u16, old: u16, request: Request) -> Pending {
        let first = self.send_to(new, request.frame().clone());
        let key = request.args().bytes(1).unwrap_or_default();
        Pending::Merge(Box::pin(merge::warm_get(
            first,
            self.topo.clone(),
            new,
            old,
            self.pick(),
            key,
        )))
    }

    /// Whether writes go to more than one server.
    fn fans_out(&self) -> bool {
        self.topo.replicas > 1 && self.topo.write != WriteMode::Primary
    }

    /// Sends a frame where a slot's placement and the pool's policies say.
    fn route(&mut self, placement: Placement<'_>, write: bool, frame: Bytes) -> Pending {
        let set = match placement {
            Placement::One(server) => return self.send_to(server, frame),
            Placement::Replicas(set) => set,
        };
        let topo = self.topo.clone();
        if write {
            let targets: &[u16] = match topo.write {
                WriteMode::Primary => set.get(..1).unwrap_or(set),
                // Two-phase writes are planned before routing; this is never reached for them.
                WriteMode::All | WriteMode::Quorum | WriteMode::TwoPhase => set,
            };
            if let [only] = targets {
                return self.send_to(*only, frame);
            }
            let mut replies = Vec::with_capacity(targets.len());
            for &t in targets {
                let name = topo.server(t).map_or_else(String::new, |s| s.name.clone());
                replies.push((name, self.send_to(t, frame.clone())));
            }
            let need = match topo.write {
                WriteMode::Quorum => targets.len() / 2 + 1,
                _ => targets.len(),
            };
            return Pending::Merge(Box::pin(merge::fan_out(replies, need)));
        }
        let chosen = self.choose_read(set);
        // A read that fails on a connection error is retried once on the next healthy
        // replica: reads are idempotent.
        let alternate = set
            .iter()
            .cycle()
            .skip_while(|&&i| i != chosen)
            .skip(1)
            .take(set.len().saturating_sub(1))
            .copied()
            .find(|&i| topo.is_up(i));
        let first = self.send_to(chosen, frame.clone());
        match alternate {
            None => first,
            Some(alt) => Pending::Merge(Box::pin(merge::read_with_retry(
                first,
                topo,
                alt,
                self.pick(),
                frame,
            ))),
        }
    }

    /// The replica a read goes to, by the pool's read policy, among the healthy members of
    /// `set` (all of them, primary first, when none is healthy: see `Topology::placement`).
    fn choose_read(&mut self, set: &[u16]) -> u16 {
        let topo = &self.topo;
        let up = set.iter().filter(|&&i| topo.is_up(i)).count();
        let nth_up = |n: usize| {
            set.iter()
                .copied()
                .filter(|&i| topo.is_up(i))
                .nth(n)
                .unwrap_or(set.first().copied().unwrap_or(0))
        };
        if up == 0 {
            return set.first().copied().unwrap_or(0);
        }
        match topo.read {
            ReadPolicy::Primary => nth_up(0),
            ReadPolicy::RoundRobin => {
                self.rr = self.rr.wrapping_add(1);
                nth_up(self.rr % up)
            }
            ReadPolicy::Random => nth_up(rand::random_range(0..up)),
            ReadPolicy::LeastOutstanding => {
                // Power of two choices: two distinct random healthy replicas, the less busy.
                let a = rand::random_range(0..up);
                let b = if up > 1 {
                    (a + 1 + rand::random_range(0..up - 1)) % up
                } else {
                    a
                };
                let (a, b) = (nth_up(a), nth_up(b));
                let load = |i: u16| topo.server(i).map_or(i64::MAX, |s| s.pool.in_flight());
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
        }
    }

    /// MGET, MSET, DEL, ...: one sub-command per server holding some of the keys.
    fn split(
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
        let write = is_write(spec);
        if write && self.topo.write == WriteMode::TwoPhase {
            return self.two_phase_split(spec, &request, group);
        }
        let topo = self.topo.clone();
        // One sub-command per distinct placement. Each key's run of arguments (`$len\r\nkey\r\n`
        // and its values, already encoded in the client's frame) is looked up once and copied
        // once; each part counts its keys (for its header) and bytes (to size the frame of a
        // part that goes to a replica set).
        let mut runs: Vec<(u32, Option<&[u8]>)> = Vec::with_capacity((args.len() - 1) / group);
        let mut parts: Vec<SubCommand<'_>> = Vec::with_capacity(topo.servers.len().min(8));
        for at in (1..args.len()).step_by(group) {
            let slot = self.slot(args.get(at).unwrap_or_default());
            let run = args.encoded(at..at + group);
            let part = match part_for(&mut parts, &topo, slot) {
                Ok(i) => i,
                Err(e) => return Pending::Ready(error_bytes(&e.to_string())),
            };
            if let Some(p) = parts.get_mut(part) {
                p.keys += 1;
                p.len += run.map_or(0, <[u8]>::len);
            }
            // Parts are distinct servers or replica sets, far fewer than u32::MAX.
            runs.push((part as u32, run));
        }
        if let [only] = &parts[..] {
            let placement = only.placement;
            return self.route(placement, write, request.frame().clone());
        }
        // Each sub-command is copied from the client's frame: the name, then each key's run.
        // A part for one server is written straight into that connection's outgoing bytes; a
        // part for a replica set (which the write mode may fan out) is built as a frame first.
        let name = args.encoded(0..1);
        let name_len = name.map_or(0, <[u8]>::len);
        let write_part = |out: &mut BytesMut, index: usize, keys: usize| {
            out.extend_from_slice(NumberLine::array(1 + keys * group).as_bytes());
            match name {
                Some(name) => out.extend_from_slice(name),
                None => put_args(out, args, 0..1),
            }
            for (k, &(part, run)) in runs.iter().enumerate() {
                if part as usize != index {
                    continue;
                }
                match run {
                    Some(run) => out.extend_from_slice(run),
                    None => {
                        let at = 1 + k * group;
                        put_args(out, args, at..at + group);
                    }
                }
            }
        };
        // Only an array merge (MGET) needs to know which part carried each key.
        let owner: Vec<u32> = if how == Merge::Array {
            runs.iter().map(|&(part, _)| part).collect()
        } else {
            Vec::new()
        };
        if parts
            .iter()
            .all(|p| matches!(p.placement, Placement::One(_)))
        {
            // One server per part: the replies are gathered in one place, the session woken
            // once when the last is in.
            let gather = Gather::new(parts.len());
            for (index, p) in parts.iter().enumerate() {
                let part = gather.part(index);
                let server = match p.placement {
                    Placement::One(server) => topo.server(server),
                    Placement::Replicas(_) => None,
                };
                match server {
                    Some(s) => s.pool.send_part(self.pick(), part, |out| {
                        write_part(out, index, p.keys);
                    }),
                    // Not reached (placements name servers of this topology); a part dropped
                    // unsent completes with an error for the client, not a hang.
                    None => drop(part),
                }
            }
            return Pending::Gather { gather, how, owner };
        }
        // Replica sets, which the write mode may fan out: each part is built as a frame and
        // routed. Pushed into a vector sized up front. (A `collect` from an owning iterator
        // over the parts would reuse their allocation and shrink it with a `realloc` per
        // request.)
        let mut replies = Vec::with_capacity(parts.len());
        for (index, p) in parts.iter().enumerate() {
            // 16: room for the `*N\r\n` header.
            let mut frame = BytesMut::with_capacity(16 + name_len + p.len);
            write_part(&mut frame, index, p.keys);
            replies.push(self.route(p.placement, write, frame.freeze()));
        }
        Pending::Merge(Box::pin(merge::split(how, replies, owner)))
    }

    /// DBSIZE, FLUSHDB, KEYS, SCRIPT LOAD, ...: the same frame to every server.
    fn all_servers(&mut self, request: Request, how: Merge) -> Pending {
        let mut replies = Vec::with_capacity(self.topo.servers.len());
        for s in &self.topo.servers {
            replies.push(Pending::Forward(
                s.pool.send(self.pick(), request.frame().clone()),
            ));
        }
        Pending::Merge(Box::pin(merge::all(how, replies, self.topo.clone())))
    }

    /// A keyless command any one server can answer; clients are spread over the servers.
    fn any_server(&mut self, request: Request) -> Pending {
        let n = self.topo.servers.len().max(1);
        let index = (self.pick() % n) as u16;
        self.send_to(index, request.frame().clone())
    }

    /// RANDOMKEY: a random server, then the others in turn until one has a key.
    fn random_key(&mut self, request: Request) -> Pending {
        let topo = self.topo.clone();
        let start = rand::random_range(0..topo.servers.len().max(1));
        let pick = self.pick();
        let frame = request.frame().clone();
        Pending::Merge(Box::pin(merge::random_key(topo, start, pick, frame)))
    }

    /// SCAN cursor [MATCH p] [COUNT n] [TYPE t]: one server at a time, in topology order.
    fn scan(&mut self, request: Request) -> Pending {
        let args = request.args();
        let Some(cursor) = args
            .get(1)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse::<u64>().ok())
        else {
            return Pending::Ready(error_bytes("ERR invalid cursor"));
        };
        if self.topo.servers.len() > 1 << SCAN_SHIFT {
            return Pending::Ready(error_bytes(
                "ERR keyway's SCAN cursor addresses at most 1024 servers; use KEYS on smaller pools or SCAN each server directly",
            ));
        }
        let index = (cursor & ((1 << SCAN_SHIFT) - 1)) as usize;
        let server_cursor = cursor >> SCAN_SHIFT;
        if index >= self.topo.servers.len() {
            return Pending::Ready(error_bytes("ERR invalid cursor"));
        }
        let mut sub: Vec<Bytes> = args.to_vec();
        if let Some(c) = sub.get_mut(1) {
            *c = Bytes::from(server_cursor.to_string());
        }
        let frame = Request::from_args(&sub).frame().clone();
        let reply = self.send_to(index as u16, frame);
        Pending::Merge(Box::pin(merge::scan(reply, index, self.topo.clone())))
    }
}
