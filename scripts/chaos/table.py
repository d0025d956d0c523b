#!/usr/bin/env python3
"""Prints the Markdown table of docs/chaos.md from the summary.json files that
scripts/chaos/check.py wrote under the directories given (one row per run)."""

import glob
import json
import os
import sys


def main():
    rows = []
    for d in sys.argv[1:]:
        for path in sorted(glob.glob(os.path.join(d, "*", "summary.json"))):
            with open(path) as f:
                rows.append(json.load(f))
    order = {"primary": 0, "all": 1, "quorum": 2, "two_phase": 3}
    rows.sort(key=lambda s: (order.get(s["mode"], 9), s["seed"]))
    print("| mode (replicas) | seed | operations (ok / unknown / failed) | faults (kill, stop, pause, sleep, proxy kill) "
          "| violations | slowest op (away from faults) | longest write stall away from faults "
          "| ok/s between / during faults |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in rows:
        st, fa = s["by_status"], s["faults"]
        faults = ", ".join(str(fa.get(k, 0)) for k in
                           ("redis_kill", "redis_stop", "client_pause", "debug_sleep", "keyway_kill"))
        v = ", ".join("%s %d" % kv for kv in sorted(s["violations"].items())) or "none"
        if s.get("needs_resync"):
            v += " (needs resync: %d keys)" % s["needs_resync"]
        slow = s["slowest"] or {}
        stall = s.get("write_stall_away_from_faults", {}).get("seconds", 0.0)
        print("| %s (%d) | %d | %d (%d / %d / %d) | %s | %s | %.2f s %s (%.2f s) | %.2f s | %s / %s |" % (
            s["mode"], s["replicas"], s["seed"], s["operations"], st.get("ok", 0), st.get("unknown", 0),
            st.get("fail", 0), faults, v, slow.get("seconds", 0), slow.get("op", ""),
            s["slowest_away_from_faults"], stall, s["ok_per_s_between_faults"], s["ok_per_s_during_faults"]))


if __name__ == "__main__":
    main()
