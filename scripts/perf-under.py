#!/usr/bin/env python3
"""Shares of a profile's samples under a frame, and what sits right below it.

Usage:
  perf record -F 499 --call-graph dwarf,16384 -p PID -o perf.data -- sleep 6
  perf script -i perf.data -F comm,tid,ip,sym --no-inline > perf.script
  python3 scripts/perf-under.py perf.script 'OwnedStore as vigil_features::FeatureStore>::process' [depth]

Prints the share of all samples whose stack holds a frame containing the
text (counted once, at its outermost occurrence), then the
frames `depth` levels below it (default 1) by share. `depth` 0 prints the
share alone. A frame counts everything below it, so shares of nested frames
overlap.
"""
import collections
import re
import sys


def stacks(path):
    cur = []
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if not line.strip():
            if cur:
                yield cur
            cur = []
        elif line[0] in " \t":
            parts = line.strip().split(" ", 1)
            cur.append(re.sub(r"\+0x[0-9a-f]+$", "", parts[1] if len(parts) > 1 else "?"))
    if cur:
        yield cur


def main():
    path, target = sys.argv[1], sys.argv[2]
    depth = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    total, inside, below = 0, 0, collections.Counter()
    for st in stacks(path):
        total += 1
        at = [i for i, s in enumerate(st) if target in s]
        if not at:
            continue
        inside += 1
        i = at[-1]
        below[" <- ".join(reversed(st[max(0, i - depth):i])) if i > 0 else "(self)"] += 1
    print(f"{total} samples, under {target}: {inside} ({100 * inside / max(total, 1):.1f}%)")
    if depth > 0:
        for k, v in below.most_common(30):
            print(f"{100 * v / total:6.2f}%  {k[:220]}")


if __name__ == "__main__":
    main()
