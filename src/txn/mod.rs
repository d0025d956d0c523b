//! Two-phase commit on plain Redis servers (`write = "two_phase"`).
//!
//! Redis has no prepare step, so Keyway builds one from Lua scripts ([`scripts`]), with the
//! commit point on one server, as Percolator does. A transaction, run by [`execute`]:
//!
//! ```text
//!  Preparing --all vote yes--> Committing(primary) --decision "commit" written--> Committed
//!      |                            |                                              |
//!      | a no vote / an error       | "abort" already recorded                     | commit the
//!      v                            v                                              v secondaries
//!   Aborting --locks released--> retry with jittered backoff, then -TRYAGAIN      reply to client
//! ```
//!
//! 1. **Prepare**, one script call per participant server but the primary participant, in
//!    parallel: lock every key of the transaction on that server (`__keyway:lock:<key>` = txid;
//!    a key locked by another transaction is a no vote) and store the intent (the staged
//!    commands, the participants' primary, the server time, the coordinator). Nothing
//!    user-visible changes.
//! 2. **Decide**: if every participant voted yes, commit on the **primary participant**: one
//!    script that checks its keys are not locked by another transaction (else a no vote), records
//!    `__keyway:decision:<txid> = commit` (unless `abort` is recorded) and applies its commands.
//!    That write is the commit point. The primary participant needs no prepare: nothing is
//!    staged there, and the check and the commands run in one script. Otherwise abort: release
//!    every prepared lock (the coordinator records no decision for its own abort).
//! 3. **Commit the others**, in parallel. The client's reply waits for them; a secondary that
//!    cannot be reached after the commit point is finished by recovery.
//! 4. **Recovery** ([`resolve`]): a prepare that meets a lock older than `lock_timeout`, and the
//!    background sweep ([`sweep`]) of every proxy, read the decision on the transaction's primary
//!    participant (recording `abort` if there is none) and roll the intent forward or back.
//!    Any number of proxies may resolve one transaction at once: the decision is written once,
//!    so they agree.
//! 5. **Conflicts** (a live lock) abort and retry with jittered backoff; after `retries`
//!    attempts the client gets `-TRYAGAIN`. No transaction waits for a lock, so none can
//!    deadlock.
//!
//! Reads are not part of transactions, but never go back in time: a read checks its keys' locks
//! first and rolls a committed transaction forward ([`settle`]).

mod error;
pub mod plan;
pub mod scripts;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::error::ReplyError;
use error::TxnError;
pub use error::{CallError, ResolveError};

use crate::backend::{Pick, Reply};
use crate::metrics::Metrics;
use crate::protocol::{
    write_array_header, write_error, write_integer, write_simple, Proto, Request, Value,
};
use crate::topology::{Topology, TopologyHandle};

/// The prefix of every key Keyway keeps on the servers (locks, intents, decisions, the index);
/// no client command may name one (`server::plan`).
pub const RESERVED_PREFIX: &[u8] = b"__keyway:";

/// The index of intents on each server.
pub const INDEX_KEY: &[u8] = b"__keyway:txs";

/// How long a coordinator's lease lives on each server without renewal: a Keyway that dies
/// leaves locks that other Keyways resolve at once after this, not after `lock_timeout`.
pub const LEASE: Duration = Duration::from_millis(1000);

/// How often each Keyway renews its lease on every server.
const LEASE_RENEWAL: Duration = Duration::from_millis(250);

/// This process's identity as a two-phase coordinator (random, 16 hex digits): the `owner` of
/// its intents and the name of its lease.
pub fn coordinator() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("{:016x}", rand::random::<u64>()))
}

/// Two-phase transactions of this process between their prepare and their end: the lease is
/// renewed only while there is one (a prepare sets it).
static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts a transaction in [`IN_FLIGHT`] while it lives. The last one to end drops the lease on
/// its participants where no intent is left ([`scripts::LEASE`]): an idle Keyway leaves no key.
struct InFlight<'a> {
    topo: &'a Topology,
    plan: &'a Plan,
    pick: Pick,
}

impl<'a> InFlight<'a> {
    fn enter(topo: &'a Topology, plan: &'a Plan, pick: Pick) -> InFlight<'a> {
        IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight { topo, plan, pick }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 1 {
            let frame = lease_frame();
            for &server in self.plan.parts.keys() {
                if let Some(s) = self.topo.server(server) {
                    // Its reply is not needed: a lease left behind expires within LEASE.
                    drop(s.pool.send_script(self.pick, frame.clone()));
                }
            }
        }
    }
}

/// A transaction this process could not finish on some prepared participants: its commit
/// point's reply never came (outcome unknown), or a secondary commit or an abort did not reach
/// a participant. Those stay locked, and while this Keyway runs other transactions its lease
/// lives on, so no other Keyway would take it for dead before `lock_timeout`. The sweep
/// resolves it at its next pass instead ([`resolve_abandoned`]).
struct Abandoned {
    txid: String,
    /// The primary participant's name: where the decision is read or recorded.
    primary: String,
    /// The prepared participants not resolved yet, by name.
    participants: Vec<String>,
    since: std::time::Instant,
}

/// Transactions abandoned by this process, waiting for the sweep. Bounded by
/// [`ABANDONED_MAX`]: past it, `lock_timeout` resolves the rest as before.
static ABANDONED: std::sync::Mutex<Vec<Abandoned>> = std::sync::Mutex::new(Vec::new());
const ABANDONED_MAX: usize = 4096;

/// Hands transaction `txid`, whose primary participant is `primary`, to the sweep, to be
/// resolved on `participants`: prepared servers this coordinator could not finish (the commit
/// point did not answer, or a secondary commit or an abort did not reach them).
fn abandon(topo: &Topology, txid: &str, primary: u16, participants: &[u16]) {
    let Some(primary) = topo.server(primary) else {
        return;
    };
    let participants = participants
        .iter()
        .filter_map(|&server| topo.server(server).map(|s| s.name.clone()))
        .collect();
    // A poisoned list (a panic elsewhere while it was held) is still a list of transactions.
    let mut list = ABANDONED.lock().unwrap_or_else(|e| e.into_inner());
    if list.len() < ABANDONED_MAX {
        list.push(Abandoned {
            txid: txid.to_owned(),
            primary: primary.name.clone(),
            participants,
            since: std::time::Instant::now(),
        });
    }
}

/// Resolves the transactions this process abandoned ([`abandon`]) on each prepared participant
/// that is up: the decision on the primary participant is read, or `abort` recorded if there is
/// none (set once, so a commit script still in flight there is refused), and the participant
/// rolled forward or back, as any Keyway's recovery would. What cannot be resolved yet is kept
/// for the next pass, until `limit` (the lock timeout), after which the ordinary sweep has it.
async fn resolve_abandoned(topo: &Topology, metrics: &Metrics, limit: Duration) {
    let pending = std::mem::take(&mut *ABANDONED.lock().unwrap_or_else(|e| e.into_inner()));
    let mut left = Vec::new();
    for mut t in pending {
        let mut unresolved = Vec::new();
        for name in std::mem::take(&mut t.participants) {
            let Some(at) = topo
                .servers
                .iter()
                .position(|s| s.name == name)
                .and_then(|i| u16::try_from(i).ok())
            else {
                // No longer in the topology: nothing of it to resolve here.
                continue;
            };
            let done = topo.is_up(at)
                && match resolve(topo, Pick::from(0), at, &t.txid, &t.primary, metrics).await {
                    Ok(_) => true,
                    // The primary participant left the topology: the lock timeout applies.
                    Err(ResolveError::UnknownPrimary { .. }) => true,
                    Err(e) => {
                        tracing::debug!(txid = %t.txid, error = %e, "cannot resolve an abandoned two-phase transaction yet");
                        false
                    }
                };
            if !done {
                unresolved.push(name);
            }
        }
        if !unresolved.is_empty() && t.since.elapsed() < limit {
            t.participants = unresolved;
            left.push(t);
        }
    }
    if !left.is_empty() {
        let mut list = ABANDONED.lock().unwrap_or_else(|e| e.into_inner());
        let room = ABANDONED_MAX.saturating_sub(list.len());
        list.extend(left.into_iter().take(room));
    }
}

/// The call of [`scripts::LEASE`] for this process, as `EVAL`: its reply is not read, so a
/// `NOSCRIPT` could not be answered (the script is short).
fn lease_frame() -> Bytes {
    let frame = eval(
        scripts::LEASE,
        vec![Bytes::from_static(INDEX_KEY), lease_key(coordinator())],
        vec![Bytes::from(LEASE.as_millis().to_string())],
    );
    as_eval(&frame).unwrap_or(frame)
}

fn lease_key(coordinator: &str) -> Bytes {
    let mut k = BytesMut::with_capacity(RESERVED_PREFIX.len() + 6 + coordinator.len());
    k.extend_from_slice(RESERVED_PREFIX);
    k.extend_from_slice(b"lease:");
    k.extend_from_slice(coordinator.as_bytes());
    k.freeze()
}

/// Settings of two-phase commit.
#[derive(Clone, Debug)]
pub struct TxOptions {
    /// A lock older than this belongs to a transaction presumed dead: it is resolved.
    pub lock_timeout: Duration,
    /// Attempts of a transaction that meets live locks before `-TRYAGAIN`.
    pub retries: u32,
}

/// One staged command.
#[derive(Clone, Debug)]
pub struct Step {
    /// The command and its arguments.
    pub command: Vec<Bytes>,
    /// A read whose result replaces the command's (exact counters); empty for none.
    pub readback: Vec<Bytes>,
    /// Whether this step's result is part of the client's reply (it runs on the primary
    /// replica of its key's slot).
    pub counts: bool,
    /// The command of a MULTI/EXEC transaction this step belongs to (0 outside one).
    pub index: usize,
}

/// The commands of a transaction on one participant server.
#[derive(Clone, Debug, Default)]
pub struct Part {
    /// The user keys it locks.
    pub keys: Vec<Bytes>,
    /// What it applies, in order.
    pub steps: Vec<Step>,
}

/// How the counted step results make the client's reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyShape {
    /// The single counted result, as the server gave it.
    Single,
    /// The single counted result is a counter read back as a string: answer it as an integer.
    Integer,
    /// `+OK` (MSET).
    Ok,
    /// The sum of the counted integer results (DEL, UNLINK over several keys).
    Sum,
    /// A MULTI/EXEC transaction: an array with one reply per queued command, each made from
    /// the counted results of the steps with its [`Step::index`], by its own shape.
    Exec(Vec<ReplyShape>),
}

/// A transaction: its parts by server index, its primary participant, its reply shape.
#[derive(Clone, Debug)]
pub struct Plan {
    pub parts: BTreeMap<u16, Part>,
    pub primary: u16,
    pub reply: ReplyShape,
}

/// The two-phase lock of `key` (`__keyway:lock:<key>`): while it exists a transaction that may
/// still change the key is open on that server.
pub(crate) fn lock_key(key: &[u8]) -> Bytes {
    let mut k = BytesMut::with_capacity(key.len() + 14);
    k.put_slice(b"__keyway:lock:");
    k.put_slice(key);
    k.freeze()
}

fn intent_key(txid: &str) -> Bytes {
    Bytes::from(format!("__keyway:tx:{txid}"))
}

fn decision_key(txid: &str) -> Bytes {
    Bytes::from(format!("__keyway:decision:{txid}"))
}

/// MessagePack for the two shapes the scripts unpack: arrays of strings, and arrays of
/// `[command, readback]` pairs. Lua strings are bytes, so values pass through unchanged.
fn pack_array_header(out: &mut BytesMut, n: usize) {
    if n < 16 {
        out.put_u8(0x90 | n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.put_u8(0xdc);
        out.put_u16(n);
    } else {
        out.put_u8(0xdd);
        out.put_u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
}

fn pack_str(out: &mut BytesMut, s: &[u8]) {
    let n = s.len();
    if n < 32 {
        out.put_u8(0xa0 | n as u8);
    } else if let Ok(n) = u8::try_from(n) {
        out.put_u8(0xd9);
        out.put_u8(n);
    } else if let Ok(n) = u16::try_from(n) {
        out.put_u8(0xda);
        out.put_u16(n);
    } else {
        out.put_u8(0xdb);
        out.put_u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    out.put_slice(s);
}

/// Bytes [`pack_str`] writes for a string of `n` bytes (at most).
fn packed_len(n: usize) -> usize {
    n + 5
}

fn pack_strings(items: &[Bytes]) -> Bytes {
    let mut out =
        BytesMut::with_capacity(5 + items.iter().map(|i| packed_len(i.len())).sum::<usize>());
    pack_array_header(&mut out, items.len());
    for i in items {
        pack_str(&mut out, i);
    }
    out.freeze()
}

fn pack_steps(steps: &[Step]) -> Bytes {
    let size = steps
        .iter()
        .flat_map(|s| s.command.iter().chain(&s.readback))
        .map(|a| packed_len(a.len()))
        .sum::<usize>();
    let mut out = BytesMut::with_capacity(5 + 16 * steps.len() + size);
    pack_array_header(&mut out, steps.len());
    for s in steps {
        pack_array_header(&mut out, 2);
        pack_array_header(&mut out, s.command.len());
        for a in &s.command {
            pack_str(&mut out, a);
        }
        pack_array_header(&mut out, s.readback.len());
        for a in &s.readback {
            pack_str(&mut out, a);
        }
    }
    out.freeze()
}

/// A call of one of Keyway's scripts, as `EVALSHA`: the servers keep the compiled script, so a
/// call costs neither the body's bytes nor the server's hashing of them (a 1.5 KB script:
/// redis-server runs EVALSHA 2.6x as fast as EVAL). A server that answers `NOSCRIPT` (restarted,
/// or `SCRIPT FLUSH`ed) gets the same call as `EVAL` (see [`script_reply`]), which loads it again.
fn eval(script: &'static str, keys: Vec<Bytes>, args: Vec<Bytes>) -> Bytes {
    // Written straight into a buffer of its final size: no argument list, no reallocation.
    let sha = sha_of(script);
    let numkeys = keys.len().to_string();
    let head: [&[u8]; 3] = [b"EVALSHA", &sha, numkeys.as_bytes()];
    let all = || {
        head.iter()
            .copied()
            .chain(keys.iter().chain(&args).map(|b| b.as_ref()))
    };
    let mut out = BytesMut::with_capacity(16 + all().map(|a| a.len() + 16).sum::<usize>());
    crate::protocol::write_array_header(&mut out, 3 + keys.len() + args.len());
    for a in all() {
        crate::protocol::write_bulk(&mut out, a);
    }
    out.freeze()
}

/// SHA1 hex of each of Keyway's scripts, computed once.
fn shas() -> &'static [(&'static str, Bytes)] {
    static SHAS: std::sync::OnceLock<Vec<(&'static str, Bytes)>> = std::sync::OnceLock::new();
    SHAS.get_or_init(|| {
        scripts::ALL
            .iter()
            .map(|&script| (script, sha1_hex(script.as_bytes())))
            .collect()
    })
}

fn sha1_hex(body: &[u8]) -> Bytes {
    use sha1::Digest;
    let digest = sha1::Sha1::digest(body);
    let mut hex = String::with_capacity(40);
    for b in digest.iter() {
        hex.push_str(&format!("{b:02x}"));
    }
    Bytes::from(hex)
}

fn sha_of(script: &'static str) -> Bytes {
    shas()
        .iter()
        .find(|(s, _)| std::ptr::eq(*s, script))
        .map_or_else(|| sha1_hex(script.as_bytes()), |(_, sha)| sha.clone())
}

/// The `EVAL` form of an `EVALSHA` frame of one of Keyway's scripts: the SHA1 replaced by the
/// body. `None` for any other frame.
fn as_eval(frame: &[u8]) -> Option<Bytes> {
    const HEAD: &[u8] = b"$7\r\nEVALSHA\r\n$40\r\n";
    let count_end = frame.iter().position(|&b| b == b'\n')? + 1;
    let rest = frame.get(count_end..)?.strip_prefix(HEAD)?;
    let sha = rest.get(..40)?;
    let tail = rest.get(42..)?;
    let (body, _) = shas().iter().find(|(_, s)| s.as_ref() == sha)?;
    let mut out = BytesMut::with_capacity(frame.len() + body.len());
    out.extend_from_slice(frame.get(..count_end)?);
    out.extend_from_slice(b"$4\r\nEVAL\r\n");
    out.extend_from_slice(format!("${}\r\n", body.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(tail);
    Some(out.freeze())
}

/// The parsed reply of a script call already sent on `rx` to `server` as `frame`; on
/// `NOSCRIPT`, the call once more as `EVAL`.
async fn script_reply(
    server: &crate::topology::Server,
    pick: Pick,
    rx: oneshot::Receiver<Reply>,
    frame: &[u8],
) -> Result<Value, CallError> {
    match reply_of(&server.name, rx).await {
        Err(CallError::ErrorReply { message, .. }) if message.starts_with("NOSCRIPT") => {
            let Some(eval) = as_eval(frame) else {
                return Err(CallError::ErrorReply {
                    server: server.name.clone(),
                    message,
                });
            };
            reply_of(&server.name, server.pool.send_script(pick, eval)).await
        }
        other => other,
    }
}

/// Sends one of Keyway's scripts to participant `server` and parses its reply.
async fn call(topo: &Topology, server: u16, pick: Pick, frame: Bytes) -> Result<Value, CallError> {
    let Some(s) = topo.server(server) else {
        return Err(CallError::NoSuchServer);
    };
    script_reply(s, pick, s.pool.send_script(pick, frame.clone()), &frame).await
}

/// As [`call`], for a plain command (whose error replies speak of the server's health).
async fn call_command(
    topo: &Topology,
    server: u16,
    pick: Pick,
    frame: Bytes,
) -> Result<Value, CallError> {
    let Some(s) = topo.server(server) else {
        return Err(CallError::NoSuchServer);
    };
    reply_of(&s.name, s.pool.send(pick, frame)).await
}

/// The reply that participant `server` sends on `rx`, parsed; an error reply is an error.
async fn reply_of(server: &str, rx: oneshot::Receiver<Reply>) -> Result<Value, CallError> {
    let frame = match rx.await {
        Ok(Ok(frame)) => frame,
        Ok(Err(e)) => return Err(CallError::Backend(e)),
        Err(_) => {
            return Err(CallError::ConnectionEnded {
                server: server.to_owned(),
            })
        }
    };
    match Value::parse(&frame) {
        Ok(Value::Error(message)) => Err(CallError::ErrorReply {
            server: server.to_owned(),
            message: String::from_utf8_lossy(&message).into_owned(),
        }),
        Ok(value) => Ok(value),
        Err(error) => Err(CallError::Malformed {
            server: server.to_owned(),
            error,
        }),
    }
}

fn int_at(v: &Value, i: usize) -> Option<i64> {
    match v {
        Value::Array(items) => match items.get(i) {
            Some(Value::Integer(n)) => Some(*n),
            _ => None,
        },
        _ => None,
    }
}

fn bulk_at(v: &Value, i: usize) -> Option<String> {
    match v {
        Value::Array(items) => match items.get(i) {
            Some(Value::Bulk(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        },
        _ => None,
    }
}

/// Test-only failpoints (debug builds): `KW_FAILPOINT=after_prepare`,
/// `after_primary_commit` or `between_secondary_commits` makes the process exit at once at
/// that step, as a crash would; `pause_after_prepare` makes it wait 1.5 s there (for a test to
/// kill a participant between prepare and commit). Release builds compile this to nothing.
async fn failpoint(name: &str) {
    #[cfg(debug_assertions)]
    {
        if std::env::var("KW_FAILPOINT").is_ok_and(|f| f == name) {
            tracing::error!(failpoint = name, "failpoint: exiting");
            std::process::exit(86);
        }
        let pause = format!("pause_{name}");
        if std::env::var("KW_FAILPOINT").is_ok_and(|f| f == pause) {
            tracing::warn!(failpoint = %pause, "failpoint: pausing");
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// A key lock that a script met: the transaction holding it, and how old that one's intent is.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Lock {
    /// The holder's txid.
    holder: String,
    /// The age of the holder's intent, in the server's time; -1 when it has none.
    age_ms: i64,
    /// The participant the lock is on, and its name.
    server: u16,
    name: String,
    /// Whether the holder's coordinator still renews its lease there.
    alive: bool,
    /// The lock key itself (`__keyway:lock:<key>`), when the script said it.
    key: Option<Bytes>,
}

impl Lock {
    /// The lock in a no vote (`{0, holder_txid, holder_age_ms, alive}`) from `server`.
    fn from_vote(vote: &Value, server: u16, name: &str) -> Lock {
        Lock {
            holder: bulk_at(vote, 1).unwrap_or_default(),
            age_ms: int_at(vote, 2).unwrap_or(-1),
            server,
            name: name.to_owned(),
            alive: int_at(vote, 3) != Some(0),
            key: match vote {
                Value::Array(items) => match items.get(4) {
                    Some(Value::Bulk(k)) => Some(k.clone()),
                    _ => None,
                },
                _ => None,
            },
        }
    }

    /// Whether its holder is presumed dead: its coordinator's lease has expired, or its intent
    /// is older than `lock_timeout`, or gone.
    fn is_stale(&self, lock_timeout: Duration) -> bool {
        let timeout_ms = i64::try_from(lock_timeout.as_millis()).unwrap_or(i64::MAX);
        !self.alive || self.age_ms < 0 || self.age_ms > timeout_ms
    }
}

/// What a prepare round found.
enum Votes {
    /// Every participant locked its keys and stored the intent.
    Yes,
    /// A key is locked by another transaction.
    Conflict(Lock),
    /// A participant could not be asked, or answered what a prepare never does.
    Failed(CallError),
}

/// How one attempt of a transaction ended.
enum Attempt {
    /// Committed: the client's reply.
    Done(Bytes),
    /// A key was locked by another transaction, and nothing was written: worth a retry.
    Conflict(Lock),
    /// Not committed, or not known to be: not retried.
    Failed(TxnError),
}

/// Runs a transaction to its end and returns the client's reply: the commands' results, or
/// an error saying what happened (`-TRYAGAIN` when nothing was written and retrying is safe).
pub async fn execute(
    topo: Arc<Topology>,
    pick: impl Into<Pick>,
    plan: Plan,
    options: &TxOptions,
    metrics: &Metrics,
) -> crate::error::Reply {
    let result = run(&topo, pick.into(), &plan, options, metrics).await;
    metrics.txn_outcome(match &result {
        Ok(_) => "committed",
        Err(e) => e.outcome(),
    });
    result.map_err(ReplyError::from)
}

/// Refuses a transaction with a participant down, then runs its attempts, each in one phase
/// (one participant, one replica) or two.
async fn run(
    topo: &Topology,
    pick: Pick,
    plan: &Plan,
    options: &TxOptions,
    metrics: &Metrics,
) -> Result<Bytes, TxnError> {
    // A participant that is down would block the transaction: refuse at once.
    if let Some(&down) = plan.parts.keys().find(|&&server| !topo.is_up(server)) {
        let name = topo.server(down).map_or("?", |s| s.name.as_str());
        return Err(TxnError::ParticipantDown {
            server: name.to_owned(),
        });
    }
    let single = plan.parts.len() == 1 && topo.replicas == 1;
    retrying(
        options,
        move || async move {
            if single {
                one_phase(topo, pick, plan).await
            } else {
                two_phase(topo, pick, plan, metrics).await
            }
        },
        move |lock: Lock| async move {
            let resolved = resolve_holder(topo, pick, lock.server, &lock.holder, metrics).await;
            // A lock without its intent: nothing can resolve it, so it goes.
            if let Err(ResolveError::IntentGone) = resolved {
                release_orphan(topo, pick, &lock, metrics).await;
            }
        },
    )
    .await
}

/// Runs `attempt` until it commits or fails. An attempt that met a lock is retried after
/// [`retry_delay`], at most `options.retries` times, and a lock whose holder is presumed dead
/// is handed to `resolve` first. Past the last retry: [`TxnError::Conflict`]. No attempt waits
/// for a lock, so none can deadlock.
async fn retrying<A, R>(
    options: &TxOptions,
    mut attempt: impl FnMut() -> A,
    mut resolve: impl FnMut(Lock) -> R,
) -> Result<Bytes, TxnError>
where
    A: Future<Output = Attempt>,
    R: Future<Output = ()>,
{
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let lock = match attempt().await {
            Attempt::Done(reply) => return Ok(reply),
            Attempt::Failed(e) => return Err(e),
            Attempt::Conflict(lock) => lock,
        };
        let conflict = TxnError::Conflict {
            holder: lock.holder.clone(),
            server: lock.name.clone(),
            alive: lock.alive,
        };
        if lock.is_stale(options.lock_timeout) {
            // A transaction presumed dead holds the lock: resolve it, then retry.
            resolve(lock).await;
        }
        if attempts > options.retries {
            return Err(conflict);
        }
        tokio::time::sleep(retry_delay(attempts, rand::random())).await;
    }
}

/// The wait after attempt `attempt` (counted from 1) met a lock: a base of 4 ms doubling with
/// each attempt up to 512 ms (from the eighth on), plus a jitter of up to the base again,
/// `jitter` reduced into `0..=base` (uniform for a uniform `jitter`), so that transactions that
/// collided do not collide again in step.
fn retry_delay(attempt: u32, jitter: u64) -> Duration {
    let base = 2u64 << attempt.min(8);
    Duration::from_millis(base + jitter % (base + 1))
}

async fn one_phase(topo: &Topology, pick: Pick, plan: &Plan) -> Attempt {
    let Some((&server, part)) = plan.parts.iter().next() else {
        return Attempt::Failed(TxnError::Empty);
    };
    let frame = eval(
        scripts::ONE_PHASE,
        part.keys.iter().map(|k| lock_key(k)).collect(),
        vec![pack_steps(&part.steps), proto_arg(pick.proto)],
    );
    match call(topo, server, pick, frame).await {
        Ok(v) if int_at(&v, 0) == Some(1) => Attempt::Done(reply(plan, &[(part, v)], pick.proto)),
        Ok(v) if int_at(&v, 0) == Some(0) => {
            let name = topo.server(server).map_or("?", |s| s.name.as_str());
            Attempt::Conflict(Lock::from_vote(&v, server, name))
        }
        Ok(reply) => Attempt::Failed(TxnError::OnePhase(CallError::Unexpected {
            server: topo
                .server(server)
                .map_or("?", |s| s.name.as_str())
                .to_owned(),
            script: "one-phase",
            reply,
        })),
        Err(e) => Attempt::Failed(TxnError::OnePhase(e)),
    }
}

/// Phase 1: sends the prepare script to every participant at once, and collects their votes.
async fn prepare(topo: &Topology, pick: Pick, plan: &Plan, txid: &str) -> Votes {
    let primary_name = topo
        .server(plan.primary)
        .map_or(String::new(), |s| s.name.clone());
    let intent = intent_key(txid);
    let index = Bytes::from_static(INDEX_KEY);
    let owner = Bytes::from_static(coordinator().as_bytes());
    let lease_ms = Bytes::from(LEASE.as_millis().to_string());
    let timeout_ms = i64::try_from(topo.config.timeout.as_millis()).unwrap_or(i64::MAX);
    let sent_ms = crate::health::epoch_ms();
    let mut pending = Vec::with_capacity(plan.parts.len());
    // The primary participant is not prepared: its commit checks and applies at once.
    for (&server, part) in plan.parts.iter().filter(|(&s, _)| s != plan.primary) {
        let Some(s) = topo.server(server) else {
            continue;
        };
        let locks: Vec<Bytes> = part.keys.iter().map(|k| lock_key(k)).collect();
        let mut keys = vec![intent.clone(), index.clone()];
        keys.extend(locks.iter().cloned());
        // Past this instant of the server's clock this process no longer waits for the vote
        // (the offset is a lower bound, so the deadline errs early); 0 while unmeasured.
        let deadline = s.pool.health().clock_offset_ms().map_or(0, |offset| {
            sent_ms.saturating_add(offset).saturating_add(timeout_ms)
        });
        let frame = eval(
            scripts::PREPARE,
            keys,
            vec![
                Bytes::from(txid.to_owned()),
                Bytes::from(primary_name.clone()),
                pack_steps(&part.steps),
                pack_strings(&locks),
                owner.clone(),
                Bytes::from(deadline.to_string()),
                lease_ms.clone(),
            ],
        );
        pending.push((server, s, s.pool.send_script(pick, frame.clone()), frame));
    }
    let mut votes = Votes::Yes;
    for (server, s, rx, frame) in pending {
        let name = s.name.as_str();
        match script_reply(s, pick, rx, &frame).await {
            Ok(v) if int_at(&v, 0) == Some(1) => {}
            Ok(v) if int_at(&v, 0) == Some(0) => {
                if matches!(votes, Votes::Yes) {
                    votes = Votes::Conflict(Lock::from_vote(&v, server, name));
                }
            }
            Ok(v) if int_at(&v, 0) == Some(-2) => {
                votes = Votes::Failed(CallError::Late {
                    server: name.to_owned(),
                    late_ms: int_at(&v, 1).unwrap_or(0),
                })
            }
            Ok(reply) => {
                votes = Votes::Failed(CallError::Unexpected {
                    server: name.to_owned(),
                    script: "prepare",
                    reply,
                })
            }
            Err(e) => votes = Votes::Failed(e),
        }
    }
    votes
}

async fn two_phase(topo: &Topology, pick: Pick, plan: &Plan, metrics: &Metrics) -> Attempt {
    let txid = format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    let intent = intent_key(&txid);
    let decision = decision_key(&txid);
    let index = Bytes::from_static(INDEX_KEY);

    // Phase 1: prepare the other participants, in parallel.
    let _in_flight = InFlight::enter(topo, plan, pick);
    let votes = prepare(topo, pick, plan, &txid).await;
    metrics.txn_prepare(matches!(votes, Votes::Yes));
    failpoint("after_prepare").await;
    match votes {
        // Preparing -> Committing.
        Votes::Yes => {}
        // Preparing -> Aborting, then a retry.
        Votes::Conflict(lock) => {
            abort_all(topo, pick, plan, &txid).await;
            return Attempt::Conflict(lock);
        }
        // Preparing -> Aborting, and the client is told.
        Votes::Failed(e) => {
            abort_all(topo, pick, plan, &txid).await;
            return Attempt::Failed(TxnError::PrepareFailed(e));
        }
    }

    // Phase 2: the commit point, on the primary participant.
    // The other participants' commit (they were prepared; the decision is not theirs).
    let commit = || {
        eval(
            scripts::COMMIT,
            vec![intent.clone(), index.clone(), decision.clone()],
            vec![
                Bytes::from(txid.clone()),
                Bytes::from_static(b"0"),
                proto_arg(pick.proto),
            ],
        )
    };
    let primary_commit = {
        let part = plan.parts.get(&plan.primary);
        let mut keys = vec![decision.clone()];
        keys.extend(part.iter().flat_map(|p| p.keys.iter()).map(|k| lock_key(k)));
        eval(
            scripts::COMMIT_PRIMARY,
            keys,
            vec![
                Bytes::from(txid.clone()),
                pack_steps(part.map_or(&[][..], |p| &p.steps)),
                proto_arg(pick.proto),
            ],
        )
    };
    let primary_value = match call(topo, plan.primary, pick, primary_commit).await {
        Ok(v) if int_at(&v, 0) == Some(1) => v,
        Ok(v) if int_at(&v, 0) == Some(0) => {
            // Another transaction holds a key on the primary participant: nothing applied.
            metrics.txn_commit(false);
            abort_all(topo, pick, plan, &txid).await;
            let name = topo.server(plan.primary).map_or("?", |s| s.name.as_str());
            return Attempt::Conflict(Lock::from_vote(&v, plan.primary, name));
        }
        Ok(v) if int_at(&v, 0) == Some(-1) => {
            // Recovery aborted this transaction (it looked dead): nothing was applied.
            metrics.txn_commit(false);
            abort_all(topo, pick, plan, &txid).await;
            return Attempt::Failed(TxnError::AbortedByRecovery);
        }
        Ok(_) => {
            metrics.txn_commit(false);
            return Attempt::Failed(TxnError::IntentVanished);
        }
        Err(e) => {
            metrics.txn_commit(false);
            // Committing -> unknown: the sweep resolves it soon, not after lock_timeout.
            let prepared: Vec<u16> = plan
                .parts
                .keys()
                .copied()
                .filter(|&server| server != plan.primary)
                .collect();
            abandon(topo, &txid, plan.primary, &prepared);
            return Attempt::Failed(TxnError::CommitUnknown(e));
        }
    };
    metrics.txn_commit(true);
    failpoint("after_primary_commit").await;

    // Phase 3: the other participants, in parallel.
    let mut results: Vec<(&Part, Value)> = Vec::with_capacity(plan.parts.len());
    if let Some(p) = plan.parts.get(&plan.primary) {
        results.push((p, primary_value));
    }
    let mut others = Vec::new();
    for (&server, part) in &plan.parts {
        if server == plan.primary {
            continue;
        }
        let Some(s) = topo.server(server) else {
            continue;
        };
        let frame = commit();
        others.push((
            server,
            part,
            s,
            s.pool.send_script(pick, frame.clone()),
            frame,
        ));
        failpoint("between_secondary_commits").await;
    }
    let mut all_acknowledged = true;
    let mut missing: Option<String> = None;
    let mut unfinished = Vec::new();
    for (server, part, s, rx, frame) in others {
        let acknowledged = match script_reply(s, pick, rx, &frame).await {
            Ok(v) if int_at(&v, 0) == Some(1) => {
                results.push((part, v));
                true
            }
            // Nothing staged here any more: the intent was removed (by a script that reached
            // `__keyway:tx:*`), or recovery took this transaction for dead and applied it.
            // Keyway cannot tell which, nor give this part's results: the client is told,
            // never answered as if all went through.
            Ok(v) if int_at(&v, 0) == Some(0) => {
                tracing::error!(
                    txid = %txid,
                    server = %s.name,
                    "two-phase commit found no intent on a secondary participant after the commit point; the client gets an error"
                );
                missing.get_or_insert_with(|| s.name.clone());
                false
            }
            Ok(_) | Err(_) => {
                unfinished.push(server);
                false
            }
        };
        // A secondary that failed after the commit point is rolled forward by recovery, which
        // needs the decision; otherwise the decision has served its purpose.
        all_acknowledged &= acknowledged;
    }
    if !unfinished.is_empty() {
        // Committed; the sweep rolls these forward soon, not after lock_timeout.
        abandon(topo, &txid, plan.primary, &unfinished);
    }
    if let Some(server) = missing {
        return Attempt::Failed(TxnError::SecondaryIntentMissing { server });
    }
    if all_acknowledged {
        let del = Request::from_args(&[Bytes::from_static(b"DEL"), decision.clone()]);
        if let Some(s) = topo.server(plan.primary) {
            // Sent; its reply is not needed (a decision left behind expires in a day).
            drop(s.pool.send(pick, del.frame().clone()));
        }
    }
    Attempt::Done(reply(plan, &results, pick.proto))
}

/// Releases a transaction everywhere. The coordinator records no decision for its own abort:
/// only it could have committed, so nobody else can; a participant that stays locked (its
/// prepare arrived late, or its abort was lost) is resolved by recovery, which records `abort`.
async fn abort_all(topo: &Topology, pick: Pick, plan: &Plan, txid: &str) {
    let frame = |is_primary: bool| {
        eval(
            scripts::ABORT,
            vec![
                intent_key(txid),
                Bytes::from_static(INDEX_KEY),
                decision_key(txid),
            ],
            vec![
                Bytes::from(txid.to_string()),
                Bytes::from_static(if is_primary { b"1" } else { b"0" }),
                proto_arg(pick.proto),
            ],
        )
    };
    let mut replies = Vec::with_capacity(plan.parts.len());
    // The primary participant was not prepared: nothing to release there.
    for &server in plan.parts.keys().filter(|&&s| s != plan.primary) {
        if let Some(s) = topo.server(server) {
            let frame = frame(false);
            replies.push((server, s, s.pool.send_script(pick, frame.clone()), frame));
        }
    }
    let mut unreleased = Vec::new();
    for (server, s, rx, frame) in replies {
        if script_reply(s, pick, rx, &frame).await.is_err() {
            unreleased.push(server);
        }
    }
    if !unreleased.is_empty() {
        // Their prepare may have taken locks there (or may still, run late): the sweep
        // releases them soon (recording `abort`), not after lock_timeout.
        abandon(topo, txid, plan.primary, &unreleased);
    }
}

/// The client's reply from the participants' results (`{1, {r1, r2, ...}}` each).
/// The protocol the steps' results must come in, for the scripts (`2` or `3`).
fn proto_arg(proto: Proto) -> Bytes {
    match proto {
        Proto::Resp2 => Bytes::from_static(b"2"),
        Proto::Resp3 => Bytes::from_static(b"3"),
    }
}

/// The client's reply in `proto`. The results come over a connection of the client's protocol
/// and the scripts apply the steps in it (`redis.setresp(3)`), so maps, sets and doubles are the
/// commands' own; a null reached the script as `nil`, which it returns as `false`.
fn reply(plan: &Plan, results: &[(&Part, Value)], proto: Proto) -> Bytes {
    // Counted results, with the command each belongs to.
    let mut counted: Vec<(usize, Value)> = Vec::new();
    for (part, v) in results {
        let Value::Array(items) = v else { continue };
        let Some(Value::Array(outs)) = items.get(1) else {
            continue;
        };
        for (step, out) in part.steps.iter().zip(outs) {
            if step.counts {
                let null = out.is_null() || *out == Value::Boolean(false);
                let value = match (null, proto) {
                    (true, Proto::Resp3) => Value::Null,
                    (true, Proto::Resp2) if answers_null_array(&step.command) => Value::NilArray,
                    _ => out.clone(),
                };
                counted.push((step.index, value));
            }
        }
    }
    let mut out = BytesMut::new();
    match &plan.reply {
        ReplyShape::Exec(shapes) => {
            write_array_header(&mut out, shapes.len());
            for (index, shape) in shapes.iter().enumerate() {
                let mine: Vec<Value> = counted
                    .iter()
                    .filter(|(i, _)| *i == index)
                    .map(|(_, v)| v.clone())
                    .collect();
                shaped(shape, &mine, &mut out);
            }
        }
        shape => {
            let all: Vec<Value> = counted.into_iter().map(|(_, v)| v).collect();
            shaped(shape, &all, &mut out);
        }
    }
    out.freeze()
}

/// One command's reply from its counted results.
fn shaped(shape: &ReplyShape, counted: &[Value], out: &mut BytesMut) {
    const NONE: &str = "ERR keyway: no result from the primary replica";
    match shape {
        ReplyShape::Single => match counted.first() {
            Some(v) => v.encode(out),
            None => write_error(out, NONE),
        },
        ReplyShape::Integer => match counted.first() {
            Some(Value::Bulk(b)) => match std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            {
                Some(n) => write_integer(out, n),
                None => Value::Bulk(b.clone()).encode(out),
            },
            Some(v) => v.encode(out),
            None => write_error(out, NONE),
        },
        ReplyShape::Ok => match counted.iter().find(|v| v.is_error()) {
            Some(e) => e.encode(out),
            None => write_simple(out, "OK"),
        },
        ReplyShape::Sum => {
            let sum: i64 = counted
                .iter()
                .map(|v| if let Value::Integer(n) = v { *n } else { 0 })
                .sum();
            write_integer(out, sum);
        }
        // Not nested: a transaction's commands have their own shapes.
        ReplyShape::Exec(_) => write_error(out, NONE),
    }
}

/// Whether redis-server answers `command`'s null as a null array (`*-1`) rather than a null
/// bulk string: the pops that take a count. A script sees both as `false`, so the engine puts
/// back the one the command would have sent.
fn answers_null_array(command: &[Bytes]) -> bool {
    let Some(name) = command.first() else {
        return false;
    };
    let counted_pop = (name.eq_ignore_ascii_case(b"LPOP") || name.eq_ignore_ascii_case(b"RPOP"))
        && command.len() > 2;
    counted_pop || name.eq_ignore_ascii_case(b"LMPOP") || name.eq_ignore_ascii_case(b"ZMPOP")
}

/// How a transaction was resolved by recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Commit,
    Abort,
}

/// Resolves transaction `txid`, found on server `at`: reads (or records) the decision on its
/// primary participant, then rolls the intent on `at` forward or back.
///
/// # Errors
///
/// [`ResolveError::UnknownPrimary`] when the primary participant is not in this topology,
/// [`ResolveError::Call`] when it or server `at` cannot be asked (unreachable, no answer in
/// time, an error reply); the intent then stays for a later attempt.
pub async fn resolve(
    topo: &Topology,
    pick: impl Into<Pick>,
    at: u16,
    txid: &str,
    primary: &str,
    metrics: &Metrics,
) -> Result<Decision, ResolveError> {
    let pick = pick.into();
    let unknown = || ResolveError::UnknownPrimary {
        primary: primary.to_owned(),
    };
    let primary_index = topo
        .servers
        .iter()
        .position(|s| s.name == primary)
        .and_then(|index| u16::try_from(index).ok())
        .ok_or_else(unknown)?;
    let decided = call(
        topo,
        primary_index,
        pick,
        eval(scripts::DECIDE, vec![decision_key(txid)], vec![]),
    )
    .await?;
    let decision = match decided {
        Value::Bulk(b) if b.as_ref() == b"commit" => Decision::Commit,
        _ => Decision::Abort,
    };
    let is_primary = Bytes::from_static(if at == primary_index { b"1" } else { b"0" });
    let keys = vec![
        intent_key(txid),
        Bytes::from_static(INDEX_KEY),
        decision_key(txid),
    ];
    let args = vec![Bytes::from(txid.to_string()), is_primary];
    let script = match decision {
        Decision::Commit => scripts::COMMIT,
        Decision::Abort => scripts::ABORT,
    };
    call(topo, at, pick, eval(script, keys, args)).await?;
    metrics.txn_recovered(decision == Decision::Commit);
    tracing::info!(txid, ?decision, "resolved a stale two-phase transaction");
    Ok(decision)
}

/// Deletes a lock whose intent is gone, if its holder still holds it and still has no intent
/// there ([`scripts::ORPHAN`]): such a lock would refuse every write to its key forever. Only a
/// hand or a script that deleted the intent leaves one; it is logged and counted.
async fn release_orphan(topo: &Topology, pick: Pick, lock: &Lock, metrics: &Metrics) {
    let Some(key) = lock.key.clone() else { return };
    let frame = eval(
        scripts::ORPHAN,
        vec![key.clone()],
        vec![Bytes::from(lock.holder.clone())],
    );
    if let Ok(v) = call(topo, lock.server, pick, frame).await {
        if matches!(v, Value::Integer(1)) {
            metrics.txn_recovered(false);
            tracing::warn!(
                txid = %lock.holder,
                server = %lock.name,
                lock = %String::from_utf8_lossy(&key),
                "deleted a two-phase lock whose intent was gone (removed outside Keyway)"
            );
        }
    }
}

/// Resolves the holder of a lock met by a prepare: its primary is read from its intent.
async fn resolve_holder(
    topo: &Topology,
    pick: Pick,
    at: u16,
    holder: &str,
    metrics: &Metrics,
) -> Result<Decision, ResolveError> {
    let intent = intent_key(holder);
    let frame = Request::from_args(&[
        Bytes::from_static(b"HGET"),
        intent,
        Bytes::from_static(b"primary"),
    ])
    .frame()
    .clone();
    match call_command(topo, at, pick, frame).await? {
        Value::Bulk(primary) => {
            let primary = String::from_utf8_lossy(&primary).into_owned();
            resolve(topo, pick, at, holder, &primary, metrics).await
        }
        _ => Err(ResolveError::IntentGone),
    }
}

/// The background sweep: every `pool.two_phase.sweep_interval`, resolves the transactions this
/// process abandoned with their outcome unknown ([`resolve_abandoned`]), then, on every server
/// that is up, the intents older than `lock_timeout` or whose coordinator's lease expired. It runs whatever the write mode (a pool may
/// leave `two_phase` with transactions still open) and costs one script call per server when
/// there is nothing to do. Runs until `stop`.
pub async fn sweep(handle: Arc<TopologyHandle>, stop: tokio_util::sync::CancellationToken) {
    loop {
        let interval = handle.load().config.two_phase.sweep_interval;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
        let topo = handle.load();
        resolve_abandoned(&topo, handle.metrics(), topo.config.two_phase.lock_timeout).await;
        let timeout_ms = Bytes::from(topo.config.two_phase.lock_timeout.as_millis().to_string());
        for index in 0..topo.servers.len() {
            let Ok(at) = u16::try_from(index) else { break };
            if !topo.is_up(at) {
                continue;
            }
            let frame = eval(
                scripts::SWEEP,
                vec![Bytes::from_static(INDEX_KEY)],
                vec![timeout_ms.clone()],
            );
            let Ok(Value::Array(found)) = call(&topo, at, Pick::from(0), frame).await else {
                continue;
            };
            for pair in found.chunks(2) {
                let (Some(Value::Bulk(txid)), Some(Value::Bulk(primary))) =
                    (pair.first(), pair.get(1))
                else {
                    continue;
                };
                let txid = String::from_utf8_lossy(txid).into_owned();
                let primary = String::from_utf8_lossy(primary).into_owned();
                if let Err(e) =
                    resolve(&topo, Pick::from(0), at, &txid, &primary, handle.metrics()).await
                {
                    tracing::warn!(txid, error = %e, "cannot resolve a stale two-phase transaction yet");
                }
            }
        }
    }
}

/// `MGET` of the lock keys of `keys`: the check a read makes under `two_phase` before it runs.
pub fn lock_check<'a>(keys: impl Iterator<Item = &'a [u8]> + Clone) -> Bytes {
    let n = keys.clone().count();
    let size = 16 + keys.clone().map(|k| k.len() + 32).sum::<usize>();
    let mut out = BytesMut::with_capacity(size);
    crate::protocol::write_array_header(&mut out, n + 1);
    crate::protocol::write_bulk(&mut out, b"MGET");
    for k in keys {
        crate::protocol::write_bulk(&mut out, &lock_key(k));
    }
    out.freeze()
}

/// The transactions holding the locks a [`lock_check`] reply names (none, the usual case, is
/// seen without parsing: every element a null).
pub fn lock_holders(reply: &Bytes) -> Vec<String> {
    let body = reply
        .iter()
        .position(|&b| b == b'\n')
        .and_then(|i| reply.get(i + 1..))
        .unwrap_or_default();
    let mut rest = body;
    while let Some(next) = rest
        .strip_prefix(b"$-1\r\n".as_slice())
        .or_else(|| rest.strip_prefix(b"_\r\n".as_slice()))
    {
        rest = next;
    }
    if rest.is_empty() {
        return Vec::new();
    }
    match Value::parse(reply) {
        Ok(Value::Array(items)) => {
            let mut holders: Vec<String> = items
                .iter()
                .filter_map(|v| match v {
                    Value::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    _ => None,
                })
                .collect();
            holders.sort();
            holders.dedup();
            holders
        }
        _ => Vec::new(),
    }
}

/// Settles, for a read on server `at`, the transactions holding locks there: one whose
/// decision on its primary participant is `commit` is finished on `at`, by its coordinator
/// while that one is alive ([`committed_by_coordinator`]), else here (as recovery would); one with no decision (not committed, so acknowledged to nobody) or `abort` is left
/// to its coordinator or to recovery. Never decides anything itself.
pub async fn settle(
    topo: &Topology,
    pick: Pick,
    at: u16,
    holders: Vec<String>,
) -> Result<(), ReplyError> {
    let failed = |e: CallError| {
        ReplyError::new(
            e.kind(),
            format!("keyway: a read met a two-phase lock it could not settle ({e})"),
        )
    };
    for txid in holders {
        let intent = intent_key(&txid);
        let ask = Request::from_args(&[
            Bytes::from_static(b"HMGET"),
            intent.clone(),
            Bytes::from_static(b"primary"),
            Bytes::from_static(b"owner"),
        ]);
        let (primary, owner) = match call_command(topo, at, pick, ask.frame().clone()).await {
            Ok(Value::Array(fields)) => match (fields.first(), fields.get(1)) {
                (Some(Value::Bulk(primary)), owner) => (
                    primary.clone(),
                    match owner {
                        Some(Value::Bulk(o)) => Some(o.clone()),
                        _ => None,
                    },
                ),
                // No intent any more: settled meanwhile.
                _ => continue,
            },
            Ok(_) => continue,
            Err(e) => return Err(failed(e)),
        };
        let Some(primary_index) = topo
            .servers
            .iter()
            .position(|s| s.name.as_bytes() == primary.as_ref())
            .and_then(|i| u16::try_from(i).ok())
        else {
            continue;
        };
        let decision = decision_key(&txid);
        let ask = Request::from_args(&[Bytes::from_static(b"GET"), decision.clone()]);
        match call_command(topo, primary_index, pick, ask.frame().clone()).await {
            Ok(Value::Bulk(d)) if d.as_ref() == b"commit" => {}
            Ok(_) => continue,
            Err(e) => return Err(failed(e)),
        }
        // Committed. A live coordinator is committing this server right now: wait for it (it
        // needs this server's results for its client's reply) rather than finish it here.
        if let Some(owner) = owner {
            if committed_by_coordinator(topo, pick, at, &intent, &owner).await {
                continue;
            }
        }
        let is_primary = Bytes::from_static(if at == primary_index { b"1" } else { b"0" });
        let frame = eval(
            scripts::COMMIT,
            vec![intent, Bytes::from_static(INDEX_KEY), decision],
            vec![Bytes::from(txid.clone()), is_primary, proto_arg(pick.proto)],
        );
        call(topo, at, pick, frame).await.map_err(failed)?;
        tracing::debug!(
            txid,
            "a read rolled a committed two-phase transaction forward"
        );
    }
    Ok(())
}

/// Waits, up to about [`LEASE`], for the intent `intent` on server `at` to go while its
/// coordinator `owner` holds its lease there: `true` once it went (the coordinator committed
/// this server), `false` when the coordinator is gone or slower than that.
async fn committed_by_coordinator(
    topo: &Topology,
    pick: Pick,
    at: u16,
    intent: &Bytes,
    owner: &Bytes,
) -> bool {
    let ask = Request::from_args(&[
        Bytes::from_static(b"EXISTS"),
        intent.clone(),
        lease_key(&String::from_utf8_lossy(owner)),
    ]);
    let mut waited = Duration::ZERO;
    let mut pause = Duration::from_micros(250);
    while waited < LEASE {
        match call_command(topo, at, pick, ask.frame().clone()).await {
            // Intent and lease both there: the coordinator is at work.
            Ok(Value::Integer(2)) => {}
            // Only the lease: the intent went.
            Ok(Value::Integer(1)) => {
                let only_intent =
                    Request::from_args(&[Bytes::from_static(b"EXISTS"), intent.clone()]);
                return matches!(
                    call_command(topo, at, pick, only_intent.frame().clone()).await,
                    Ok(Value::Integer(0))
                );
            }
            Ok(Value::Integer(0)) => return true,
            _ => return false,
        }
        tokio::time::sleep(pause).await;
        waited += pause;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    false
}

/// Renews this process's coordinator lease, every [`LEASE_RENEWAL`] while one of its two-phase
/// transactions is open, on every server that is up and has an intent open (its prepare set the
/// lease first). Runs until `stop`.
pub async fn lease(handle: Arc<TopologyHandle>, stop: tokio_util::sync::CancellationToken) {
    let frame = lease_frame();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LEASE_RENEWAL) => {}
            _ = stop.cancelled() => return,
        }
        if IN_FLIGHT.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            continue;
        }
        let topo = handle.load();
        for (index, server) in topo.servers.iter().enumerate() {
            if u16::try_from(index).is_ok_and(|i| topo.is_up(i)) {
                // Its reply is not needed: a lost renewal only lets others resolve sooner.
                drop(server.pool.send_script(Pick::from(0), frame.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests;
