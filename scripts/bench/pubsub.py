#!/usr/bin/env python3
"""Pub/sub fan-out through Keyway against redis-server directly. Prints JSON on stdout.

    scripts/bench/pubsub.py --keyway target/release/keyway [--subscribers 1000] [--seconds 5]
                            [--rounds 3] [--payload 64] [--window 100]

Starts 3 pool redis-servers and 1 standalone "direct" redis-server (no persistence, free
loopback ports, a temporary directory) and Keyway over the pool. Each round, once directly and
once through Keyway:

- `--subscribers` client connections SUBSCRIBE to one channel, spread over 2 reader processes
  that read with epoll and count bytes (a message is a fixed-size frame);
- one publisher PUBLISHes `--payload`-byte messages as fast as delivery allows: at most
  `--window` messages published and not yet read by every subscriber (so that neither
  redis-server's output buffers nor Keyway's mailboxes fill), pipelined;
- after `--seconds`, messages delivered per second (subscribers x messages read by them) and the
  CPU time the serving process (Keyway, or the direct redis-server) used per delivered message
  (utime + stime from /proc, so Keyway's figure excludes the pool server's work).

The ratio of the medians (Keyway over direct) is the fan-out figure of docs/benchmarks.md.
"""
import argparse
import json
import multiprocessing
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CHANNEL = b"{bench}news"


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


def bulk(b):
    return b"$%d\r\n%s\r\n" % (len(b), b)


def ack_len():
    return len(b"*3\r\n" + bulk(b"subscribe") + bulk(CHANNEL) + b":1\r\n")


def message_len(payload):
    return len(b"*3\r\n" + bulk(b"message") + bulk(CHANNEL) + bulk(b"x" * payload))


def answers(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        s.sendall(b"PING\r\n")
        ok = s.recv(16).startswith(b"+PONG")
        s.close()
        return ok
    except OSError:
        return False


def wait_for(cond, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reader(port, n, received, ready, stop):
    """Subscribes `n` connections, then counts the bytes they read until `stop`."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(encode("SUBSCRIBE", CHANNEL))
        socks.append(s)
    skip = ack_len()
    for s in socks:
        got = b""
        while len(got) < skip:
            got += s.recv(skip - len(got))
        s.setblocking(False)
    ep = select.epoll()
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN)
    by_fd = {s.fileno(): s for s in socks}
    total = 0
    ready.release()
    while not stop.is_set():
        for fd, _ in ep.poll(0.1):
            try:
                while True:
                    chunk = by_fd[fd].recv(1 << 20)
                    if not chunk:
                        break
                    total += len(chunk)
                    if len(chunk) < (1 << 20):
                        break
            except BlockingIOError:
                pass
        with received.get_lock():
            received.value = total
    for s in socks:
        s.close()


def fan_out(port, serving_pid, subscribers, seconds, payload, window):
    per = [subscribers // 2, subscribers - subscribers // 2]
    counters = [multiprocessing.Value("q", 0) for _ in per]
    ready = multiprocessing.Semaphore(0)
    stop = multiprocessing.Event()
    procs = [multiprocessing.Process(target=reader, args=(port, n, c, ready, stop))
             for n, c in zip(per, counters)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    mlen = message_len(payload)
    pub = socket.create_connection(("127.0.0.1", port), timeout=30)
    pub.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frame = encode("PUBLISH", CHANNEL, b"x" * payload)
    batch = 10
    published = 0
    replies = b""
    cpu0 = cpu_seconds(serving_pid)
    delivered0 = 0
    start = time.time()
    while time.time() - start < seconds:
        delivered = sum(c.value for c in counters) // mlen
        if published - delivered // subscribers < window:
            pub.sendall(frame * batch)
            published += batch
            want = batch * 4  # ":1\r\n" each
            while len(replies) < want:
                replies += pub.recv(65536)
            replies = replies[want:]
        else:
            time.sleep(0.0002)
    elapsed = time.time() - start
    delivered = sum(c.value for c in counters) // mlen - delivered0
    cpu = cpu_seconds(serving_pid) - cpu0
    stop.set()
    for p in procs:
        p.join()
    pub.close()
    return {
        "delivered_per_sec": delivered / elapsed,
        "cpu_us_per_delivered": cpu / max(delivered, 1) * 1e6,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keyway", required=True, help="the keyway binary")
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--payload", type=int, default=64)
    ap.add_argument("--window", type=int, default=100)
    a = ap.parse_args()

    d = tempfile.mkdtemp(prefix="keyway-pubsub.")
    procs = []
    try:
        ports = free_ports(6)
        pool, direct, listen, admin = ports[:3], ports[3], ports[4], ports[5]
        for i, p in enumerate(pool + [direct]):
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", d, "--logfile", f"{d}/redis-{i}.log",
                 "--maxclients", str(a.subscribers + 1000)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        direct_pid = procs[-1].pid
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
                    f"[limits]\nmax_clients = {a.subscribers + 1000}\n[pool]\n{servers}")
        for p in pool + [direct]:
            wait_for(lambda: answers(p), 10)
        env = dict(os.environ, RUST_LOG=os.environ.get("BENCH_LOG", "warn"))
        kw = subprocess.Popen([a.keyway, "serve", "--config", config], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(f"{d}/keyway.log", "w"))
        procs.append(kw)
        if not wait_for(lambda: answers(listen), 10):
            sys.exit("keyway did not start: " + open(f"{d}/keyway.log").read())

        direct_runs, keyway_runs = [], []
        for _ in range(a.rounds):
            direct_runs.append(fan_out(direct, direct_pid, a.subscribers, a.seconds,
                                       a.payload, a.window))
            keyway_runs.append(fan_out(listen, kw.pid, a.subscribers, a.seconds,
                                       a.payload, a.window))
        rate = lambda runs: [round(r["delivered_per_sec"]) for r in runs]
        cpu = lambda runs: [round(r["cpu_us_per_delivered"], 3) for r in runs]
        out = {
            "delivered_messages_per_sec": {
                "direct": rate(direct_runs),
                "keyway": rate(keyway_runs),
                "keyway_over_direct": round(
                    statistics.median(rate(keyway_runs)) / statistics.median(rate(direct_runs)),
                    3),
            },
            "cpu_us_per_delivered_message": {
                "direct_redis_server": cpu(direct_runs),
                "keyway": cpu(keyway_runs),
            },
            "command": " ".join(["scripts/bench/pubsub.py"] + sys.argv[1:]),
        }
        if kw.poll() is not None:
            sys.exit(f"keyway exited ({kw.returncode}): " + open(f"{d}/keyway.log").read()[-4000:])
        print(json.dumps(out, indent=2))
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
