#!/usr/bin/env python3
"""Generates src/command/table.rs, Keyway's command table, from a live redis-server.

The facts (name, arity, flags, key positions) come from the server's `COMMAND` reply; the
routing policy (how Keyway serves each command: its `Kind`) is written out below in KINDS,
REFUSED and the rules of `kind_of`. A command the server lists that has keys and no explicit
policy is `Keyed`; a keyless one with no explicit policy stops the script, so a new Redis
version forces a decision instead of a silent default.

Usage (redis-server 7.0.x on port 6399, from the repository root):

    redis-server --port 6399 --save '' --appendonly no &
    python3 scripts/gen-command-table.py --port 6399

Then run `cargo test --test command_table`, which checks the table against a live server.
Edit this script, not table.rs: table.rs is overwritten.
"""

import argparse
import os
import socket
import subprocess
import sys

# ---------------------------------------------------------------------------------------------
# Routing policy.

# Reasons shown to clients after "command 'x' is not supported by keyway: ".
REASONS = {
    "ADMIN": "it administers a single server; run it against each backend server directly",
    "ACL": "keyway's users and their rules come from its configuration ([[users]]); the "
    "servers' own users are managed on each server directly",
    "CLIENT": "it would act on keyway's backend connections, which many clients share",
    "CLUSTER": "keyway is not a Redis Cluster node; it routes keys to servers itself",
    "DATABASES": "keyway shards keys over several servers and serves database 0 only",
    "MIGRATE": "keyway decides where keys live; MIGRATE would move keys between servers "
    "behind its back",
    "REPLICATION": "replication between the backend servers is managed outside keyway",
    "SCRIPT_DEBUG": "the Lua debugger needs a dedicated connection to one server",
    "WAIT": "replica acknowledgements are per server; choose keyway's write policy "
    "(write = all, quorum or two_phase) instead",
}

SPLIT_ARRAY_1 = "split(Array, 1)"
SPLIT_OK_2 = "split(Ok, 2)"
SPLIT_SUM_1 = "split(SumInt, 1)"

# Explicit decisions. Anything not listed: see kind_of().
KINDS = {
    # Multi-key commands split per server.
    "mget": SPLIT_ARRAY_1,
    "mset": SPLIT_OK_2,
    "del": SPLIT_SUM_1,
    "unlink": SPLIT_SUM_1,
    "exists": SPLIT_SUM_1,
    "touch": SPLIT_SUM_1,
    # Keyless, sent to every server.
    "dbsize": "AllServers(SumInt)",
    "flushall": "AllServers(AllOk)",
    "flushdb": "AllServers(AllOk)",
    "keys": "AllServers(Concat)",
    "script|load": "AllServers(SameReply)",
    "script|flush": "AllServers(AllOk)",
    "script|exists": "AllServers(LogicalAnd)",
    "function|load": "AllServers(SameReply)",
    "function|delete": "AllServers(AllOk)",
    "function|flush": "AllServers(AllOk)",
    "function|restore": "AllServers(AllOk)",
    # On a connection of its own to every server: the shared ones wait behind the script.
    "script|kill": "AllServers(AnyKilled)",
    "function|kill": "AllServers(AnyKilled)",
    # Keyless, any one server answers (scripts and functions are loaded on all of them).
    "config|get": "AnyServer",
    "function|dump": "AnyServer",
    "function|list": "AnyServer",
    "function|stats": "AnyServer",
    "lastsave": "AnyServer",
    "lolwut": "AnyServer",
    "time": "AnyServer",
    "acl|cat": "Local(L::AclCat)",
    "acl|whoami": "Local(L::AclWhoami)",
    "acl|dryrun": "Local(L::AclDryrun)",
    "auth": "Local(L::Auth)",
    "acl|genpass": "AnyServer",
    "randomkey": "RandomKey",
    "scan": "Scan",
    # Answered by the proxy itself.
    "client|getname": "Local(L::ClientGetname)",
    "client|id": "Local(L::ClientId)",
    "client|setinfo": "Local(L::ClientSetinfo)",
    "client|setname": "Local(L::ClientSetname)",
    "client|info": "Local(L::ClientInfo)",
    "client|list": "Local(L::ClientList)",
    "client|kill": "Local(L::ClientKill)",
    "client|no-evict": "Local(L::ClientNoEvict)",
    "client|reply": "Local(L::ClientReply)",
    "command": "Local(L::Command)",
    "command|count": "Local(L::CommandCount)",
    "command|docs": "Local(L::CommandDocs)",
    "command|info": "Local(L::CommandInfo)",
    "command|list": "Local(L::CommandList)",
    "echo": "Local(L::Echo)",
    "hello": "Local(L::Hello)",
    "info": "Local(L::Info)",
    "ping": "Local(L::Ping)",
    "quit": "Local(L::Quit)",
    "reset": "Local(L::Reset)",
    "select": "Local(L::Select)",
    # Transactions: the session queues them (see server::multi).
    "multi": "Transaction(T::Multi)",
    "exec": "Transaction(T::Exec)",
    "discard": "Transaction(T::Discard)",
    "watch": "Transaction(T::Watch)",
    "unwatch": "Transaction(T::Unwatch)",
    # The servers know every command's keys: their answer is redis-server's, byte for byte.
    "command|getkeys": "AnyServer",
    "command|getkeysandflags": "AnyServer",
    # XREAD/XREADGROUP are flagged blocking, but only block with BLOCK: the planner decides.
    # Every other blocking command (BLPOP, BZPOPMIN, ...) has keys and is Keyed: the planner
    # sends it on a server connection of its own (see server::blocking).
    "xread": "Keyed",
    "xreadgroup": "Keyed",
    # Publish/subscribe (see server::pubsub): a channel lives on its slot's server, a pattern
    # on every server; Keyway's subscriber connection per server carries every client's.
    "publish": "PubSub(PS::Publish)",
    "spublish": "PubSub(PS::Publish)",
    "subscribe": "PubSub(PS::Subscribe)",
    "ssubscribe": "PubSub(PS::SSubscribe)",
    "psubscribe": "PubSub(PS::PSubscribe)",
    "unsubscribe": "PubSub(PS::Unsubscribe)",
    "sunsubscribe": "PubSub(PS::SUnsubscribe)",
    "punsubscribe": "PubSub(PS::PUnsubscribe)",
    "pubsub|channels": "PubSub(PS::Channels)",
    "pubsub|shardchannels": "PubSub(PS::Channels)",
    "pubsub|numsub": "PubSub(PS::NumSub)",
    "pubsub|shardnumsub": "PubSub(PS::NumSub)",
    "pubsub|numpat": "PubSub(PS::NumPat)",
}

REFUSED = {
    "ADMIN": """bgrewriteaof bgsave config|resetstat config|rewrite config|set debug
        latency|doctor latency|graph latency|histogram latency|history latency|latest latency|reset
        memory|doctor memory|malloc-stats memory|purge memory|stats module|list module|load
        module|loadex module|unload monitor pfdebug pfselftest save shutdown slowlog|get
        slowlog|len slowlog|reset""",
    "ACL": """acl|deluser acl|getuser acl|list acl|load acl|log acl|save acl|setuser
        acl|users""",
    "CLIENT": """client|caching client|getredir client|pause client|tracking client|trackinginfo
        client|unblock client|unpause""",
    "CLUSTER": "asking readonly readwrite restore-asking",
    "DATABASES": "move swapdb",
    "MIGRATE": "migrate",
    "REPLICATION": "failover psync replconf replicaof role slaveof sync",
    "SCRIPT_DEBUG": "script|debug",
    "WAIT": "wait",
}
for _reason, _names in REFUSED.items():
    for _name in _names.split():
        assert _name not in KINDS, _name
        KINDS[_name] = f"Refused(why::{_reason})"


def kind_of(name, flags, has_keys, is_container):
    if name in KINDS:
        return KINDS[name]
    if is_container:
        return "Container"
    if name.endswith("|help"):
        return "AnyServer"
    container = name.split("|")[0]
    if container == "cluster":
        return "Refused(why::CLUSTER)"
    if "pubsub" in flags or container == "pubsub":
        sys.exit(f"no routing decision for pub/sub command {name!r}: add it to KINDS")
    if "blocking" in flags and not has_keys:
        sys.exit(f"no routing decision for keyless blocking command {name!r}: add it to KINDS")
    if has_keys:
        return "Keyed"
    sys.exit(f"no routing decision for keyless command {name!r}: add it to KINDS")


# Facts about a command that Keyway acts on beyond Redis's flags (the `Traits` column). Every
# command-specific decision in the planner reads one of these; none matches a name.
TRAITS = {
    # Scripts and functions: an error reply is the script's words, not the server's health.
    # EVALSHA and FCALL also name a script or function that Keyway loads again on a server
    # missing it (CALLS_SCRIPT, CALLS_FUNCTION), from what it saw SCRIPT LOAD and FUNCTION LOAD
    # load (LOADS_*) and not flushed or deleted since (FORGETS_*).
    "eval": ["SCRIPT", "SCRIPT_WRITES"],
    "evalsha": ["SCRIPT", "SCRIPT_WRITES", "CALLS_SCRIPT"],
    "fcall": ["SCRIPT", "SCRIPT_WRITES", "CALLS_FUNCTION"],
    "eval_ro": ["SCRIPT"],
    "evalsha_ro": ["SCRIPT", "CALLS_SCRIPT"],
    "fcall_ro": ["SCRIPT", "CALLS_FUNCTION"],
    "script|load": ["LOADS_SCRIPT"],
    "script|flush": ["FORGETS_SCRIPTS"],
    "function|load": ["LOADS_FUNCTION"],
    "function|delete": ["FORGETS_FUNCTION"],
    "function|flush": ["FORGETS_FUNCTIONS"],
    "function|restore": ["FORGETS_FUNCTIONS"],
    # Picks members at random: replicas would differ.
    "spop": ["RANDOM"],
    "srandmember": ["RANDOM"],
    # Counters whose exact value a two-phase commit reads back (Lua numbers are doubles).
    "incr": ["READBACK_KEY"],
    "incrby": ["READBACK_KEY"],
    "decr": ["READBACK_KEY"],
    "decrby": ["READBACK_KEY"],
    "hincrby": ["READBACK_FIELD"],
    # Blocks only with a BLOCK option.
    "xread": ["BLOCK_OPTION"],
    "xreadgroup": ["BLOCK_OPTION"],
    # Blocking pops: what a pop took, so that under write = all|quorum the other replicas of
    # the slot remove the same element (see server::blocking).
    "blpop": ["POPS_LEFT"],
    "brpop": ["POPS_RIGHT"],
    "blmpop": ["POPS_WHERE"],
    "blmove": ["MOVES_LIST"],
    "brpoplpush": ["MOVES_RIGHT_LEFT"],
    "bzpopmin": ["POPS_ZSET"],
    "bzpopmax": ["POPS_ZSET"],
    "bzmpop": ["POPS_ZSET"],
    # A read that the warm-up after a swap may answer from a slot's previous server.
    "get": ["WARM"],
    # Reads keys named by BY/GET patterns and the sorted elements, not by key positions.
    "sort": ["PATTERNS"],
    "sort_ro": ["PATTERNS"],
}

# Commands of later Redis versions that clients send on connect, with their facts as that
# version's COMMAND reports them: (name, arity, flags, keys). Kept in the table beside 7.0's.
EXTRA = [
    # Redis 7.2: redis-py, redis-rs, node-redis and go-redis send it on every connect.
    ("client|setinfo", 4, ["noscript", "loading", "stale"], "NOKEYS"),
]

# ---------------------------------------------------------------------------------------------
# Key positions.

# Movable-key commands whose extra keys need their own parser in key_indexes().
CUSTOM_KEYS = {
    "sort": "Sort",
    "georadius": "GeoStore",
    "georadiusbymember": "GeoStore",
    "xread": "Streams",
    "xreadgroup": "Streams",
}
# Movable-key commands kept on their legacy range: SORT_RO's BY/GET patterns name keys that
# only the server can know; MIGRATE is refused, so its KEYS form does not matter.
LEGACY_MOVABLE = {"sort_ro", "migrate"}


def spec_fields(spec):
    return dict(zip(spec[::2], spec[1::2]))


def keys_of(name, flags, first, last, step, key_specs):
    if name in CUSTOM_KEYS:
        return CUSTOM_KEYS[name]
    specs = [spec_fields(k) for k in key_specs]
    keynum = [k for k in specs if k["find_keys"][1] == "keynum"]
    if keynum:
        begin = spec_fields(keynum[0]["begin_search"][3])["index"]
        fk = spec_fields(keynum[0]["find_keys"][3])
        at, fst, stp = begin + fk["keynumidx"], begin + fk["firstkey"], fk["keystep"]
        if len(specs) == 1:
            return f"numkeys({at}, {fst}, {stp})"
        if len(specs) == 2 and (first, last, step) == (1, 1, 1) and stp == 1:
            return f"dest_numkeys(1, {at}, {fst})"
    elif "movablekeys" not in flags or name in LEGACY_MOVABLE:
        if first == 0:
            return "NOKEYS"
        return f"range({first}, {last}, {step})"
    sys.exit(f"unhandled movable keys for {name!r}: {key_specs}")


# ---------------------------------------------------------------------------------------------
# Talking to redis.


class Resp:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port))
        self.file = self.sock.makefile("rb")

    def call(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        return self.read()

    def read(self):
        line = self.file.readline()
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self.file.read(n + 2)[:-2].decode()
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")


FLAG_CONSTS = {
    "write": "WRITE", "readonly": "READONLY", "denyoom": "DENYOOM", "module": "MODULE",
    "admin": "ADMIN", "pubsub": "PUBSUB", "noscript": "NOSCRIPT", "blocking": "BLOCKING",
    "loading": "LOADING", "stale": "STALE", "skip_monitor": "SKIP_MONITOR",
    "skip_slowlog": "SKIP_SLOWLOG", "asking": "ASKING", "fast": "FAST", "no_auth": "NO_AUTH",
    "may_replicate": "MAY_REPLICATE", "no_mandatory_keys": "NO_MANDATORY_KEYS",
    "no_async_loading": "NO_ASYNC_LOADING", "no_multi": "NO_MULTI",
    "movablekeys": "MOVABLEKEYS", "allow_busy": "ALLOW_BUSY",
}

HEADER = """\
//! The command table: one line per Redis 7.0 command and subcommand.
//!
//! GENERATED by `scripts/gen-command-table.py` from `COMMAND` on redis-server {version}; do not
//! edit by hand: change the script (its routing policy lives there) and regenerate. Columns: name
//! as Redis 7 spells it (`container|sub` for subcommands), arity, key positions, kind, flags, and
//! Keyway's traits (facts the planner acts on beyond Redis's flags).
//! Sorted by name, containers before their subcommands ([`super::all_specs`] lists them so).

use super::keys::{{dest_numkeys, numkeys, range, GeoStore, Sort, Streams, NOKEYS}};
use super::Kind::{{
    AllServers, AnyServer, Container, Keyed, Local, PubSub, RandomKey, Refused, Scan,
    Transaction,
}};
use super::Merge::{{AllOk, AnyKilled, Array, Concat, LogicalAnd, Ok, SameReply, SumInt}};
use super::{{cmd, flag::*, split, trait_::*, CommandSpec, Local as L, PubSub as PS, Tx as T}};

/// Why a command is refused: the text after "command 'x' is not supported by keyway: ".
mod why {{
{reasons}}}

/// The redis-server version this table was generated from.
pub(crate) const TABLE_VERSION: &str = "{version}";

/// Every command and subcommand redis-server {version} lists in `COMMAND` (and the few of later
/// versions that clients send on connect): name, arity, key positions, kind, flags, traits.
#[rustfmt::skip]
pub(super) static COMMANDS: [CommandSpec; {count}] = [
"""


# ---------------------------------------------------------------------------------------------
# ACL facts: categories and key-spec access, for client ACLs (src/acl.rs).

# Redis 7.0's ACL categories, in the order `ACL CAT` lists them; a category's bit is its index.
ACL_CATEGORIES = """keyspace read write set sortedset list hash string bitmap hyperloglog geo stream
    pubsub admin fast slow blocking dangerous connection transaction scripting""".split()

# Categories of the EXTRA commands, as the later version's COMMAND reports them.
EXTRA_CATEGORIES = {"client|setinfo": ["@slow", "@connection"]}

ACL_HEADER = """\
//! ACL facts of the command table: per command, its ACL categories and how each of its key
//! specs accesses keys, in the order of `table.rs` (same index).
//!
//! GENERATED by `scripts/gen-command-table.py` from `COMMAND` on redis-server {version}; do not
//! edit by hand. `categories` has bit `i` set for the `i`-th of [`CATEGORIES`]; `keys` holds
//! two bits per key spec, in the order `COMMAND INFO` lists them: bit 0 the spec reads
//! (`access`), bit 1 it writes (`insert`, `delete` or `update`); `specs` counts them.

/// Redis's ACL categories, in `ACL CAT`'s order.
pub const CATEGORIES: [&str; {ncat}] = [{cats}];

/// One command's ACL facts.
pub(crate) struct AclFacts {{
    /// Its name as in `table.rs`, to check that both tables line up.
    pub(crate) name: &'static str,
    /// One bit per category of [`CATEGORIES`].
    pub(crate) categories: u32,
    /// Key specs.
    pub(crate) specs: u8,
    /// Two bits per key spec: read, write.
    pub(crate) keys: u32,
}}

const fn f(name: &'static str, categories: u32, specs: u8, keys: u32) -> AclFacts {{
    AclFacts {{ name, categories, specs, keys }}
}}

/// The facts of each entry of `table::COMMANDS`, at the same index.
#[rustfmt::skip]
pub(crate) static ACL_FACTS: [AclFacts; {count}] = [
"""


def write_acl_table(path, version, names, facts):
    out = [ACL_HEADER.format(
        version=version,
        ncat=len(ACL_CATEGORIES),
        cats=", ".join(f'"{c}"' for c in ACL_CATEGORIES),
        count=len(names),
    )]
    for name in names:
        cats, specs = facts.get(name, (EXTRA_CATEGORIES.get(name, []), []))
        bits = 0
        for c in cats:
            bits |= 1 << ACL_CATEGORIES.index(c.lstrip("@"))
        assert len(specs) <= 16, name
        keys = 0
        for i, flags in enumerate(specs):
            flags = {x.lower() for x in flags}
            if "access" in flags:
                keys |= 1 << (2 * i)
            if flags & {"insert", "delete", "update"}:
                keys |= 2 << (2 * i)
        out.append(f'    f({(chr(34) + name + chr(34) + ",").ljust(33)} {bits:#010x}, {len(specs)}, {keys:#x}),\n')
    out.append("];\n")
    with open(path, "w") as fh:
        fh.write("".join(out))
    subprocess.run(["rustfmt", "--edition", "2021", path], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=6379)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "src", "command", "table.rs"))
    opts = ap.parse_args()

    r = Resp(opts.host, opts.port)
    info = r.call("INFO", "server")
    version = next(l.split(":")[1] for l in info.splitlines() if l.startswith("redis_version:"))

    rows = []
    acl_facts = {}

    def walk(c, is_sub):
        name, arity, flags, first, last, step, cats, _tips, key_specs, subs = c[:10]
        acl_facts[name] = (cats, [spec_fields(k)["flags"] for k in key_specs])
        has_keys = first != 0 or bool(key_specs)
        keys = keys_of(name, flags, first, last, step, key_specs)
        add(name, arity, flags, keys, has_keys, bool(subs))
        for s in subs or []:
            walk(s, True)

    def add(name, arity, flags, keys, has_keys, is_container):
        kind = kind_of(name, flags, has_keys, is_container)
        fl = "&[" + ", ".join(FLAG_CONSTS[f] for f in flags) + "]"
        traits = TRAITS.get(name, []) + (["SUBCOMMANDS"] if is_container else [])
        tr = "&[" + ", ".join(traits) + "]"
        rows.append((name, arity, fl, keys, kind, tr))

    for c in r.call("COMMAND"):
        walk(c, False)
    known = {row[0] for row in rows}
    for name, arity, flags, keys in EXTRA:
        if name not in known:
            add(name, arity, flags, keys, False, False)
    for name in list(TRAITS) + list(KINDS):
        assert name in {row[0] for row in rows}, f"policy for a command the table lacks: {name}"
    rows.sort(key=lambda row: row[0])

    w_name = max(len(row[0]) for row in rows) + 3
    w_keys = max(len(row[3]) for row in rows) + 1
    w_kind = max(len(row[4]) for row in rows) + 1
    w_flags = max(len(row[2]) for row in rows) + 1
    reasons = "".join(f'    pub const {k}: &str = "{v}";\n' for k, v in sorted(REASONS.items()))
    out = [HEADER.format(version=version, reasons=reasons, count=len(rows))]
    out.append(
        f"    //  {'name'.ljust(w_name)}arity {'keys'.ljust(w_keys)} {'kind'.ljust(w_kind)} "
        f"{'flags'.ljust(w_flags)} traits\n"
    )
    for name, arity, fl, keys, kind, tr in rows:
        out.append(
            f'    cmd({(chr(34) + name + chr(34) + ",").ljust(w_name)}{arity:>3}, '
            f"{(keys + ',').ljust(w_keys)} {(kind + ',').ljust(w_kind)} {(fl + ',').ljust(w_flags)} {tr}),\n"
        )
    out.append("];\n")
    with open(opts.out, "w") as f:
        f.write("".join(out))
    # The header and reasons follow rustfmt; the table itself is #[rustfmt::skip].
    subprocess.run(["rustfmt", "--edition", "2021", opts.out], check=True)
    print(f"wrote {len(rows)} commands from redis {version} to {opts.out}", file=sys.stderr)
    acl_out = os.path.join(os.path.dirname(opts.out), "acl_table.rs")
    write_acl_table(acl_out, version, [row[0] for row in rows], acl_facts)
    print(f"wrote ACL facts of {len(rows)} commands to {acl_out}", file=sys.stderr)


if __name__ == "__main__":
    main()
