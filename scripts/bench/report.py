#!/usr/bin/env python3
"""Turns the raw results of scripts/bench.sh into the generated section of docs/benchmarks.md.

    report.py --dir RESULTS_DIR --out docs/benchmarks.md --command "scripts/bench.sh"

Everything between BEGIN/END GENERATED markers in --out is replaced; the text around them is
kept (if the markers are missing the section is appended).
"""
import argparse
import csv
import json
import os
import statistics
import sys

BEGIN = "<!-- BEGIN GENERATED: scripts/bench.sh rewrites everything down to END GENERATED -->"
END = "<!-- END GENERATED -->"
TARGETS = ("direct", "keyway", "twemproxy")
MIB = 1024 * 1024


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_ratio(per_round):
    m = med(per_round)
    if len(per_round) <= 1:
        return f"{m:.2f}"
    return f"**{m:.2f}** ({' '.join(f'{x:.2f}' for x in per_round)})"


def mark(ok):
    return "met" if ok else "**not met**"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", required=True)
    a = ap.parse_args()

    facts = {}
    with open(os.path.join(a.dir, "facts.tsv")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            facts[k] = v
    clk = int(facts.get("clk_tck", "100"))

    rows = list(csv.DictReader(open(os.path.join(a.dir, "results.tsv")), delimiter="\t"))
    for r in rows:
        r["rep"] = int(r["rep"])
        r["n"] = int(r["n"])
        for k in ("rps", "p50", "p99", "secs"):
            r[k] = float(r[k])
        # CPU microseconds per request: the measured process, and the three pool servers.
        r["cpu_us"] = int(r["cpu_ticks"]) / clk * 1e6 / r["n"]
        r["pool_us"] = int(r["pool_ticks"]) / clk * 1e6 / r["n"]
        # The whole machine (every process, the load generator included), and how busy it was.
        if r.get("machine_ticks"):
            r["machine_us"] = int(r["machine_ticks"]) / clk * 1e6 / r["n"]
            r["busy"] = int(r["machine_ticks"]) / clk / max(r["secs"], 1e-9) / int(facts.get("nproc", "1"))

    def cell(kind, test, pipe, target):
        return sorted((r for r in rows if r["kind"] == kind and r["test"] == test
                       and r["pipe"] == str(pipe) and r["target"] == target), key=lambda r: r["rep"])

    def per_round(kind, test, pipe, num, den, key):
        a_, b_ = cell(kind, test, pipe, num), cell(kind, test, pipe, den)
        bd = {r["rep"]: r for r in b_}
        return [r[key] / bd[r["rep"]][key] for r in a_ if r["rep"] in bd and bd[r["rep"]][key] > 0]

    tests = [t for t in ("set", "get", "incr", "mset") if any(r["test"] == t for r in rows)]
    pipes = sorted({int(r["pipe"]) for r in rows if r["kind"] == "tput"})
    reps = max(r["rep"] for r in rows)
    label = {"set": "SET", "get": "GET", "incr": "INCR", "mset": "MSET (10 keys)"}

    out = [BEGIN, ""]
    if facts.get("quick") == "1":
        out += ["> **QUICK smoke run** (`BENCH_QUICK=1`): short cells, one round. Not representative;",
                "> run `scripts/bench.sh` for numbers to cite.", ""]
    out += ["## Results", "",
            f"Command: `{a.command}` ({facts.get('params', '')}).", "",
            "| machine | |", "| --- | --- |"]
    for k, name in (("date", "date"), ("nproc", "nproc"), ("cpu", "CPU"), ("kernel", "kernel"),
                    ("redis", "redis-server / redis-benchmark"), ("twemproxy", "twemproxy"),
                    ("keyway", "keyway"), ("load_start", "load average at start (1/5/15 min)"),
                    ("load_end", "load average at end")):
        out.append(f"| {name} | {facts.get(k, '?')} |")
    out.append("")

    # ---- throughput
    out += ["### Throughput, `-c 50 -r 100000 -d 64`",
            "",
            f"Requests/s are medians of {reps} round(s); ratios are computed per round (same round, "
            "adjacent runs) and the median is in bold, each round's value in parentheses. An MSET of "
            "10 keys counts as one request.",
            "",
            "| test | -P | direct rps | keyway rps | twemproxy rps | keyway / direct | keyway / twemproxy | secs per cell (D/K/T) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    kd = {}
    kt = {}
    cpu_kt = {}
    for t in tests:
        for p in pipes:
            rps = {x: med([r["rps"] for r in cell("tput", t, p, x)]) for x in TARGETS}
            secs = "/".join(f"{med([r['secs'] for r in cell('tput', t, p, x)]):.1f}" for x in TARGETS)
            kd[(t, p)] = per_round("tput", t, p, "keyway", "direct", "rps")
            kt[(t, p)] = per_round("tput", t, p, "keyway", "twemproxy", "rps")
            out.append(f"| {label[t]} | {p} | {rps['direct']:,.0f} | {rps['keyway']:,.0f} | "
                       f"{rps['twemproxy']:,.0f} | {fmt_ratio(kd[(t, p)])} | {fmt_ratio(kt[(t, p)])} | {secs} |")
    out.append("")

    out += ["### Latency and CPU per request under load (same cells)",
            "",
            "p50/p99 in ms as redis-benchmark prints them (medians of rounds). CPU is utime+stime of "
            "the process from /proc/PID/stat over the cell divided by the requests of the cell, in "
            f"microseconds (clock tick {1000 // clk} ms); for direct it is the standalone redis-server's "
            "own CPU, the reference. \"pool\" is the three pool redis-servers' CPU per request behind "
            "each proxy.",
            "",
            "| test | -P | p50 D / K / T | p99 D / K / T | CPU µs/req: direct redis | keyway | twemproxy | keyway / twemproxy CPU | pool redis µs/req behind K / T |",
            "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for t in tests:
        for p in pipes:
            p50 = " / ".join(f"{med([r['p50'] for r in cell('tput', t, p, x)]):.3f}" for x in TARGETS)
            p99 = " / ".join(f"{med([r['p99'] for r in cell('tput', t, p, x)]):.3f}" for x in TARGETS)
            cpu = {x: med([r["cpu_us"] for r in cell("tput", t, p, x)]) for x in TARGETS}
            pool = {x: med([r["pool_us"] for r in cell("tput", t, p, x)]) for x in TARGETS}
            cpu_kt[(t, p)] = per_round("tput", t, p, "keyway", "twemproxy", "cpu_us")
            out.append(f"| {label[t]} | {p} | {p50} | {p99} | {cpu['direct']:.2f} | {cpu['keyway']:.2f} | "
                       f"{cpu['twemproxy']:.2f} | {fmt_ratio(cpu_kt[(t, p)])} | "
                       f"{pool['keyway']:.2f} / {pool['twemproxy']:.2f} |")
    out.append("")

    # ---- what bounds the throughput ratios
    if all("machine_us" in r for r in rows if r["kind"] == "tput"):
        out += ["### What bounds the throughput ratios",
                "",
                "Machine CPU is the busy time of the whole machine (every process: redis-benchmark, "
                "the servers, the proxy, the kernel's work for all of them; /proc/stat) per request. "
                "When the machine is saturated (busy near 100%), throughput is inversely proportional "
                "to it, so a proxy's ratios are set by the machine CPU per request of each setup. "
                "\"Rest\" is what the keyway setup spends outside Keyway's own process. From it follow "
                "the ratio a proxy costing nothing would reach against twemproxy (twemproxy's machine "
                "CPU / rest), and the CPU per request Keyway may use to meet each throughput target "
                "(target machine CPU / ratio - rest); a budget under 0 cannot be met by any proxy. "
                "Medians of rounds.",
                "",
                "| test | -P | machine busy D / K / T | machine CPU µs/req D / K / T | rest behind keyway | zero-cost proxy / twemproxy | keyway CPU budget: vs twemproxy target | vs direct target | keyway CPU |",
                "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for t in tests:
            for p in pipes:
                mach = {x: med([r["machine_us"] for r in cell("tput", t, p, x)]) for x in TARGETS}
                busy = " / ".join(f"{med([r['busy'] for r in cell('tput', t, p, x)]) * 100:.0f}%" for x in TARGETS)
                kcpu = med([r["cpu_us"] for r in cell("tput", t, p, "keyway")])
                rest = mach["keyway"] - kcpu
                zero = mach["twemproxy"] / rest if rest > 0 else float("inf")
                want_t, want_d = (1.25, 0.80) if p == 1 else (1.8, 0.70)
                bud_t = mach["twemproxy"] / want_t - rest
                bud_d = mach["direct"] / want_d - rest
                out.append(f"| {label[t]} | {p} | {busy} | {mach['direct']:.2f} / {mach['keyway']:.2f} / "
                           f"{mach['twemproxy']:.2f} | {rest:.2f} | {zero:.2f}x | {bud_t:.2f} (for {want_t}x) | "
                           f"{bud_d:.2f} (for {want_d}x) | {kcpu:.2f} |")
        out.append("")

    # ---- low-load latency
    lat_tests = [t for t in ("get", "set") if any(r["kind"] == "lat" and r["test"] == t for r in rows)]
    out += ["### Latency at low load, `-c 1 -P 1`",
            "",
            "One client, one request at a time. Added p50 = proxy p50 - direct p50 of the same round "
            "(median over rounds). redis-benchmark's percentiles move in steps of 8 µs at this range, "
            "as large as the differences being compared: the target is judged on the microsecond "
            "probe below when the run has it.",
            "",
            "| test | p50 direct | p50 keyway | p50 twemproxy | added p50 keyway | added p50 twemproxy | p99 D / K / T | rps D / K / T |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    added = {}
    for t in lat_tests:
        p50 = {x: med([r["p50"] for r in cell("lat", t, 1, x)]) for x in TARGETS}
        p99 = " / ".join(f"{med([r['p99'] for r in cell('lat', t, 1, x)]):.3f}" for x in TARGETS)
        rps = " / ".join(f"{med([r['rps'] for r in cell('lat', t, 1, x)]):,.0f}" for x in TARGETS)
        d = {r["rep"]: r["p50"] for r in cell("lat", t, 1, "direct")}
        ak = [r["p50"] - d[r["rep"]] for r in cell("lat", t, 1, "keyway") if r["rep"] in d]
        at = [r["p50"] - d[r["rep"]] for r in cell("lat", t, 1, "twemproxy") if r["rep"] in d]
        added[t] = (med(ak) * 1000, med(at) * 1000)
        out.append(f"| {label[t]} | {p50['direct'] * 1000:.0f} µs | {p50['keyway'] * 1000:.0f} µs | "
                   f"{p50['twemproxy'] * 1000:.0f} µs | {added[t][0]:+.0f} µs | {added[t][1]:+.0f} µs | "
                   f"{p99} ms | {rps} |")
    out.append("")

    # The microsecond probe (scripts/bench/latency.py), when present, is what the target is
    # judged on: redis-benchmark's percentiles move in 8 µs steps at this range. It runs in up
    # to three CPU placements (see scripts/bench.sh); the target is judged on "core", the one
    # that does not move with where the scheduler puts the processes, else on "free".
    placement_text = {
        "free": "free (the scheduler's choice)",
        "core": "core (all on one core)",
        "split": "split (client on one core, servers and proxies on the other)",
    }
    probe = {}
    for pl in placement_text:
        for t in ("get", "set"):
            path = os.path.join(a.dir, f"latency-{pl}-{t}.json")
            if os.path.exists(path):
                probe[(pl, t)] = json.load(open(path))
    judged = "core" if any(pl == "core" for pl, _ in probe) else "free"
    if probe:
        first = next(iter(probe.values()))
        out += ["### Latency at low load, microsecond probe",
                "",
                f"`scripts/bench/latency.py`: one client, one request at a time, {first['rounds']} rounds of "
                f"{first['per_round']} requests to each target, the order rotating every round; each round trip "
                "timed with perf_counter_ns. The client is Python, so absolute figures include its own cost, "
                "the same for every target; the added p50 (proxy p50 - direct p50 of the same round, "
                "median over rounds) is what compares the proxies. \"K - T per round\" is keyway's added "
                "p50 minus twemproxy's in the same round: median, min / max, and in how many rounds "
                "keyway's was the lower.",
                "",
                "Placements (taskset on every thread of every process): *free*, the scheduler places the "
                "client, the servers and the proxies; *core*, all on one core, where every wake-up is a "
                "context switch on that core and a proxy's added latency is its own work; *split*, the "
                "client on one core and everything else on the other, so that every hop wakes the other "
                "core (the floor of one loopback hop on this machine). On a shared VM the wake-up of an "
                "idle core costs tens of µs, and where the scheduler puts four processes on two cores "
                "changes from round to round: in *free* the rounds spread over tens of µs, in *core* over "
                f"a few. The target is judged on *{judged}*, on the median of \"K - T per round\" (the "
                "paired difference: the drift of direct's figure between rounds does not enter it).",
                "",
                "| placement | test | p50 D / K / T | p99 D / K / T | added p50 keyway | added p50 twemproxy | K - T per round: median (min / max), keyway lower |",
                "| --- | --- | --- | --- | ---: | ---: | --- |"]
        for (pl, t), d in probe.items():
            g = d["targets"]
            p50 = " / ".join(f"{g[x]['p50_us']:.0f}" for x in TARGETS)
            p99 = " / ".join(f"{g[x]['p99_us']:.0f}" for x in TARGETS)
            diff = [k - w for k, w in zip(g["keyway"]["added_p50_per_round_us"],
                                           g["twemproxy"]["added_p50_per_round_us"])]
            lower = sum(1 for x in diff if x < 0)
            paired = f"{med(diff):+.1f} µs ({min(diff):+.0f} / {max(diff):+.0f}), {lower} of {len(diff)}"
            if pl == judged:
                added[t] = (g["keyway"]["added_p50_us"], g["twemproxy"]["added_p50_us"], med(diff), lower, len(diff))
            out.append(f"| {placement_text[pl]} | {label[t]} | {p50} µs | {p99} µs | "
                       f"{g['keyway']['added_p50_us']:+.1f} µs | {g['twemproxy']['added_p50_us']:+.1f} µs | {paired} |")
        out.append("")

    # ---- memory
    mem = {x: json.load(open(os.path.join(a.dir, f"mem-{x}.json"))) for x in ("keyway", "twemproxy")}
    heavy = {r["target"]: {k: int(v) for k, v in r.items() if k != "target"}
             for r in csv.DictReader(open(os.path.join(a.dir, "heavy.tsv")), delimiter="\t")}
    conns = mem["keyway"]["conns"]

    def per_conn(m, key):
        return (m[key] - m["rss_idle_kib"]) * 1024 / m["conns"]

    out += ["### Memory (RSS from /proc/PID/status VmRSS)",
            "",
            f"Idle = fresh process, no clients, before any load. Then {conns:,} client connections are "
            "opened and left silent (accepted, nothing sent); then each sends one PING, reads +PONG and "
            "is idle again (a client pool's connections look like this); then all close. The heavy run "
            f"comes after the throughput and latency rounds: {facts.get('params', '').split('HEAVY_SECS=')[-1]} s "
            "of `redis-benchmark -c 200 -P 64 -d 1024 -r 100000 -t set,get,mset -l`, then 3 s after its "
            "clients left.",
            "",
            "| | keyway | twemproxy |",
            "| --- | ---: | ---: |"]

    def kib(v):
        return f"{v / 1024:.1f} MiB"

    out.append(f"| idle RSS (fresh) | {kib(mem['keyway']['rss_idle_kib'])} | {kib(mem['twemproxy']['rss_idle_kib'])} |")
    out.append(f"| with {conns:,} silent connections | {kib(mem['keyway']['rss_silent_kib'])} | {kib(mem['twemproxy']['rss_silent_kib'])} |")
    out.append(f"| bytes per silent connection | {per_conn(mem['keyway'], 'rss_silent_kib'):,.0f} | {per_conn(mem['twemproxy'], 'rss_silent_kib'):,.0f} |")
    out.append(f"| with {conns:,} connections idle after one PING each | {kib(mem['keyway']['rss_pinged_kib'])} | {kib(mem['twemproxy']['rss_pinged_kib'])} |")
    out.append(f"| bytes per connection idle after one PING | {per_conn(mem['keyway'], 'rss_pinged_kib'):,.0f} | {per_conn(mem['twemproxy'], 'rss_pinged_kib'):,.0f} |")
    out.append(f"| after the {conns:,} connections closed | {kib(mem['keyway']['rss_closed_kib'])} | {kib(mem['twemproxy']['rss_closed_kib'])} |")
    for k, name in (("rss_before_kib", "before the heavy run (after the rounds)"),
                    ("rss_peak_kib", "peak during the heavy run (0.2 s samples)"),
                    ("rss_after_kib", "3 s after the heavy run")):
        out.append(f"| {name} | {kib(heavy['keyway'][k])} | {kib(heavy['twemproxy'][k])} |")
    back = {x: (heavy[x]["rss_after_kib"] - mem[x]["rss_idle_kib"]) * 1024 for x in ("keyway", "twemproxy")}
    out.append(f"| after heavy run - fresh idle | {back['keyway'] / MIB:+.1f} MiB | {back['twemproxy'] / MIB:+.1f} MiB |")
    out.append("")

    # ---- targets
    def cells_fail(d, lim, ps):
        return [f"{label[t]} -P{p} {med(d[(t, p)]):.2f}" for (t, p) in d if p in ps and med(d[(t, p)]) < lim]

    def minmed(d, ps):
        vals = [(med(v), t, p) for (t, p), v in d.items() if p in ps]
        m = min(vals)
        return f"min {m[0]:.2f} ({label[m[1]]} -P{m[2]})"

    out += ["### Targets", "",
            "Each throughput/CPU target applies to every cell, judged on the cell's median per-round ratio.",
            "",
            "| target | measured | status |", "| --- | --- | --- |"]
    p1, p16 = [1], [p for p in pipes if p != 1]
    for d, lim, ps, name in ((kt, 1.25, p1, "keyway ≥ 1.25x twemproxy throughput, every -P 1 cell"),
                             (kt, 1.8, p16, "keyway ≥ 1.8x twemproxy throughput, every -P 16 cell"),
                             (kd, 0.80, p1, "keyway ≥ 0.80x direct throughput, every -P 1 cell"),
                             (kd, 0.70, p16, "keyway ≥ 0.70x direct throughput, every -P 16 cell")):
        fails = cells_fail(d, lim, ps)
        detail = minmed(d, ps) + (f"; below: {', '.join(fails)}" if fails else "")
        out.append(f"| {name} | {detail} | {mark(not fails)} |")
    worst = max((med(v), t, p) for (t, p), v in cpu_kt.items())
    cfails = [f"{label[t]} -P{p} {med(v):.2f}" for (t, p), v in cpu_kt.items() if med(v) > 0.6]
    out.append(f"| keyway CPU/request ≤ 0.6x twemproxy's, every cell | max {worst[0]:.2f} ({label[worst[1]]} -P{worst[2]})"
               + (f"; above: {', '.join(cfails)}" if cfails else "") + f" | {mark(not cfails)} |")
    for t in lat_tests:
        if len(added[t]) == 5:
            # The probe: judged on the paired difference (same round, adjacent requests), which
            # the drift of the direct server's figure between rounds does not enter.
            ak, at, kt, lower, n = added[t]
            out.append(f"| added p50 at -c 1 ≤ twemproxy's ({label[t]}, probe, placement {judged}) | keyway {ak:+.1f} µs, "
                       f"twemproxy {at:+.1f} µs; K - T per round: median {kt:+.1f} µs, keyway lower in {lower} of {n} | {mark(kt <= 0)} |")
        else:
            ak, at = added[t]
            out.append(f"| added p50 at -c 1 ≤ twemproxy's ({label[t]}) | keyway {ak:+.1f} µs, twemproxy {at:+.1f} µs | {mark(ak <= at)} |")
    pc = per_conn(mem["keyway"], "rss_silent_kib")
    out.append(f"| ≤ 1 KiB RSS per idle connection ({conns:,} silent connections) | {pc:,.0f} B | {mark(pc <= 1024)} |")
    pc2 = per_conn(mem["keyway"], "rss_pinged_kib")
    out.append(f"| same, connections idle after one PING each | {pc2:,.0f} B | {mark(pc2 <= 1024)} |")
    out.append(f"| RSS back within 20 MiB of fresh idle after a heavy run | {back['keyway'] / MIB:+.1f} MiB | {mark(back['keyway'] <= 20 * MIB)} |")
    # Client modes (scripts/bench/client_modes.sh, run by bench.sh into the same directory).
    modes = os.path.join(a.dir, "client-modes.md")
    if os.path.exists(modes):
        out += ["", "### Client modes: RESP3 against RESP2, MULTI/EXEC, two-phase MULTI", "",
                "From `scripts/bench/client_modes.sh`, run by `scripts/bench.sh` on a pool of its own "
                "(three redis-servers, one Keyway).", ""]
        out += open(modes).read().rstrip("\n").split("\n")
    blocking = os.path.join(a.dir, "blocking.json")
    if os.path.exists(blocking):
        b = json.load(open(blocking))
        pp, seq = b.get("ping_pong_round_trips_per_sec", {}), b.get("sequential_rpush_lpop_per_sec", {})
        out += ["", "### Blocking commands", "",
                "From `scripts/bench/blocking.py`, run by `scripts/bench.sh` (docs/blocking.md).", "",
                "| measure | direct | keyway | keyway / direct |", "| --- | --- | --- | --- |",
                f"| BLPOP/RPUSH ping-pong, round trips/s per round | {pp.get('direct')} | {pp.get('keyway')} | {pp.get('keyway_over_direct')} (target ≥ 0.7) |",
                f"| RPUSH then LPOP in sequence, rounds/s | {seq.get('direct')} | {seq.get('keyway')} | {seq.get('keyway_over_direct')} |"]
        mem = b.get("memory", {})
        if mem:
            out += ["", "Memory (Keyway's RSS): " + ", ".join(f"{k} = {v}" for k, v in mem.items())
                    + " (target ≤ 2 KiB per blocked client)."]
    pubsub = os.path.join(a.dir, "pubsub.json")
    if os.path.exists(pubsub):
        ps = json.load(open(pubsub))
        rate, cpu = ps.get("delivered_messages_per_sec", {}), ps.get("cpu_us_per_delivered_message", {})
        out += ["", "### Pub/sub fan-out", "",
                f"From `{ps.get('command', 'scripts/bench/pubsub.py')}`, run by `scripts/bench.sh` (docs/pubsub.md).", "",
                "| measure | direct | keyway | keyway / direct |", "| --- | --- | --- | --- |",
                f"| messages delivered/s to the subscribers, per round | {rate.get('direct')} | {rate.get('keyway')} | {rate.get('keyway_over_direct')} (target ≥ 0.8) |",
                f"| CPU µs per delivered message (the serving process) | {cpu.get('direct_redis_server')} | {cpu.get('keyway')} | |"]
    tls = os.path.join(a.dir, "tls.md")
    if os.path.exists(tls):
        out += ["", "### TLS on the client side", "",
                "From `scripts/bench/tls.sh`, run by `scripts/bench.sh`: one Keyway, its plain `listen` "
                "and its `tls_listen` measured alternately (redis-benchmark `--tls`, whose own TLS work "
                "shares the machine).", ""]
        out += open(tls).read().rstrip("\n").split("\n")
    out += ["", END, ""]
    section = "\n".join(out)

    text = open(a.out).read() if os.path.exists(a.out) else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        head = text[:text.index(BEGIN)]
        tail = text[text.index(END) + len(END):].lstrip("\n")
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(a.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
