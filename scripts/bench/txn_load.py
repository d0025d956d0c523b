#!/usr/bin/env python3
"""Load of transactions or plain pipelines on a Redis-protocol port, with the CPU it cost a
process (Keyway's), for scripts/bench/client_modes.sh.

Each of --conns connections sends --batches batches of --per-batch units, one batch at a time:
a unit is either `MULTI, SET x3, EXEC` (--mode multi) or the three SETs alone (--mode pipeline).
The replies of a batch have a known length, so the client reads bytes without parsing them and
costs little CPU. The keys of a unit are `{t}:a`, `{t}:b`, `{t}:c` (one slot) or those of --keys:
comma-separated keys, or several such groups separated by `;`, connection i using group i mod n
(so that connections need not contend for the same keys).

Prints one line: units/s, commands/s, and the CPU seconds the process --pid used per 1,000,000
commands (utime + stime from /proc/PID/stat).
"""

import argparse
import os
import sys
import socket
import threading
import time


def enc(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def unit(mode, keys, value):
    sets = b"".join(enc("SET", k, value) for k in keys)
    if mode == "multi":
        return enc("MULTI") + sets + enc("EXEC"), b"+OK\r\n" + b"+QUEUED\r\n" * len(keys) + (
            b"*%d\r\n" % len(keys)
        ) + b"+OK\r\n" * len(keys)
    return sets, b"+OK\r\n" * len(keys)


def worker(args, keys, results, i):
    try:
        run(args, keys)
        results[i] = True
    except BaseException as e:  # a thread's SystemExit would otherwise vanish silently
        print(f"worker {i}: {e}", file=sys.stderr)


def run(args, keys):
    s = socket.create_connection((args.host, args.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if args.resp3:
        s.sendall(enc("HELLO", "3"))
        s.recv(4096)
    req, rep = unit(args.mode, keys, "v" * args.size)
    batch, expect = req * args.per_batch, len(rep) * args.per_batch
    first = rep
    for _ in range(args.batches):
        s.sendall(batch)
        got = 0
        head = b""
        while got < expect:
            chunk = s.recv(min(1 << 20, expect - got))
            if not chunk:
                raise SystemExit("connection closed")
            if len(head) < len(first):
                head += chunk[: len(first) - len(head)]
            got += len(chunk)
        if head != first:
            raise SystemExit(f"unexpected reply: {head!r}")
    s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--mode", choices=["multi", "pipeline"], required=True)
    ap.add_argument("--keys", default="{t}:a,{t}:b,{t}:c")
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--per-batch", type=int, default=50)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--resp3", action="store_true")
    args = ap.parse_args()
    groups = [g.split(",") for g in args.keys.split(";")]
    results = [False] * args.conns
    cpu0, t0 = cpu_seconds(args.pid), time.monotonic()
    threads = [
        threading.Thread(target=worker, args=(args, groups[i % len(groups)], results, i))
        for i in range(args.conns)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, cpu = time.monotonic() - t0, cpu_seconds(args.pid) - cpu0
    if not all(results):
        raise SystemExit("a worker failed")
    units = args.conns * args.batches * args.per_batch
    commands = units * len(groups[0])
    print(
        f"units/s={units / elapsed:.0f} commands/s={commands / elapsed:.0f} "
        f"cpu_s_per_1M_commands={cpu / commands * 1e6:.2f}"
    )


if __name__ == "__main__":
    main()
