#!/usr/bin/env python3
"""Module import graph of src/: cycles between modules, and the longest functions.

    python3 scripts/dev/modgraph.py [SRC_DIR]

A module is a file (`server/plan.rs` is `server::plan`, `server/mod.rs` is `server`). An edge
A -> B means A names an item of B (`use crate::b::..`, `use super::..`, or an inline
`crate::b::..` path); declaring a child module (`mod x;`) is not an edge. Cycles are the
strongly connected components of more than one module. Function lengths count lines from a
`fn` line to its closing brace at the same indentation (tests included, marked).
"""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "src"
mods = {}
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(root, f)
        rel = os.path.relpath(path, src)[:-3].split(os.sep)
        if rel[-1] in ("mod", "lib", "main"):
            rel = rel[:-1]
        mods["::".join(rel)] = path


def resolve(parts):
    """The deepest known module that `parts` starts with."""
    for n in range(len(parts), 0, -1):
        name = "::".join(parts[:n])
        if name in mods:
            return name
    return None


edges = {m: set() for m in mods}
for m, path in mods.items():
    text = open(path).read()
    # Ignore test modules: they may import anything.
    text = re.split(r"#\[cfg\(test\)\]\s*(?:#\[path[^\]]*\]\s*)?mod tests", text)[0]
    me = m.split("::") if m else []
    is_dir_mod = path.endswith(("mod.rs", "lib.rs", "main.rs"))
    for use in re.findall(r"\buse\s+([^;]+);", text) + re.findall(r"\b((?:crate|super)(?:::\w+)+)", text):
        use = use.strip()
        heads = []
        m2 = re.match(r"((?:crate|super)(?:::\w+)*)(?:::\{(.*)\})?", use, re.S)
        if not m2:
            continue
        base = m2.group(1).split("::")
        if m2.group(2):
            for item in m2.group(2).split(","):
                item = item.strip().split("::")[0].split(" ")[0]
                if item and item != "self":
                    heads.append(base + [item])
                elif item == "self":
                    heads.append(base)
        else:
            heads.append(base)
        for h in heads:
            if h[0] == "crate":
                parts = h[1:]
            else:
                parent = me if is_dir_mod else me[:-1]
                ups = 0
                while ups < len(h) and h[ups] == "super":
                    ups += 1
                parent = parent[: len(parent) - (ups - 1)] if ups > 1 else parent
                if not is_dir_mod:
                    parent = me[: len(me) - ups]
                else:
                    parent = me[: len(me) - ups]
                parts = parent + h[ups:]
            target = resolve(parts) if parts else ""
            if target is not None and target != m:
                # A parent naming its own child module's items is wiring, not an import cycle
                # (mod.rs re-exports); count it all the same: `pub use` is an edge too.
                edges[m].add(target)

# Tarjan's SCC.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)


def strong(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            strong(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))


for v in edges:
    if v not in index:
        strong(v)
print(f"modules: {len(mods)}; import cycles (strongly connected groups of modules): {len(sccs)}")
for c in sccs:
    print("  cycle:", " <-> ".join(x or "crate" for x in c))

fns = []
for m, path in mods.items():
    lines = open(path).read().split("\n")
    in_tests = False
    for i, line in enumerate(lines):
        if re.match(r"\s*#\[cfg\(test\)\]", line):
            in_tests = True
        mt = re.match(r"(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?(?:const\s+)?fn\s+(\w+)", line)
        if not mt:
            continue
        indent = mt.group(1)
        # A declaration without a body (a trait's) ends with `;` before any `{`.
        opening = next((k for k in range(i, len(lines)) if "{" in lines[k] or lines[k].rstrip().endswith(";")), i)
        if "{" not in lines[opening]:
            continue
        for j in range(i, len(lines)):
            if lines[j] == indent + "}" or (j > i and lines[j].startswith(indent + "}") and lines[j].strip() == "}"):
                if len(lines[j]) - len(lines[j].lstrip()) == len(indent):
                    fns.append((j - i + 1, f"{path}:{i+1} {mt.group(2)}" + (" (test)" if in_tests else "")))
                    break
fns.sort(reverse=True)
print("longest functions (lines, outside tests):")
for n, name in [f for f in fns if "(test)" not in f[1]][:8]:
    print(f"  {n:4} {name}")
