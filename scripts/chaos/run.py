#!/usr/bin/env python3
"""One chaos run against Keyway: the workload, the faults, the history (scripts/chaos.sh).

Starts three redis-servers (AOF, `appendfsync always`) and two Keyways over them, runs
--clients clients (INCR on counters, 3-key MSETs whose keys live on different servers, GET,
MGET), half through each Keyway, and injects faults on a schedule drawn from --seed: a server
killed with SIGKILL and restarted from its AOF, a server stopped (SIGSTOP, then SIGCONT),
CLIENT PAUSE, DEBUG SLEEP, a Keyway killed with SIGKILL and restarted. One fault at a time;
every kind comes once before any comes twice.

Writes into --out:
  history.jsonl  one line per operation: client, Keyway, op, args, start and end (seconds on
                 the run's monotonic clock), status ok | fail (known not applied: an error
                 saying nothing was written; any failed read) | unknown (an error or a timeout
                 after which the write may have been applied), and the result or error text;
                 and one line per fault: kind, target, when it began and when it was healed.
  final.json     the run's settings, every key's replica set (`keyway route`) and its value
                 on each server, read directly once the load stopped and (two_phase) no lock
                 was left, and what was left locked.
scripts/chaos/check.py reads them.
"""

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

NAMES = ["a", "b", "c"]


class RespError(Exception):
    pass


class ErrorReply:
    def __init__(self, text):
        self.text = text


def encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    """A RESP2 connection: one command at a time, every read bounded by `timeout`."""

    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.f = self.sock.makefile("rb")

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass

    def call(self, *args):
        self.sock.sendall(encode(args))
        return self.read()

    def read(self):
        line = self.f.readline()
        if not line.endswith(b"\r\n"):
            raise RespError("connection closed")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return ErrorReply(rest.decode(errors="replace"))
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            if len(data) != n + 2:
                raise RespError("connection closed")
            return data[:-2].decode(errors="replace")
        if t == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self.read() for _ in range(n)]
        raise RespError("unexpected reply %r" % line[:40])


def free_ports(n):
    """n free loopback ports below the kernel's ephemeral range (32768 and up on Linux), so that
    no outgoing connection (a client redialling a killed Keyway) can take a port a restarted
    process needs."""
    rng = random.SystemRandom()
    ports = []
    while len(ports) < n:
        port = rng.randrange(10000, 30000)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            if port not in ports:
                ports.append(port)
        except OSError:
            pass
        finally:
            s.close()
    return ports


def wait_pong(port, limit):
    """True once the process on port answers PONG (not -LOADING), within limit seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            c = Conn(port, 1.0)
            r = c.call("PING")
            c.close()
            if r == "PONG":
                return True
        except (OSError, RespError):
            pass
        time.sleep(0.05)
    return False


class Cluster:
    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        ports = free_ports(7)
        self.rports = ports[:3]
        self.kports = ports[3:5]
        self.aports = ports[5:7]
        self.redis = [None] * 3
        self.keyways = [None] * 2
        self.config = os.path.join(tmp, "keyway.toml")
        self.write_config()

    def write_config(self):
        a = self.args
        pool = [
            "[pool]",
            "replicas = %d" % a.replicas,
            'write = "%s"' % a.mode,
            'timeout = "%dms"' % int(a.timeout * 1000),
        ]
        for name, port in zip(NAMES, self.rports):
            pool += ["", "[[pool.servers]]", 'name = "%s"' % name, 'addr = "127.0.0.1:%d"' % port]
        pool += ["", "[pool.health]", 'interval = "100ms"', "fall = 2"]
        self.pool_toml = "\n".join(pool) + "\n"
        for k in range(2):
            with open(os.path.join(self.tmp, "keyway-%d.toml" % k), "w") as f:
                f.write('listen = "127.0.0.1:%d"\nadmin = "127.0.0.1:%d"\n' % (self.kports[k], self.aports[k]))
                f.write(self.pool_toml)
        self.config = os.path.join(self.tmp, "keyway-0.toml")

    def start_redis(self, i):
        d = os.path.join(self.tmp, "redis-%s" % NAMES[i])
        os.makedirs(d, exist_ok=True)
        log = open(os.path.join(d, "stdout.log"), "ab")
        self.redis[i] = subprocess.Popen(
            ["redis-server", "--port", str(self.rports[i]), "--bind", "127.0.0.1", "--dir", d,
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--enable-debug-command", "yes", "--logfile", os.path.join(d, "redis.log")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        if not wait_pong(self.rports[i], 30):
            with open(os.path.join(d, "redis.log"), errors="replace") as f:
                tail = f.readlines()[-5:]
            raise SystemExit("chaos: redis-server %s did not start:\n%s" % (NAMES[i], "".join(tail)))

    def start_keyway(self, k):
        log = open(os.path.join(self.tmp, "keyway-%d.log" % k), "ab")
        # Settings come from the file only: KEYWAY_* variables would override it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYWAY_")}
        env["RUST_LOG"] = os.environ.get("RUST_LOG", "warn")
        self.keyways[k] = subprocess.Popen(
            [self.args.keyway, "serve", "--config", os.path.join(self.tmp, "keyway-%d.toml" % k)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        log.close()
        if not wait_pong(self.kports[k], 30):
            with open(os.path.join(self.tmp, "keyway-%d.log" % k), errors="replace") as f:
                tail = f.readlines()[-5:]
            raise SystemExit("chaos: keyway %d did not start:\n%s" % (k, "".join(tail)))

    def stop_all(self):
        for p in self.keyways + self.redis:
            if p is not None and p.poll() is None:
                try:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                except OSError:
                    pass
                p.wait()

    def route(self, keys):
        out = subprocess.run([self.args.keyway, "route", "--config", self.config] + keys,
                             check=True, capture_output=True, text=True).stdout
        sets = {}
        for line in out.splitlines():
            key, _slot, reps, _then = line.split("\t")
            sets[key] = reps.split(" ", 1)[1].split(",")
        return sets


class Keys:
    """Counters, and groups of three keys written together by MSET, each group spread over at
    least two primaries (so its MSET crosses servers)."""

    def __init__(self, cluster, n_counters, n_groups):
        self.counters = ["cnt:%d" % i for i in range(n_counters)]
        cand = ["ms:%d:%d" % (g, j) for g in range(20 * n_groups) for j in range(3)]
        sets = cluster.route(self.counters + cand)
        self.groups = []
        for g in range(20 * n_groups):
            ks = ["ms:%d:%d" % (g, j) for j in range(3)]
            if len({sets[k][0] for k in ks}) >= 2:
                self.groups.append(ks)
            if len(self.groups) == n_groups:
                break
        self.sets = {k: sets[k] for k in self.counters + [k for g in self.groups for k in g]}


def is_definite_failure(text):
    """An error reply that says the write was applied nowhere."""
    return "nothing was written" in text


def client_loop(i, cluster, keys, args, stop, out, t_base):
    rng = random.Random(args.seed * 1000 + i + 1)
    kw = i % 2
    port = cluster.kports[kw]
    conn = None
    seq = 0
    hist = []
    while not stop.is_set():
        if conn is None:
            try:
                conn = Conn(port, args.client_timeout)
            except OSError:
                time.sleep(0.05)
                continue
        x = rng.random()
        if x < 0.30:
            op, cmd, write = "INCR", ["INCR", rng.choice(keys.counters)], True
        elif x < 0.55:
            seq += 1
            val = "%d.%d" % (i, seq)
            g = rng.choice(keys.groups)
            cmd = ["MSET"]
            for k in g:
                cmd += [k, val]
            op, write = "MSET", True
        elif x < 0.75:
            op, write = "GET", False
            cmd = ["GET", rng.choice(keys.counters if rng.random() < 0.5 else rng.choice(keys.groups))]
        else:
            op, write = "MGET", False
            if rng.random() < 0.7:
                cmd = ["MGET"] + rng.choice(keys.groups)
            else:
                cmd = ["MGET"] + rng.sample(keys.counters, 3)
        t0 = time.monotonic() - t_base
        try:
            r = conn.call(*cmd)
            t1 = time.monotonic() - t_base
            if isinstance(r, ErrorReply):
                st = "fail" if (not write or is_definite_failure(r.text)) else "unknown"
                rec = {"st": st, "err": r.text}
            else:
                rec = {"st": "ok", "res": r}
        except (OSError, RespError, ValueError) as e:
            t1 = time.monotonic() - t_base
            rec = {"st": "unknown" if write else "fail", "err": "client: %s" % (e or type(e).__name__)}
            conn.close()
            conn = None
        rec.update({"c": i, "kw": kw, "op": op, "args": cmd[1:], "t0": round(t0, 6), "t1": round(t1, 6)})
        hist.append(rec)
    if conn is not None:
        conn.close()
    out[i] = hist


def inject(kind, rng, cluster, t_base, log, scale):
    """Injects one fault and heals it; returns its record."""
    now = lambda: time.monotonic() - t_base
    if kind == "keyway_kill":
        k = rng.randrange(2)
        t0 = now()
        cluster.keyways[k].kill()
        cluster.keyways[k].wait()
        time.sleep(rng.uniform(0.2, 1.5) * scale)
        cluster.start_keyway(k)
        return {"fault": kind, "target": "keyway-%d" % k, "t0": t0, "t1": now()}
    i = rng.randrange(3)
    name, port, proc = NAMES[i], cluster.rports[i], cluster.redis[i]
    if kind == "redis_kill":
        t0 = now()
        proc.kill()
        proc.wait()
        time.sleep(rng.uniform(0.3, 2.0) * scale)
        cluster.start_redis(i)
        return {"fault": kind, "target": name, "t0": t0, "t1": now()}
    if kind == "redis_stop":
        d = rng.uniform(0.5, 3.0) * scale
        t0 = now()
        proc.send_signal(signal.SIGSTOP)
        time.sleep(d)
        proc.send_signal(signal.SIGCONT)
        return {"fault": kind, "target": name, "t0": t0, "t1": now()}
    if kind == "client_pause":
        ms = int(rng.uniform(0.5, 3.0) * scale * 1000)
        c = Conn(port, 5)
        t0 = now()
        r = c.call("CLIENT", "PAUSE", str(ms), "ALL")
        c.close()
        if r != "OK":
            log("CLIENT PAUSE answered %r" % getattr(r, "text", r))
        time.sleep(ms / 1000)
        return {"fault": kind, "target": name, "t0": t0, "t1": now()}
    if kind == "debug_sleep":
        secs = round(rng.uniform(0.5, 3.0) * scale, 2)
        c = Conn(port, secs + 10)
        t0 = now()
        r = c.call("DEBUG", "SLEEP", str(secs))
        c.close()
        if r != "OK":
            log("DEBUG SLEEP answered %r" % getattr(r, "text", r))
        return {"fault": kind, "target": name, "t0": t0, "t1": now()}
    raise ValueError(kind)


def fault_loop(args, cluster, stop_at, t_base, faults, log):
    rng = random.Random(args.seed)
    kinds = [k for k in args.faults.split(",") if k]
    bag = []
    time.sleep(args.warmup)
    while True:
        gap = rng.uniform(args.gap_min, args.gap_max)
        if time.monotonic() + gap + 5 > stop_at:
            return
        time.sleep(gap)
        if not bag:
            bag = list(kinds)
            rng.shuffle(bag)
        kind = bag.pop()
        f = inject(kind, rng, cluster, t_base, log, args.fault_scale)
        f["t0"], f["t1"] = round(f["t0"], 6), round(f["t1"], 6)
        faults.append(f)
        log("fault %s on %s: %.2f-%.2f s" % (f["fault"], f["target"], f["t0"], f["t1"]))


def server_keys(port, pattern):
    c = Conn(port, 10)
    cursor, found = "0", []
    while True:
        r = c.call("SCAN", cursor, "MATCH", pattern, "COUNT", "1000")
        cursor, batch = r[0], r[1]
        found += batch
        if cursor == "0":
            break
    c.close()
    return found


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keyway", required=True, help="the keyway binary")
    p.add_argument("--mode", required=True, choices=["primary", "all", "quorum", "two_phase"])
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--counters", type=int, default=12)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--timeout", type=float, default=1.0, help="pool.timeout, seconds")
    p.add_argument("--client-timeout", type=float, default=10.0)
    p.add_argument("--faults", default="redis_kill,redis_stop,client_pause,debug_sleep,keyway_kill")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--gap-min", type=float, default=2.0)
    p.add_argument("--gap-max", type=float, default=5.0)
    p.add_argument("--fault-scale", type=float, default=1.0,
                   help="multiplies how long each fault lasts (0.5-3 s stopped, paused or asleep; 0.3-2 s down)")
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    log = (lambda m: None) if args.quiet else (lambda m: print("chaos: " + m, file=sys.stderr, flush=True))

    tmp = tempfile.mkdtemp(prefix="keyway-chaos.", dir=args.out)
    cluster = Cluster(args, tmp)
    try:
        for i in range(3):
            cluster.start_redis(i)
        for k in range(2):
            cluster.start_keyway(k)
        keys = Keys(cluster, args.counters, args.groups)
        t_base = time.monotonic()
        stop_at = t_base + args.duration
        stop = threading.Event()
        results = [None] * args.clients
        threads = [threading.Thread(target=client_loop, args=(i, cluster, keys, args, stop, results, t_base))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        faults = []
        fault_loop(args, cluster, stop_at, t_base, faults, log)
        time.sleep(max(0.0, stop_at - time.monotonic()))
        stop.set()
        for t in threads:
            t.join()
        t_end = time.monotonic() - t_base

        # Quiescence: nothing in flight; under two_phase, recovery resolves what is left locked.
        locks_left = []
        if args.mode == "two_phase":
            deadline = time.monotonic() + 30
            while True:
                locks_left = [(NAMES[i], k) for i in range(3)
                              for k in server_keys(cluster.rports[i], "__keyway:lock:*")]
                if not locks_left or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        values = {}
        for key, reps in keys.sets.items():
            values[key] = {}
            for name in reps:
                c = Conn(cluster.rports[NAMES.index(name)], 10)
                values[key][name] = c.call("GET", key)
                c.close()
        final = {
            "mode": args.mode, "replicas": args.replicas, "seed": args.seed, "duration": args.duration,
            "clients": args.clients, "timeout": args.timeout, "faults_enabled": args.faults.split(","),
            "t_end": t_end, "counters": keys.counters, "groups": keys.groups, "sets": keys.sets,
            "values": values, "locks_left": locks_left,
        }
        with open(os.path.join(args.out, "history.jsonl"), "w") as f:
            for hist in results:
                for rec in hist or []:
                    f.write(json.dumps(rec) + "\n")
            for rec in faults:
                f.write(json.dumps(rec) + "\n")
        with open(os.path.join(args.out, "final.json"), "w") as f:
            json.dump(final, f, indent=1)
    finally:
        cluster.stop_all()
        if not os.environ.get("CHAOS_KEEP"):
            subprocess.run(["rm", "-rf", tmp], check=False)


if __name__ == "__main__":
    main()
