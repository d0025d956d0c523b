"""A scripted redis-py session through Keyway; run by tests/clients.rs.

    python3 redis_py.py PORT PROTOCOL SCENARIO

PROTOCOL is `default` (redis-py's own default: RESP3 since 8.0) or `2`; SCENARIO is `session`
(Keyway over three servers, default write policy) or `two_phase` (replicas = 2 and
write = "two_phase"). Every check raises on a wrong result; the last line printed is `ok`.
"""

import asyncio
import os
import sys
import threading

import redis
from redis.exceptions import ClusterCrossSlotError, LockNotOwnedError, ResponseError, WatchError

PORT = int(sys.argv[1])
PROTOCOL = sys.argv[2]
SCENARIO = sys.argv[3]


def client():
    kwargs = {"host": "127.0.0.1", "port": PORT, "socket_timeout": 10}
    if PROTOCOL != "default":
        kwargs["protocol"] = int(PROTOCOL)
    return redis.Redis(**kwargs)


def check(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def wire(r, *args):
    """The parser's value for one command, without redis-py's reply callbacks: what the wire said."""
    conn = r.connection_pool.get_connection()
    try:
        conn.send_command(*args)
        return conn.read_response()
    finally:
        r.connection_pool.release(conn)


def protocol_in_use(r):
    # Keyway's CLIENT INFO says which protocol this connection negotiated (resp=2|3).
    return r.client_info()["resp"]


def plain_commands(r, resp3):
    check(r.ping(), True, "PING")
    check(str(protocol_in_use(r)), "3" if resp3 else "2", "CLIENT INFO resp")
    check(r.set("py:s", "v1"), True, "SET")
    check(r.get("py:s"), b"v1", "GET")
    check(r.get("py:missing"), None, "GET of a missing key")
    check(r.set("py:s", "v2", nx=True), None, "SET NX on an existing key")
    check(r.incr("py:n"), 1, "INCR")
    check(r.incrby("py:n", 41), 42, "INCRBY")
    check(r.incrbyfloat("py:f", 1.5), 1.5, "INCRBYFLOAT")
    check(r.expire("py:s", 100), True, "EXPIRE")
    ttl = r.ttl("py:s")
    if not 0 < ttl <= 100:
        raise AssertionError(f"TTL {ttl}")
    # Hashes, sets, sorted sets, lists: typed replies after redis-py's callbacks.
    check(r.hset("py:h", mapping={"f1": "a", "f2": "b"}), 2, "HSET")
    check(r.hgetall("py:h"), {b"f1": b"a", b"f2": b"b"}, "HGETALL")
    check(r.hincrby("py:h", "c", 3), 3, "HINCRBY")
    check(r.sadd("py:set", "x", "y", "z"), 3, "SADD")
    check(r.smembers("py:set"), {b"x", b"y", b"z"}, "SMEMBERS")
    check(r.sismember("py:set", "y"), True, "SISMEMBER")
    check(r.zadd("py:z", {"a": 1.5, "b": 2.25}), 2, "ZADD")
    check(r.zscore("py:z", "b"), 2.25, "ZSCORE")
    check(r.zscore("py:z", "none"), None, "ZSCORE of a missing member")
    check(r.zincrby("py:z", 0.5, "a"), 2.0, "ZINCRBY")
    check(
        [tuple(p) for p in r.zrange("py:z", 0, -1, withscores=True)],
        [(b"a", 2.0), (b"b", 2.25)],
        "ZRANGE WITHSCORES",
    )
    check(r.rpush("py:l", "1", "2", "3"), 3, "RPUSH")
    check(r.lrange("py:l", 0, -1), [b"1", b"2", b"3"], "LRANGE")
    check(r.lpop("py:l", 2), [b"1", b"2"], "LPOP with a count")
    # What the wire said: RESP3's map, set, double and null, or RESP2's flat arrays and strings.
    if resp3:
        check(wire(r, "HGETALL", "py:h"), {b"f1": b"a", b"f2": b"b", b"c": b"3"}, "HGETALL map")
        # redis-py's parser turns a RESP3 set into a list too (node-redis and redis-rs see sets).
        check(sorted(wire(r, "SMEMBERS", "py:set")), [b"x", b"y", b"z"], "SMEMBERS set")
        check(wire(r, "ZSCORE", "py:z", "b"), 2.25, "ZSCORE double")
    else:
        check(sorted(wire(r, "HGETALL", "py:h")), sorted([b"f1", b"a", b"f2", b"b", b"c", b"3"]), "HGETALL array")
        check(sorted(wire(r, "SMEMBERS", "py:set")), [b"x", b"y", b"z"], "SMEMBERS array")
        check(wire(r, "ZSCORE", "py:z", "b"), b"2.25", "ZSCORE string")
    check(wire(r, "GET", "py:missing"), None, "null")
    info = r.info("server")
    if "redis_version" not in info:
        raise AssertionError(f"INFO server without redis_version: {info}")


def more_types(r, resp3):
    # Strings, streams, geo, HyperLogLog, sorted-set pops: what applications use beside GET/SET.
    check(r.set("py:g", "1", get=True), None, "SET GET on a new key")
    check(r.getex("py:g", ex=50), b"1", "GETEX")
    check(r.getdel("py:g"), b"1", "GETDEL")
    check(r.copy("{user:1}:a", "{user:1}:copy"), True, "COPY in one slot")
    check(r.smembers("{user:1}:copy"), {b"1", b"2", b"3"}, "COPY result")
    check(r.type("py:h"), b"hash", "TYPE")
    if r.object("encoding", "py:l") not in (b"quicklist", b"listpack"):
        raise AssertionError("OBJECT ENCODING of a list")
    if not r.memory_usage("py:h") > 0:
        raise AssertionError("MEMORY USAGE")
    entry = r.xadd("py:st", {"a": "1"})
    r.xadd("py:st", {"b": "2"})
    check(r.xlen("py:st"), 2, "XLEN")
    check(r.xrange("py:st", count=1), [(entry, {b"a": b"1"})], "XRANGE")
    check(r.geoadd("py:geo", (13.361389, 38.115556, "Palermo", 15.087269, 37.502669, "Catania")), 2, "GEOADD")
    dist = r.geodist("py:geo", "Palermo", "Catania", unit="km")
    if not 166 < dist < 167:
        raise AssertionError(f"GEODIST {dist}")
    check(r.pfadd("py:hll", "a", "b", "c", "a"), 1, "PFADD")
    check(r.pfcount("py:hll"), 3, "PFCOUNT")
    r.zadd("py:zp", {"a": 1, "b": 2, "c": 3})
    check([tuple(x) for x in r.zpopmin("py:zp", 2)], [(b"a", 1.0), (b"b", 2.0)], "ZPOPMIN")
    check(r.zmscore("py:zp", ["c", "none"]), [3.0, None], "ZMSCORE")
    check(r.hrandfield("py:h", 3, withvalues=False) is not None, True, "HRANDFIELD")
    check(r.srandmember("py:set", 5) is not None, True, "SRANDMEMBER")


def binary(r):
    # Keys and values are bytes: CR, LF, NUL and non-UTF-8 bytes, and a 2 MiB value.
    big = os.urandom(2 * 1024 * 1024)
    check(r.set(b"py:bin:\r\n\x00\xff", big), True, "SET of a binary key")
    check(r.get(b"py:bin:\r\n\x00\xff") == big, True, "GET of a 2 MiB value")
    keys = [b"py:bin:" + bytes([i, 0xFF, 13, 10]) for i in range(40)]
    r.mset({k: k * 3 for k in keys})
    check(r.mget(keys), [k * 3 for k in keys], "MGET of binary keys over servers")
    p = r.pipeline()
    p.set(b"{py:bin}\r\n", b"\r\n$5\r\n").get(b"{py:bin}\r\n")
    check(p.execute(), [True, b"\r\n$5\r\n"], "a transaction of RESP-looking bytes")


async def asyncio_session():
    # redis.asyncio: its own connections and pipelines.
    import redis.asyncio as aredis

    kwargs = {"host": "127.0.0.1", "port": PORT}
    if PROTOCOL != "default":
        kwargs["protocol"] = int(PROTOCOL)
    r = aredis.Redis(**kwargs)
    await asyncio.gather(*[r.set(f"py:aio{i}", i) for i in range(50)])
    got = await asyncio.gather(*[r.get(f"py:aio{i}") for i in range(50)])
    check(got, [str(i).encode() for i in range(50)], "asyncio concurrent GETs")
    async with r.pipeline() as p:
        p.set("{py:aio}x", 1).incr("{py:aio}x").hset("{py:aio}h", "f", "v").hgetall("{py:aio}h")
        check(await p.execute(), [True, 2, 1, {b"f": b"v"}], "asyncio MULTI/EXEC")

    async def incrementer():
        c = aredis.Redis(**kwargs)
        for _ in range(25):
            async with c.pipeline() as p:
                while True:
                    try:
                        await p.watch("{py:aio}ctr")
                        v = int(await p.get("{py:aio}ctr") or 0)
                        p.multi()
                        p.set("{py:aio}ctr", v + 1)
                        await p.execute()
                        break
                    except WatchError:
                        continue
        await c.aclose()

    await asyncio.gather(*[incrementer() for _ in range(4)])
    check(await r.get("{py:aio}ctr"), b"100", "asyncio WATCH counter after 4 x 25 increments")
    await r.aclose()


def server_face(r, resp3):
    # What libraries, pools and tools ask a server: names, INFO, DBSIZE, CONFIG, TIME.
    kwargs = {"client_name": "keyway-py"}
    if PROTOCOL != "default":
        kwargs["protocol"] = int(PROTOCOL)
    named = redis.Redis(host="127.0.0.1", port=PORT, **kwargs)
    check(named.client_getname(), "keyway-py", "CLIENT GETNAME after client_name")
    mine = [c for c in named.client_list() if c.get("name") == "keyway-py"]
    check(len(mine), 1, "CLIENT LIST shows the named client")
    check(str(mine[0].get("resp")), "3" if resp3 else "2", "CLIENT LIST resp")
    named.close()
    total = r.dbsize()
    check(len(list(r.scan_iter(count=50))), total, "DBSIZE against SCAN")
    check(r.info("keyspace")["db0"]["keys"], total, "INFO keyspace against DBSIZE")
    check(sorted(r.keys("py:k1*")), sorted([b"py:k1"] + [f"py:k1{i}".encode() for i in range(10)]), "KEYS")
    if r.randomkey() is None:
        raise AssertionError("RANDOMKEY on a pool with keys")
    check(r.config_get("maxmemory"), {"maxmemory": "0"}, "CONFIG GET")
    seconds, micros = r.time()
    if not seconds > 1_600_000_000 or not 0 <= micros < 1_000_000:
        raise AssertionError(f"TIME {seconds} {micros}")
    info = r.info()
    for field in ("redis_version", "redis_mode", "used_memory", "connected_clients"):
        if field not in info:
            raise AssertionError(f"INFO without {field}")
    check(info["redis_mode"], "standalone", "INFO redis_mode")
    check(r.echo("hi"), b"hi", "ECHO")


def multi_key(r):
    # Keys spread over the three servers: MSET and MGET are split and merged in order.
    keys = [f"py:k{i}" for i in range(60)]
    check(r.mset({k: f"v{i}" for i, k in enumerate(keys)}), True, "MSET over servers")
    want = [f"v{i}".encode() for i in range(60)]
    check(r.mget(keys), want, "MGET over servers")
    check(r.mget(["py:k0", "py:nothing", "py:k59"]), [b"v0", None, b"v59"], "MGET with a miss")
    check(r.exists(*keys[:10], "py:nothing"), 10, "EXISTS sum")
    check(r.delete(*keys[50:], "py:nothing"), 10, "DEL sum")
    check(r.mget(keys[48:52]), [b"v48", b"v49", None, None], "MGET after DEL")
    # Hash-tagged keys share a slot: multi-key commands that cannot be split stay whole.
    r.sadd("{user:1}:a", "1", "2", "3")
    r.sadd("{user:1}:b", "2", "3", "4")
    check(r.sinterstore("{user:1}:both", ["{user:1}:a", "{user:1}:b"]), 2, "SINTERSTORE")
    check(r.smembers("{user:1}:both"), {b"2", b"3"}, "SINTERSTORE result")
    check(r.rename("{user:1}:both", "{user:1}:renamed"), True, "RENAME")
    check(r.exists("{user:1}:both"), 0, "RENAME source gone")
    r.rpush("{user:1}:q", "job1", "job2")
    check(r.lmove("{user:1}:q", "{user:1}:work", "LEFT", "RIGHT"), b"job1", "LMOVE")
    check(r.lrange("{user:1}:work", 0, -1), [b"job1"], "LMOVE destination")
    check(r.msetnx({"{user:1}:x": "1", "{user:1}:y": "2"}), True, "MSETNX")
    # Keys of different slots in a command that cannot be split: a clear error.
    try:
        r.sinterstore("py:dest", ["py:set", "{user:1}:a"])
        raise AssertionError("SINTERSTORE over slots answered")
    except ClusterCrossSlotError:
        pass  # redis-py's class for -CROSSSLOT
    # SCAN over the pool finds every key once.
    found = set(r.scan_iter(match="py:k*", count=7))
    check(len(found), 50, "SCAN over servers")


def pipelines(r):
    # A plain pipeline: one round trip, replies in order, over every server.
    p = r.pipeline(transaction=False)
    for i in range(30):
        p.set(f"py:p{i}", i)
    for i in range(30):
        p.incr(f"py:p{i}")
    p.get("py:p7")
    p.hgetall("py:h")
    out = p.execute()
    check(out[:30], [True] * 30, "pipeline SETs")
    check(out[30:60], list(range(1, 31)), "pipeline INCRs")
    check(out[60], b"8", "pipeline GET")
    check(out[61], {b"f1": b"a", b"f2": b"b", b"c": b"3"}, "pipeline HGETALL")
    # An error inside a plain pipeline comes back in place.
    p = r.pipeline(transaction=False)
    p.set("py:pe", "x").lpush("py:pe", "y").get("py:pe")
    out = p.execute(raise_on_error=False)
    check(out[0], True, "pipeline SET before an error")
    if not isinstance(out[1], ResponseError) or "WRONGTYPE" not in str(out[1]):
        raise AssertionError(f"pipeline error in place: {out[1]!r}")
    check(out[2], b"x", "pipeline GET after an error")
    # redis-py's default pipeline is MULTI/EXEC: keys of one slot.
    p = r.pipeline()
    p.set("{acct}:a", 10).incrby("{acct}:a", 5).get("{acct}:a").hset("{acct}:h", "k", "v").hgetall("{acct}:h")
    check(p.execute(), [True, 15, b"15", 1, {b"k": b"v"}], "MULTI/EXEC pipeline")
    # A transaction over two slots is refused at queuing (CROSSSLOT) and applies nothing.
    r.set("{acct}:b", "before")
    p = r.pipeline()
    p.set("{acct}:b", "after").set("{other}:c", "x")
    try:
        p.execute()
        raise AssertionError("a cross-slot transaction ran")
    except ClusterCrossSlotError:
        pass  # redis-py raises the queuing error that made EXEC answer EXECABORT
    check(r.get("{acct}:b"), b"before", "nothing applied after EXECABORT")
    check(r.get("{other}:c"), None, "nothing applied on the other slot")
    # A command error at EXEC time: the others apply, the error comes back in place.
    p = r.pipeline()
    p.set("{acct}:c", "s").lpush("{acct}:c", "x").get("{acct}:c")
    out = p.execute(raise_on_error=False)
    check(out[0], True, "EXEC: SET")
    if not isinstance(out[1], ResponseError):
        raise AssertionError(f"EXEC: error in place: {out[1]!r}")
    check(out[2], b"s", "EXEC: GET")


def incrementer(key, times, retries):
    r = client()
    for _ in range(times):
        with r.pipeline() as p:
            while True:
                try:
                    p.watch(key)
                    current = int(p.get(key) or 0)
                    p.multi()
                    p.set(key, current + 1)
                    p.execute()
                    break
                except WatchError:
                    retries.append(1)
    r.close()


def optimistic_locking(r):
    key = "{ctr}:value"
    r.delete(key)
    retries = []
    workers = [threading.Thread(target=incrementer, args=(key, 100, retries)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    check(r.get(key), b"400", "WATCH counter after 4 x 100 increments")
    print(f"watch retries: {len(retries)}")
    # A watched key changed by another client: EXEC answers null, redis-py raises WatchError.
    other = client()
    with r.pipeline() as p:
        p.watch(key)
        other.set(key, "changed")
        p.multi()
        p.set(key, "mine")
        try:
            p.execute()
            raise AssertionError("EXEC ran after the watched key changed")
        except WatchError:
            pass
    check(r.get(key), b"changed", "the other client's write stands")
    # Watched and untouched: EXEC runs.
    with r.pipeline() as p:
        p.watch(key)
        p.multi()
        p.set(key, "mine")
        check(p.execute(), [True], "EXEC after an untouched WATCH")
    check(r.get(key), b"mine", "EXEC applied")
    # The transaction helper retries by itself.
    def add_one(pipe):
        v = int(pipe.get("{ctr}:n") or 0)
        pipe.multi()
        pipe.set("{ctr}:n", v + 1)

    r.delete("{ctr}:n")
    r.transaction(add_one, "{ctr}:n")
    check(r.get("{ctr}:n"), b"1", "Redis.transaction")
    other.close()


def locks(r):
    lock = r.lock("py:lock", timeout=5)
    check(lock.acquire(blocking=False), True, "Lock acquire")
    check(lock.locked(), True, "Lock locked")
    check(lock.owned(), True, "Lock owned")
    rival = client().lock("py:lock", timeout=5)
    check(rival.acquire(blocking=False), False, "a second Lock cannot acquire")
    check(lock.extend(10), True, "Lock extend")
    ttl = r.pttl("py:lock")
    if not 10_000 < ttl <= 15_000:
        raise AssertionError(f"Lock extend: PTTL {ttl}")
    check(lock.reacquire(), True, "Lock reacquire")
    if not 4_000 < r.pttl("py:lock") <= 5_000:
        raise AssertionError("Lock reacquire: PTTL")
    lock.release()
    check(lock.locked(), False, "Lock released")
    check(rival.acquire(blocking=True, blocking_timeout=2), True, "the rival acquires after release")
    # The release script sees the token changed: LockNotOwnedError, the rival's lock untouched.
    check(lock.acquire(blocking=False), False, "Lock held by the rival")
    stolen = r.lock("py:lock", timeout=5)
    stolen.local.token = rival.local.token
    r.set("py:lock", "someone-else", px=5000)
    try:
        stolen.release()
        raise AssertionError("a Lock whose token changed was released")
    except LockNotOwnedError:
        pass
    check(r.get("py:lock"), b"someone-else", "the other holder's lock stands")
    # As a context manager, as applications use it.
    with r.lock("py:lock2", timeout=5, blocking_timeout=2):
        check(r.exists("py:lock2"), 1, "Lock held in a with block")
    check(r.exists("py:lock2"), 0, "Lock released by the with block")


def two_phase(r):
    # Under write = "two_phase": a MULTI/EXEC of plain SETs over keys of different servers
    # commits atomically; redis-py's default pipeline is that transaction.
    keys = [f"tp:{i}" for i in range(12)]
    p = r.pipeline()
    for i, k in enumerate(keys):
        p.set(k, f"v{i}")
    p.incrby("tp:counter", 5)
    check(p.execute(), [True] * 12 + [5], "two-phase EXEC reply")
    check(r.mget(keys), [f"v{i}".encode() for i in range(12)], "two-phase values")
    # Every reply type of a transaction: reads see the transaction's own writes, a counter past
    # 2^53 comes back exact, doubles, maps and nulls in the client's protocol.
    r.set("tp:big", 9007199254740992)
    p = r.pipeline()
    p.set("tp:a", "1").get("tp:a").hset("tp:h", mapping={"f": "v"}).incr("tp:big").expire("tp:a", 100)
    p.zadd("tp:z", {"m": 1.5}).zincrby("tp:z", 1, "m").hgetall("tp:h").get("tp:missing").delete("tp:nothing")
    check(
        p.execute(),
        [True, b"1", 1, 9007199254740993, True, 1, 2.5, {b"f": b"v"}, None, 0],
        "two-phase EXEC of mixed commands",
    )
    check(r.get("tp:big"), b"9007199254740993", "the counter stored")
    # Scripts cannot run under two_phase (the engine applies writes inside scripts): a Lock
    # acquires (SET NX PX) but cannot release or extend (EVALSHA); the error says why.
    lock = r.lock("tp:lock", timeout=5)
    check(lock.acquire(blocking=False), True, "Lock acquire under two_phase")
    try:
        lock.release()
        raise AssertionError("a Lock released under two_phase")
    except ResponseError as e:
        if "two_phase" not in str(e):
            raise
    # A queuing error aborts the transaction: nothing applied on any server.
    p = r.pipeline()
    for k in keys:
        p.set(k, "aborted")
    p.execute_command("NOSUCHCOMMAND", "x")
    try:
        p.execute()
        raise AssertionError("a transaction with an unknown command ran")
    except ResponseError:
        pass
    check(r.mget(keys), [f"v{i}".encode() for i in range(12)], "nothing applied after EXECABORT")
    # Concurrent writers of the same keys: each transaction writes its own number into every key.
    # Atomic transactions leave every key with the same number, the last committed transaction's.
    errors = []
    conflicts = []

    def writer(n):
        c = client()
        for round_ in range(15):
            value = f"w{n}-{round_}"
            for _attempt in range(50):
                p = c.pipeline()
                for k in keys:
                    p.set(k, value)
                try:
                    check(p.execute(), [True] * len(keys), "concurrent two-phase EXEC")
                    break
                except ResponseError as e:
                    if "TRYAGAIN" not in str(e):
                        errors.append(repr(e))
                        return
                    conflicts.append(1)
            else:
                errors.append("no commit in 50 attempts")
                return
        c.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise AssertionError(f"writers: {errors}")
    values = r.mget(keys)
    if len(set(values)) != 1 or values[0] is None:
        raise AssertionError(f"two-phase transactions interleaved: {values}")
    print(f"two-phase final value: {values[0].decode()}, TRYAGAIN retries: {len(conflicts)}")


def main():
    r = client()
    resp3 = PROTOCOL != "2"
    if SCENARIO == "session":
        plain_commands(r, resp3)
        multi_key(r)
        more_types(r, resp3)
        server_face(r, resp3)
        pipelines(r)
        optimistic_locking(r)
        locks(r)
        binary(r)
        asyncio.run(asyncio_session())
    elif SCENARIO == "two_phase":
        check(str(protocol_in_use(r)), "3" if resp3 else "2", "CLIENT INFO resp")
        two_phase(r)
    else:
        raise SystemExit(f"unknown scenario {SCENARIO}")
    r.close()
    print("ok")


if __name__ == "__main__":
    main()
