//! The Lua scripts that make a prepare step out of plain Redis (see `txn/mod.rs`).
//!
//! Records on each participant server:
//!
//! - `__keyway:lock:<key>` = txid, for every key of the transaction on that server;
//! - `__keyway:tx:<txid>`, a hash: `primary` (the primary participant's name), `created`
//!   (server time, ms), `steps` (the staged commands, MessagePack), `locks` (the lock keys,
//!   MessagePack), `owner` (the coordinator's id);
//! - `__keyway:txs`, the set of txids with an intent on that server (what the sweep reads);
//! - `__keyway:lease:<coordinator>`, with a time to live: the coordinator (a Keyway process) is
//!   alive while it is there. Each prepare sets it and each Keyway renews it while its
//!   transactions are open; an intent whose coordinator's lease is gone is resolved at once
//!   instead of after `lock_timeout`;
//! - on the primary participant only, `__keyway:decision:<txid>` = `commit` or `abort`, written
//!   once (kept a day), in the same script as the commit there: that write is the commit point.
//!
//! Server time (`TIME`) stamps intents and judges their age, so proxies' clocks never matter.

/// Milliseconds of server time, as a Lua expression.
macro_rules! now_ms {
    () => {
        "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    };
}

/// A lock held by another transaction, met by a script: `held(txid, lock_key)` returns the no
/// vote `{0, holder_txid, holder_age_ms, coordinator_alive, lock_key}` (age -1 when the holder's
/// intent is gone; alive 0 when its coordinator's lease has expired, 1 otherwise).
macro_rules! held {
    () => {
        "local function held(h, k)\n\
           local rec = redis.call('HMGET', '__keyway:tx:' .. h, 'created', 'owner')\n\
           local age = -1\n\
           if rec[1] then\n\
             local t = redis.call('TIME')\n\
             age = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(rec[1])\n\
           end\n\
           local alive = 1\n\
           if rec[2] and redis.call('EXISTS', '__keyway:lease:' .. rec[2]) == 0 then alive = 0 end\n\
           return {0, h, age, alive, k}\n\
         end\n"
    };
}

/// Applies staged steps and returns their results: `{ r1, r2, ... }`. A step is
/// `{ command, readback }`; when `readback` is not empty its result replaces the command's
/// (counters: Lua numbers are doubles, so INCR's own reply loses precision past 2^53, while the
/// stored value read back as a string is exact).
macro_rules! apply_steps {
    () => {
        "if resp == '3' then redis.setresp(3) end\n\
         local out = {}\n\
         for i, s in ipairs(steps) do\n\
           local r = redis.pcall(unpack(s[1]))\n\
           if #s[2] > 0 and not (type(r) == 'table' and r.err) then r = redis.pcall(unpack(s[2])) end\n\
           if r == nil then r = false end\n\
           out[i] = r\n\
         end\n\
         redis.setresp(2)\n"
    };
}

/// Prepare: `KEYS = [intent, index, lock...]`,
/// `ARGV = [txid, primary, steps, locks, coordinator, deadline_ms, lease_ms]`. Votes `{1}` (yes:
/// locks taken, intent stored, the coordinator's lease set), the no vote of [`held!`] (a key is
/// locked by another transaction), or `{-2, late_ms}` when the server runs it after
/// `deadline_ms` of its own time (`0`: none): the coordinator has given up waiting and aborted,
/// so a prepare held up in a stalled server takes no lock for a transaction already over.
pub const PREPARE: &str = concat!(
    now_ms!(),
    held!(),
    "local deadline = tonumber(ARGV[6])\n\
     if deadline > 0 and now > deadline then return {-2, now - deadline} end\n\
     for i = 3, #KEYS do\n\
       local h = redis.call('GET', KEYS[i])\n\
       if h and h ~= ARGV[1] then return held(h, KEYS[i]) end\n\
     end\n\
     for i = 3, #KEYS do redis.call('SET', KEYS[i], ARGV[1]) end\n\
     redis.call('HSET', KEYS[1], 'primary', ARGV[2], 'created', now, 'steps', ARGV[3], 'locks', ARGV[4], 'owner', ARGV[5])\n\
     redis.call('SADD', KEYS[2], ARGV[1])\n\
     redis.call('SET', '__keyway:lease:' .. ARGV[5], '1', 'PX', ARGV[7])\n\
     return {1}\n"
);

/// Commit: `KEYS = [intent, index, decision]`, `ARGV = [txid, is_primary]`.
/// On the primary participant it first records the decision `commit` (refusing with `{-1}` if
/// `abort` was recorded). Then, if the intent is still here, it applies the steps, releases the
/// locks that are still this transaction's, and drops the intent: `{1, results}`. `{0}` when
/// there is nothing staged here (already applied or aborted).
pub const COMMIT: &str = concat!(
    "if ARGV[2] == '1' then\n\
       local d = redis.call('GET', KEYS[3])\n\
       if d == 'abort' then return {-1} end\n\
       if not d then redis.call('SET', KEYS[3], 'commit', 'EX', 86400) end\n\
     end\n\
     local rec = redis.call('HMGET', KEYS[1], 'steps', 'locks')\n\
     if not rec[1] then return {0} end\n\
     local steps = cmsgpack.unpack(rec[1])\n\
     local locks = cmsgpack.unpack(rec[2])\n\
     local resp = ARGV[3]\n",
    apply_steps!(),
    "for _, l in ipairs(locks) do\n\
       if redis.call('GET', l) == ARGV[1] then redis.call('DEL', l) end\n\
     end\n\
     redis.call('DEL', KEYS[1])\n\
     redis.call('SREM', KEYS[2], ARGV[1])\n\
     return {1, out}\n"
);

/// Commit on the primary participant, which is not prepared: `KEYS = [decision, lock...]`,
/// `ARGV = [txid, steps, resp]`. Refuses with `{-1}` if recovery recorded `abort`, votes no
/// (the answer of [`held!`]) if another transaction holds one of its keys; otherwise records
/// the decision `commit` and applies the steps, in one script: the commit point. `{1, results}`.
/// Its keys need no lock between the others' prepares and this script: nothing is staged here,
/// and this script checks and applies at once.
pub const COMMIT_PRIMARY: &str = concat!(
    held!(),
    "local d = redis.call('GET', KEYS[1])\n\
     if d == 'abort' then return {-1} end\n\
     for i = 2, #KEYS do\n\
       local h = redis.call('GET', KEYS[i])\n\
       if h and h ~= ARGV[1] then return held(h, KEYS[i]) end\n\
     end\n\
     redis.call('SET', KEYS[1], 'commit', 'EX', 86400)\n\
     local steps = cmsgpack.unpack(ARGV[2])\n\
     local resp = ARGV[3]\n",
    apply_steps!(),
    "return {1, out}\n"
);

/// Abort: `KEYS = [intent, index, decision]`, `ARGV = [txid, is_primary]`.
/// On the primary participant it records `abort` unless `commit` is recorded (then `{-1}`: too
/// late, the transaction is committed). Releases this transaction's locks and drops its intent.
pub const ABORT: &str = "if ARGV[2] == '1' then\n\
       local d = redis.call('GET', KEYS[3])\n\
       if d == 'commit' then return {-1} end\n\
       if not d then redis.call('SET', KEYS[3], 'abort', 'EX', 86400) end\n\
     end\n\
     local locks = redis.call('HGET', KEYS[1], 'locks')\n\
     if locks then\n\
       for _, l in ipairs(cmsgpack.unpack(locks)) do\n\
         if redis.call('GET', l) == ARGV[1] then redis.call('DEL', l) end\n\
       end\n\
     end\n\
     redis.call('DEL', KEYS[1])\n\
     redis.call('SREM', KEYS[2], ARGV[1])\n\
     return {1}\n";

/// Decide (recovery, on the primary participant): `KEYS = [decision]`. Returns the recorded
/// decision, or records and returns `abort` when there is none: a transaction whose commit
/// point was not reached is aborted, once and for all.
pub const DECIDE: &str = "local d = redis.call('GET', KEYS[1])\n\
     if d then return d end\n\
     redis.call('SET', KEYS[1], 'abort', 'EX', 86400)\n\
     return 'abort'\n";

/// Sweep: `KEYS = [index]`, `ARGV = [lock_timeout_ms]`. Returns `{txid, primary, ...}` for
/// every intent older than the timeout or whose coordinator's lease has expired, and forgets
/// index entries whose intent is gone.
pub const SWEEP: &str = concat!(
    now_ms!(),
    "local out = {}\n\
     for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n\
       local rec = redis.call('HMGET', '__keyway:tx:' .. id, 'created', 'primary', 'owner')\n\
       if not rec[1] then\n\
         redis.call('SREM', KEYS[1], id)\n\
       elseif now - tonumber(rec[1]) > tonumber(ARGV[1])\n\
           or (rec[3] and redis.call('EXISTS', '__keyway:lease:' .. rec[3]) == 0) then\n\
         table.insert(out, id)\n\
         table.insert(out, rec[2])\n\
       end\n\
     end\n\
     return out\n"
);

/// One phase (a single participant, `replicas = 1`): `KEYS = [lock...]`, `ARGV = [steps]`.
/// Applies the steps atomically unless a key is locked: `{1, results}` or the no vote of
/// [`held!`]. Exactly as safe as two phases: one server, one script.
pub const ONE_PHASE: &str = concat!(
    held!(),
    "for i = 1, #KEYS do\n\
       local h = redis.call('GET', KEYS[i])\n\
       if h then return held(h, KEYS[i]) end\n\
     end\n\
     local steps = cmsgpack.unpack(ARGV[1])\n\
     local resp = ARGV[2]\n",
    apply_steps!(),
    "return {1, out}\n"
);

/// Lease: `KEYS = [index, lease]`, `ARGV = [lease_ms]`. Renews the coordinator's lease where
/// the server has an intent open, and drops it where it has none, so that no lease key outlives
/// the transactions it vouches for (DBSIZE counts it only while one is open).
pub const LEASE: &str = "if redis.call('SCARD', KEYS[1]) > 0 then\n\
       redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])\n\
     else\n\
       redis.call('DEL', KEYS[2])\n\
     end\n\
     return 1\n";

/// Orphan: `KEYS = [lock]`, `ARGV = [txid]`. Deletes a lock that `txid` still holds although its
/// intent is gone (a prepare writes both in one script and every end of a transaction removes
/// both, so only a hand or a script that deleted the intent leaves one): `1` if deleted.
pub const ORPHAN: &str = "if redis.call('GET', KEYS[1]) == ARGV[1]\n\
       and redis.call('EXISTS', '__keyway:tx:' .. ARGV[1]) == 0 then\n\
       return redis.call('DEL', KEYS[1])\n\
     end\n\
     return 0\n";

/// Every script above, for the SHA1 table `EVALSHA` calls use.
pub const ALL: [&str; 9] = [
    PREPARE,
    COMMIT,
    COMMIT_PRIMARY,
    ABORT,
    DECIDE,
    SWEEP,
    ONE_PHASE,
    LEASE,
    ORPHAN,
];
