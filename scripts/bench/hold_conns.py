#!/usr/bin/env python3
"""Opens N idle client connections to a proxy and reports its RSS at each step (JSON on stdout).

    hold_conns.py --pid PID --port PORT --conns N [--settle SECONDS]

Steps: RSS with no clients; with N connections open and silent (accepted, nothing sent); after
each connection sent one PING and read +PONG (the connections are idle again, as a client
pool's are); after all N closed. "Accepted" is checked by counting the proxy's open fds.
"""
import argparse
import json
import os
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def nfds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_fds(pid, target, timeout, above=True):
    end = time.time() + timeout
    while time.time() < end:
        n = nfds(pid)
        if (n >= target) if above else (n <= target):
            return n
        time.sleep(0.1)
    return nfds(pid)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--settle", type=float, default=1.5)
    a = ap.parse_args()

    out = {"conns": a.conns}
    time.sleep(a.settle)
    base_fds = nfds(a.pid)
    out["rss_idle_kib"] = rss_kib(a.pid)

    socks = []
    t0 = time.time()
    for i in range(a.conns):
        s = socket.create_connection((a.host, a.port), timeout=10)
        socks.append(s)
    out["connect_secs"] = round(time.time() - t0, 2)
    got = wait_fds(a.pid, base_fds + a.conns, 30)
    out["accepted"] = got - base_fds
    time.sleep(a.settle)
    out["rss_silent_kib"] = rss_kib(a.pid)

    # One PING each, then idle again. Send all, then read all (no per-connection round trip).
    for s in socks:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
    bad = 0
    for s in socks:
        buf = b""
        while not buf.endswith(b"\r\n"):
            chunk = s.recv(64)
            if not chunk:
                break
            buf += chunk
        if buf != b"+PONG\r\n":
            bad += 1
    out["ping_failures"] = bad
    time.sleep(a.settle)
    out["rss_pinged_kib"] = rss_kib(a.pid)

    for s in socks:
        s.close()
    socks.clear()
    wait_fds(a.pid, base_fds, 30, above=False)
    time.sleep(a.settle * 2)
    out["rss_closed_kib"] = rss_kib(a.pid)
    json.dump(out, sys.stdout)
    print()
    return 0 if out["accepted"] >= a.conns and bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
