#!/usr/bin/env python3
"""A write loop through a Redis-protocol port while one server hangs, for
scripts/bench/failfast.sh.

--clients connections each send `SET ff:<n> <value>` one at a time (the next when the reply
came), over --keys keys, and count the replies that are +OK and those that are errors. The run
has three phases: --before seconds with every server running, --during seconds with the process
--stop-pid stopped (SIGSTOP), then SIGCONT and --after seconds. Prints one line per phase:
successful writes/s, errors/s, and the slowest reply; "during" is also given without its first
second (the health checks' detection time), as "steady".
"""

import argparse
import os
import signal
import socket
import threading
import time


def enc(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        # (time the reply came, ok, seconds it took)
        self.events = []


def client(port, keys, seed, stop, stats):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = sock.makefile("rb")
    n = seed
    local = []
    while not stop.is_set():
        n = (n * 1103515245 + 12345) % (1 << 31)
        t0 = time.monotonic()
        sock.sendall(enc("SET", "ff:%d" % (n % keys), "v%d" % n))
        line = f.readline()
        t1 = time.monotonic()
        local.append((t1, line.startswith(b"+"), t1 - t0))
        if len(local) >= 512:
            with stats.lock:
                stats.events.extend(local)
            local = []
    with stats.lock:
        stats.events.extend(local)
    sock.close()


def phase(stats, name, start, end):
    ev = [e for e in stats.events if start <= e[0] < end]
    secs = max(end - start, 1e-9)
    ok = sum(1 for e in ev if e[1])
    err = len(ev) - ok
    slowest = max((e[2] for e in ev), default=0.0)
    print(f"{name:8s} {secs:5.1f}s  ok/s {ok / secs:9.0f}  errors/s {err / secs:9.0f}  slowest {slowest * 1000:7.0f} ms")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--stop-pid", type=int, required=True)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--keys", type=int, default=10000)
    p.add_argument("--before", type=float, default=3)
    p.add_argument("--during", type=float, default=6)
    p.add_argument("--after", type=float, default=3)
    a = p.parse_args()
    stats, stop = Stats(), threading.Event()
    threads = [
        threading.Thread(target=client, args=(a.port, a.keys, i + 1, stop, stats))
        for i in range(a.clients)
    ]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    time.sleep(a.before)
    t_stop = time.monotonic()
    os.kill(a.stop_pid, signal.SIGSTOP)
    try:
        time.sleep(a.during)
    finally:
        t_cont = time.monotonic()
        os.kill(a.stop_pid, signal.SIGCONT)
    time.sleep(a.after)
    t_end = time.monotonic()
    stop.set()
    for t in threads:
        t.join()
    phase(stats, "before", t0, t_stop)
    phase(stats, "during", t_stop, t_cont)
    phase(stats, "steady", t_stop + 1, t_cont)
    phase(stats, "after", t_cont, t_end)


if __name__ == "__main__":
    main()
