#!/usr/bin/env python3
"""How long woken tasks waited for a core, by process, from a scheduler trace.

Record during a benchmark's phase, then read the trace:

    perf sched record -a -o sched.data -- sleep 3
    perf sched timehist -i sched.data | python3 scripts/sched-delay.py

Each `timehist` line is a task switched out after running; its fifth
column is the scheduling delay of that run (ms from being woken to getting
a core). The script prints, per process (tokio workers grouped by process
id, other threads by name), how many runs there were and the delay's
quantiles, and how many runs waited over 1 and 2 ms. A request that needs
several wake-ups in a row (load generator, server, Redis, server, load
generator) waits the sum of theirs: a tail there is the machine's cores,
not the code that runs once woken.
"""
import collections
import re
import sys

LINE = re.compile(r'\s*([\d.]+)\s+\[(\d+)\]\s+(.+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$')


def name_of(task):
    pid = re.search(r'\[\d+/(\d+)\]', task)
    base = re.sub(r'\[.*', '', task)
    if 'tokio' in base or 'rt-worker' in base:
        return 'tokio workers of pid %s' % (pid.group(1) if pid else '?')
    return base


def quantile(values, q):
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    delays = collections.defaultdict(list)
    for line in sys.stdin:
        m = LINE.match(line)
        if not m or '<idle>' in m.group(3):
            continue
        delays[name_of(m.group(3))].append(float(m.group(5)))
    print('%-36s %8s %8s %8s %8s %8s %7s %7s' % ('process', 'runs', 'p50 ms', 'p99', 'p99.9', 'max', '>1 ms', '>2 ms'))
    for name, d in sorted(delays.items(), key=lambda kv: -len(kv[1])):
        if len(d) < 50:
            continue
        d.sort()
        print('%-36s %8d %8.3f %8.3f %8.3f %8.3f %7d %7d' % (
            name[:36], len(d), quantile(d, 0.5), quantile(d, 0.99), quantile(d, 0.999), d[-1],
            sum(1 for x in d if x > 1), sum(1 for x in d if x > 2)))


if __name__ == '__main__':
    main()
