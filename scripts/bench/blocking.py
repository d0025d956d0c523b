#!/usr/bin/env python3
"""Blocking commands through Keyway: BLPOP/RPUSH ping-pong against redis-server directly, and
Keyway's memory per blocked client. Prints JSON on stdout.

    scripts/bench/blocking.py --keyway target/release/keyway [--seconds 5] [--rounds 3]
                              [--blocked 3000]

Starts 3 pool redis-servers and 1 standalone "direct" redis-server (no persistence, free
loopback ports, a temporary directory) and Keyway over the pool, then:

- ping-pong: two clients; A does `BLPOP ping 0` then `RPUSH pong x`, B does `RPUSH ping x` then
  `BLPOP pong 0` (the keys share a hash tag, so through Keyway both live on one server). One
  round trip = B's RPUSH+BLPOP, which waits for A's BLPOP to wake and A's RPUSH. Round trips per
  second through Keyway and directly, alternated `--rounds` times, `--seconds` each; the ratio
  of the medians is reported.
- memory: `--blocked` client connections each send PING (so each has been active once and is
  parked, as a pooled client is), Keyway's RSS is read; then each sends `BLPOP <own key> 0` and
  RSS is read once Keyway's `keyway_blocked_clients` gauge shows them all blocked; the
  difference per client is Keyway's memory per blocked client, its server connection's
  user-space state included (its kernel socket buffers are not RSS). Then every client closes
  and the servers are checked to hold no blocked client.
- sequential: for scale, one client's RPUSH then LPOP (no blocking), one at a time, through
  Keyway and directly in the same rounds: what the proxy hop alone costs a chain of requests.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def encode(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def reply(self):
        line = self.file.readline()
        if not line:
            raise RuntimeError("connection closed")
        t, rest = line[:1], line[1:-2]
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self.file.read(n + 2)[:-2]
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        return rest

    def close(self):
        # The file made by makefile() keeps the socket open until it is closed too.
        self.file.close()
        self.sock.close()

    def call(self, *args):
        self.sock.sendall(encode(*args))
        return self.reply()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def metric(admin, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def wait_for(cond, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def ping_pong(port, seconds):
    """Round trips per second between two clients over BLPOP/RPUSH."""
    ping, pong = "{pp}ping", "{pp}pong"
    setup = Conn(port)
    setup.call("DEL", ping, pong)
    stop = threading.Event()

    def responder():
        a = Conn(port)
        wake, answer = encode("BLPOP", ping, 1), encode("RPUSH", pong, "x")
        while not stop.is_set():
            a.sock.sendall(wake)
            if a.reply() is None:
                continue
            a.sock.sendall(answer)
            a.reply()

    t = threading.Thread(target=responder, daemon=True)
    t.start()
    b = Conn(port)
    push, wait = encode("RPUSH", ping, "x"), encode("BLPOP", pong, 0)
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        b.sock.sendall(push)
        b.reply()
        b.sock.sendall(wait)
        b.reply()
        n += 1
    elapsed = time.perf_counter() - start
    stop.set()
    t.join(timeout=5)
    return n / elapsed


def sequential(port, seconds):
    """Round trips per second of one client's RPUSH then LPOP, one at a time: what two
    sequential requests cost through the same path without blocking (the proxy hop's share)."""
    c = Conn(port)
    push, pop = encode("RPUSH", "{pp}seq", "x"), encode("LPOP", "{pp}seq")
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        c.sock.sendall(push)
        c.reply()
        c.sock.sendall(pop)
        c.reply()
        n += 1
    return n / (time.perf_counter() - start)


def memory(port, admin, pid, blocked, servers):
    conns = [Conn(port) for _ in range(blocked)]
    for c in conns:
        c.sock.sendall(encode("PING"))
    for c in conns:
        c.reply()
    time.sleep(1.0)
    idle = rss_kib(pid)
    for i, c in enumerate(conns):
        c.sock.sendall(encode("BLPOP", f"blocked:{i}", 0))
    ok = wait_for(lambda: metric(admin, "keyway_blocked_clients") == blocked, 60)
    time.sleep(1.0)
    held = rss_kib(pid)
    on_servers = 0
    for sp in servers:
        info = Conn(sp).call("INFO", "clients").decode()
        on_servers += int(info.split("blocked_clients:")[1].split()[0])
    for c in conns:
        c.close()
    freed = wait_for(lambda: metric(admin, "keyway_blocked_clients") == 0, 60)
    left = 0
    for sp in servers:
        wait_for(lambda: b"blocked_clients:0" in Conn(sp).call("INFO", "clients"), 30)
        info = Conn(sp).call("INFO", "clients").decode()
        left += int(info.split("blocked_clients:")[1].split()[0])
    time.sleep(1.0)
    after = rss_kib(pid)
    return {
        "blocked_clients": blocked,
        "all_blocked": ok,
        "blocked_on_servers": on_servers,
        "rss_parked_kib": idle,
        "rss_blocked_kib": held,
        "bytes_per_blocked_client": round((held - idle) * 1024 / blocked),
        "gauge_back_to_zero": freed,
        "blocked_on_servers_after_close": left,
        "rss_after_close_kib": after,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keyway", required=True, help="the keyway binary")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--blocked", type=int, default=3000)
    a = ap.parse_args()

    d = tempfile.mkdtemp(prefix="keyway-blocking.")
    procs = []
    try:
        ports = free_ports(6)
        pool, direct, listen, admin = ports[:3], ports[3], ports[4], ports[5]
        for i, p in enumerate(pool + [direct]):
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", d, "--logfile", f"{d}/redis-{i}.log",
                 "--maxclients", str(a.blocked + 1000)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        token = os.path.join(d, "token")
        with open(token, "w") as f:
            f.write("bench-token-0123456789abcdef\n")
        servers = "".join(
            f'\n[[pool.servers]]\nname = "{n}"\naddr = "127.0.0.1:{p}"\n'
            for n, p in zip("abc", pool))
        config = os.path.join(d, "keyway.toml")
        with open(config, "w") as f:
            f.write(f'listen = "127.0.0.1:{listen}"\nadmin = "127.0.0.1:{admin}"\n'
                    f'admin_token_file = "{token}"\n'
                    f"[limits]\nmax_blocked_per_server = {a.blocked}\n"
                    f"max_clients = {a.blocked + 1000}\n[pool]\n{servers}")
        for p in pool + [direct]:
            wait_for(lambda: _answers(p), 10)
        env = dict(os.environ, RUST_LOG=os.environ.get("BENCH_LOG", "warn"))
        kw = subprocess.Popen([a.keyway, "serve", "--config", config], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(f"{d}/keyway.log", "w"))
        procs.append(kw)
        if not wait_for(lambda: _answers(listen), 10):
            sys.exit("keyway did not start: " + open(f"{d}/keyway.log").read())

        direct_rates, keyway_rates, seq_direct, seq_keyway = [], [], [], []
        for _ in range(a.rounds):
            direct_rates.append(ping_pong(direct, a.seconds))
            keyway_rates.append(ping_pong(listen, a.seconds))
            seq_direct.append(sequential(direct, a.seconds))
            seq_keyway.append(sequential(listen, a.seconds))
        out = {
            "ping_pong_round_trips_per_sec": {
                "direct": [round(r) for r in direct_rates],
                "keyway": [round(r) for r in keyway_rates],
                "keyway_over_direct": round(
                    statistics.median(keyway_rates) / statistics.median(direct_rates), 3),
            },
            "sequential_rpush_lpop_per_sec": {
                "direct": [round(r) for r in seq_direct],
                "keyway": [round(r) for r in seq_keyway],
                "keyway_over_direct": round(
                    statistics.median(seq_keyway) / statistics.median(seq_direct), 3),
            },
            "memory": memory(listen, admin, kw.pid, a.blocked, pool),
            "command": " ".join(["scripts/bench/blocking.py"] + sys.argv[1:]),
        }
        if kw.poll() is not None:
            sys.exit(f"keyway exited ({kw.returncode}): " + open(f"{d}/keyway.log").read()[-4000:])
        print(json.dumps(out, indent=2))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(d, ignore_errors=True)


def _answers(port):
    try:
        return Conn(port).call("PING") == b"PONG"
    except OSError:
        return False


if __name__ == "__main__":
    main()
