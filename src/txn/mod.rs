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
//! 1. **Prepare**, one EVAL per participant server, in parallel: lock every key of the
//!    transaction on that server (`__keyway:lock:<key>` = txid; a key locked by another
//!    transaction is a no vote) and store the intent (the staged commands, the participants'
//!    primary, the server time). Nothing user-visible changes.
//! 2. **Decide**: if every participant voted yes, commit on the **primary participant** first:
//!    one EVAL that records `__keyway:decision:<txid> = commit` (unless `abort` is recorded),
//!    applies the commands and releases the locks. That write is the commit point. Otherwise
//!    abort: record `abort` on the primary (written once) and release every lock.
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
//! Reads are not part of transactions: a read may see one replica committed before another.

pub mod plan;
pub mod scripts;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::metrics::Metrics;
use crate::protocol::{write_error, write_integer, write_simple, Request, Value};
use crate::topology::{Topology, TopologyHandle};

/// The index of intents on each server.
pub const INDEX_KEY: &[u8] = b"__keyway:txs";

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyShape {
    /// The single counted result, as the server gave it.
    Single,
    /// The single counted result is a counter read back as a string: answer it as an integer.
    Integer,
    /// `+OK` (MSET).
    Ok,
    /// The sum of the counted integer results (DEL, UNLINK over several keys).
    Sum,
}

/// A transaction: its parts by server index, its primary participant, its reply shape.
#[derive(Clone, Debug)]
pub struct Plan {
    pub parts: BTreeMap<u16, Part>,
    pub primary: u16,
    pub reply: ReplyShape,
}

fn lock_key(key: &[u8]) -> Bytes {
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

fn pack_strings(items: &[Bytes]) -> Bytes {
    let mut out = BytesMut::new();
    pack_array_header(&mut out, items.len());
    for i in items {
        pack_str(&mut out, i);
    }
    out.freeze()
}

fn pack_steps(steps: &[Step]) -> Bytes {
    let mut out = BytesMut::new();
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

fn eval(script: &'static str, keys: Vec<Bytes>, args: Vec<Bytes>) -> Bytes {
    let mut all = Vec::with_capacity(3 + keys.len() + args.len());
    all.push(Bytes::from_static(b"EVAL"));
    all.push(Bytes::from_static(script.as_bytes()));
    all.push(Bytes::from(keys.len().to_string()));
    all.extend(keys);
    all.extend(args);
    Request::from_args(&all).frame().clone()
}

/// Sends one script to a server and parses its reply.
async fn call(topo: &Topology, server: u16, pick: usize, frame: Bytes) -> Result<Value, String> {
    let Some(s) = topo.server(server) else {
        return Err("no such server".into());
    };
    match s.pool.send(pick, frame).await {
        Ok(Ok(reply)) => match Value::parse(&reply) {
            Ok(Value::Error(e)) => Err(format!(
                "server '{}': {}",
                s.name,
                String::from_utf8_lossy(&e)
            )),
            Ok(v) => Ok(v),
            Err(e) => Err(format!("server '{}': {e}", s.name)),
        },
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("server '{}': connection ended", s.name)),
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

fn error(msg: &str) -> Bytes {
    let mut out = BytesMut::new();
    write_error(&mut out, msg);
    out.freeze()
}

/// What a prepare round found.
enum Votes {
    Yes,
    /// A key is locked by `holder`, whose intent is `age_ms` old (-1: unknown).
    Conflict {
        holder: String,
        age_ms: i64,
        server: u16,
    },
    Failed(String),
}

/// Runs a transaction to its end and returns the client's reply.
pub async fn execute(
    topo: Arc<Topology>,
    pick: usize,
    plan: Plan,
    options: &TxOptions,
    metrics: &Metrics,
) -> Bytes {
    // A participant that is down would block the transaction: refuse at once.
    for &server in plan.parts.keys() {
        if !topo.is_up(server) {
            let name = topo.server(server).map_or("?", |s| s.name.as_str());
            metrics.txn_outcome("unavailable");
            return error(&format!(
                "TRYAGAIN keyway: server '{name}' holding a replica of these keys is down; two_phase writes resume when it is back"
            ));
        }
    }
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let outcome = if plan.parts.len() == 1 && topo.replicas == 1 {
            one_phase(&topo, pick, &plan).await
        } else {
            two_phase(&topo, pick, &plan, metrics).await
        };
        match outcome {
            Attempt::Done(reply) => {
                metrics.txn_outcome("committed");
                return reply;
            }
            Attempt::Failed(reply) => {
                metrics.txn_outcome("failed");
                return reply;
            }
            Attempt::Conflict {
                holder,
                age_ms,
                server,
            } => {
                if age_ms < 0 || age_ms > options.lock_timeout.as_millis() as i64 {
                    // A transaction presumed dead holds the lock: resolve it, then retry.
                    let _ = resolve_holder(&topo, pick, server, &holder, metrics).await;
                }
                if attempt > options.retries {
                    metrics.txn_outcome("conflict");
                    return error(
                        "TRYAGAIN keyway: keys are locked by concurrent two-phase writes; retry",
                    );
                }
                let base = 2u64 << attempt.min(8);
                let jitter = rand::random_range(0..=base);
                tokio::time::sleep(Duration::from_millis(base + jitter)).await;
            }
        }
    }
}

enum Attempt {
    Done(Bytes),
    Failed(Bytes),
    Conflict {
        holder: String,
        age_ms: i64,
        server: u16,
    },
}

async fn one_phase(topo: &Topology, pick: usize, plan: &Plan) -> Attempt {
    let Some((&server, part)) = plan.parts.iter().next() else {
        return Attempt::Failed(error("ERR keyway: empty transaction"));
    };
    let frame = eval(
        scripts::ONE_PHASE,
        part.keys.iter().map(|k| lock_key(k)).collect(),
        vec![pack_steps(&part.steps)],
    );
    match call(topo, server, pick, frame).await {
        Ok(v) if int_at(&v, 0) == Some(1) => Attempt::Done(reply(plan, &[(part, v)])),
        Ok(v) => Attempt::Conflict {
            holder: bulk_at(&v, 1).unwrap_or_default(),
            age_ms: int_at(&v, 2).unwrap_or(-1),
            server,
        },
        Err(e) => Attempt::Failed(error(&format!("ERR keyway: {e}"))),
    }
}

async fn two_phase(topo: &Topology, pick: usize, plan: &Plan, metrics: &Metrics) -> Attempt {
    let txid = format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    let primary_name = topo
        .server(plan.primary)
        .map_or(String::new(), |s| s.name.clone());
    let intent = intent_key(&txid);
    let decision = decision_key(&txid);
    let index = Bytes::from_static(INDEX_KEY);

    // Phase 1: prepare everywhere, in parallel.
    let mut pending = Vec::with_capacity(plan.parts.len());
    for (&server, part) in &plan.parts {
        let locks: Vec<Bytes> = part.keys.iter().map(|k| lock_key(k)).collect();
        let mut keys = vec![intent.clone(), index.clone()];
        keys.extend(locks.iter().cloned());
        let frame = eval(
            scripts::PREPARE,
            keys,
            vec![
                Bytes::from(txid.clone()),
                Bytes::from(primary_name.clone()),
                pack_steps(&part.steps),
                pack_strings(&locks),
            ],
        );
        let Some(s) = topo.server(server) else {
            continue;
        };
        pending.push((server, s.pool.send(pick, frame)));
    }
    let mut votes = Votes::Yes;
    for (server, rx) in pending {
        let name = topo.server(server).map_or("?", |s| s.name.as_str());
        let vote = match rx.await {
            Ok(Ok(reply)) => Value::parse(&reply).map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("server '{name}': connection ended")),
        };
        match vote {
            Ok(v) if int_at(&v, 0) == Some(1) => {}
            Ok(v) if int_at(&v, 0) == Some(0) => {
                if matches!(votes, Votes::Yes) {
                    votes = Votes::Conflict {
                        holder: bulk_at(&v, 1).unwrap_or_default(),
                        age_ms: int_at(&v, 2).unwrap_or(-1),
                        server,
                    };
                }
            }
            Ok(v) => {
                votes = Votes::Failed(format!("server '{name}': unexpected prepare reply {v:?}"))
            }
            Err(e) => votes = Votes::Failed(e),
        }
    }
    metrics.txn_prepare(matches!(votes, Votes::Yes));
    failpoint("after_prepare").await;
    if !matches!(votes, Votes::Yes) {
        abort_all(topo, pick, plan, &txid).await;
        return match votes {
            Votes::Conflict {
                holder,
                age_ms,
                server,
            } => Attempt::Conflict {
                holder,
                age_ms,
                server,
            },
            Votes::Failed(e) => Attempt::Failed(error(&format!(
                "TRYAGAIN keyway: two-phase prepare failed, nothing was written ({e})"
            ))),
            Votes::Yes => Attempt::Failed(error("ERR keyway: unreachable")),
        };
    }

    // Phase 2: the commit point, on the primary participant.
    let commit = |is_primary: bool| {
        eval(
            scripts::COMMIT,
            vec![intent.clone(), index.clone(), decision.clone()],
            vec![
                Bytes::from(txid.clone()),
                Bytes::from_static(if is_primary { b"1" } else { b"0" }),
            ],
        )
    };
    let primary_result = call(topo, plan.primary, pick, commit(true)).await;
    let primary_value = match primary_result {
        Ok(v) if int_at(&v, 0) == Some(1) => v,
        Ok(v) if int_at(&v, 0) == Some(-1) => {
            // Recovery aborted this transaction (it looked dead): nothing was applied.
            metrics.txn_commit(false);
            abort_all(topo, pick, plan, &txid).await;
            return Attempt::Failed(error(
                "TRYAGAIN keyway: the transaction was aborted by recovery before its commit point; nothing was written",
            ));
        }
        Ok(_) => {
            metrics.txn_commit(false);
            return Attempt::Failed(error(
                "ERR keyway: the transaction's intent vanished on its primary participant; outcome unknown",
            ));
        }
        Err(e) => {
            metrics.txn_commit(false);
            return Attempt::Failed(error(&format!(
                "ERR keyway: two-phase commit outcome unknown ({e}); recovery will finish it on every replica"
            )));
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
        others.push((part, s.pool.send(pick, commit(false))));
        failpoint("between_secondary_commits").await;
    }
    let mut all_acknowledged = true;
    for (part, rx) in others {
        let acknowledged = match rx.await {
            Ok(Ok(reply)) => match Value::parse(&reply) {
                Ok(v) if int_at(&v, 0) == Some(1) => {
                    results.push((part, v));
                    true
                }
                // Nothing staged any more: recovery already rolled it forward.
                Ok(v) => int_at(&v, 0) == Some(0),
                Err(_) => false,
            },
            _ => false,
        };
        // A secondary that failed after the commit point is rolled forward by recovery, which
        // needs the decision; otherwise the decision has served its purpose.
        all_acknowledged &= acknowledged;
    }
    if all_acknowledged {
        let del = Request::from_args(&[Bytes::from_static(b"DEL"), decision.clone()]);
        if let Some(s) = topo.server(plan.primary) {
            // Sent; its reply is not needed (a decision left behind expires in a day).
            drop(s.pool.send(pick, del.frame().clone()));
        }
    }
    Attempt::Done(reply(plan, &results))
}

/// Releases a transaction everywhere. The coordinator records no decision for its own abort:
/// only it could have committed, so nobody else can; a participant that stays locked (its
/// prepare arrived late, or its abort was lost) is resolved by recovery, which records `abort`.
async fn abort_all(topo: &Topology, pick: usize, plan: &Plan, txid: &str) {
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
            ],
        )
    };
    let mut replies = Vec::with_capacity(plan.parts.len());
    for &server in plan.parts.keys() {
        if let Some(s) = topo.server(server) {
            replies.push(s.pool.send(pick, frame(false)));
        }
    }
    for r in replies {
        let _ = r.await;
    }
}

/// The client's reply from the participants' results (`{1, {r1, r2, ...}}` each).
fn reply(plan: &Plan, results: &[(&Part, Value)]) -> Bytes {
    let mut counted = Vec::new();
    for (part, v) in results {
        let Value::Array(items) = v else { continue };
        let Some(Value::Array(outs)) = items.get(1) else {
            continue;
        };
        for (step, out) in part.steps.iter().zip(outs) {
            if step.counts {
                counted.push(out.clone());
            }
        }
    }
    let mut out = BytesMut::new();
    match plan.reply {
        ReplyShape::Single => match counted.first() {
            Some(v) => v.encode(&mut out),
            None => write_error(&mut out, "ERR keyway: no result from the primary replica"),
        },
        ReplyShape::Integer => match counted.first() {
            Some(Value::Bulk(b)) => match std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            {
                Some(n) => write_integer(&mut out, n),
                None => Value::Bulk(b.clone()).encode(&mut out),
            },
            Some(v) => v.encode(&mut out),
            None => write_error(&mut out, "ERR keyway: no result from the primary replica"),
        },
        ReplyShape::Ok => match counted.iter().find(|v| v.is_error()) {
            Some(e) => e.encode(&mut out),
            None => write_simple(&mut out, "OK"),
        },
        ReplyShape::Sum => {
            let sum: i64 = counted
                .iter()
                .map(|v| if let Value::Integer(n) = v { *n } else { 0 })
                .sum();
            write_integer(&mut out, sum);
        }
    }
    out.freeze()
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
/// A message when the primary participant is unknown to this topology or unreachable; the
/// intent then stays for a later attempt.
pub async fn resolve(
    topo: &Topology,
    pick: usize,
    at: u16,
    txid: &str,
    primary: &str,
    metrics: &Metrics,
) -> Result<Decision, String> {
    let Some(primary_index) = topo.servers.iter().position(|s| s.name == primary) else {
        return Err(format!(
            "primary participant '{primary}' is not in the topology"
        ));
    };
    let primary_index = u16::try_from(primary_index).map_err(|e| e.to_string())?;
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

/// Resolves the holder of a lock met by a prepare: its primary is read from its intent.
async fn resolve_holder(
    topo: &Topology,
    pick: usize,
    at: u16,
    holder: &str,
    metrics: &Metrics,
) -> Result<Decision, String> {
    let intent = intent_key(holder);
    let frame = Request::from_args(&[
        Bytes::from_static(b"HGET"),
        intent,
        Bytes::from_static(b"primary"),
    ])
    .frame()
    .clone();
    match call(topo, at, pick, frame).await? {
        Value::Bulk(primary) => {
            let primary = String::from_utf8_lossy(&primary).into_owned();
            resolve(topo, pick, at, holder, &primary, metrics).await
        }
        _ => Err("the lock's intent is gone".into()),
    }
}

/// The background sweep: every `pool.two_phase.sweep_interval`, on every server that is up,
/// resolves the intents older than `lock_timeout`. It runs whatever the write mode (a pool may
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
            let Ok(Value::Array(found)) = call(&topo, at, 0, frame).await else {
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
                if let Err(e) = resolve(&topo, 0, at, &txid, &primary, handle.metrics()).await {
                    tracing::warn!(txid, error = %e, "cannot resolve a stale two-phase transaction yet");
                }
            }
        }
    }
}
