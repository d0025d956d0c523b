#!/usr/bin/env python3
"""Low-load latency with microsecond resolution: one client, one request at a time.

redis-benchmark's percentiles at this range come in steps of 8 microseconds, the size of the
difference between two proxies that both sit at the floor of one extra loopback hop. This
probe times each round trip with perf_counter_ns instead, and interleaves the targets finely
(ROUNDS rounds of PER_ROUND requests to each target, the order rotating every round), so that a
noisy machine's drift hits all targets alike. The client's own cost is the same for every
target, so differences between targets are what it measures.

    latency.py --test get --port direct=6379 --port keyway=6380 ... > latency-get.json

Writes JSON: per target p50/p99 over all requests (µs), and per round the p50 minus direct's
p50 of the same round.
"""
import argparse
import json
import random
import socket
import statistics
import sys
import time


def command(test, key, value):
    if test == "get":
        args = [b"GET", key]
    else:
        args = [b"SET", key, value]
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def read_reply(sock, buf):
    """Reads one simple (+OK, -ERR, :n) or bulk ($n / $-1) reply; returns the leftover bytes."""
    while True:
        nl = buf.find(b"\r\n")
        if nl >= 0:
            if buf[:1] == b"$":
                n = int(buf[1:nl])
                end = nl + 2 + (n + 2 if n >= 0 else 0)
                if len(buf) >= end:
                    return buf[end:]
            else:
                return buf[nl + 2:]
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--test", choices=("get", "set"), required=True)
    ap.add_argument("--port", action="append", required=True, help="name=port, direct first")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--per-round", type=int, default=400)
    ap.add_argument("--keyspace", type=int, default=100000)
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()

    targets = []
    for spec in a.port:
        name, _, port = spec.partition("=")
        s = socket.create_connection(("127.0.0.1", int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        targets.append((name, s))
    value = b"x" * a.size
    rng = random.Random(1)
    samples = {name: [] for name, _ in targets}
    per_round_p50 = {name: [] for name, _ in targets}
    # Warm up every connection (and the proxies' server connections).
    for name, s in targets:
        for _ in range(200):
            s.sendall(command(a.test, b"key:%012d" % rng.randrange(a.keyspace), value))
            read_reply(s, b"")
    for r in range(a.rounds):
        k = r % len(targets)
        for name, s in targets[k:] + targets[:k]:
            lat = []
            for _ in range(a.per_round):
                req = command(a.test, b"key:%012d" % rng.randrange(a.keyspace), value)
                t0 = time.perf_counter_ns()
                s.sendall(req)
                read_reply(s, b"")
                lat.append((time.perf_counter_ns() - t0) / 1000)
            samples[name].extend(lat)
            per_round_p50[name].append(statistics.median(lat))
    direct = targets[0][0]
    out = {"test": a.test, "rounds": a.rounds, "per_round": a.per_round, "targets": {}}
    for name, _ in targets:
        xs = sorted(samples[name])
        added = [p - d for p, d in zip(per_round_p50[name], per_round_p50[direct])]
        out["targets"][name] = {
            "p50_us": statistics.median(xs),
            "p99_us": xs[min(len(xs) - 1, int(len(xs) * 0.99))],
            "added_p50_us": statistics.median(added),
            "added_p50_per_round_us": [round(x, 1) for x in added],
        }
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
