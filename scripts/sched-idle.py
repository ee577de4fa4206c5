#!/usr/bin/env python3
"""What the other cores ran while a core sat idle, from a scheduler trace.

Record during a benchmark, then read the trace:

    perf sched record -a -o sched.data -- sleep 3
    perf sched timehist -i sched.data | python3 scripts/sched-idle.py

Each `timehist` line is a task switched out of a core after running for its
last column (ms). The script samples every 50 microseconds which task each
core ran, and for every idle core-sample counts what the other cores ran
(tokio workers grouped by process id). Made for the 2-core test machine:
it answers "who does the pipeline wait on when cores are idle".
"""
import bisect
import collections
import re
import sys

LINE = re.compile(r'\s*([\d.]+)\s+\[(\d+)\]\s+(.+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$')


def name_of(task):
    if 'tokio-rt-worker' in task:
        pid = re.search(r'/(\d+)\]', task)
        return 'tokio workers of pid %s' % (pid.group(1) if pid else '?')
    return re.sub(r'\[.*', '', task)


def main():
    runs = collections.defaultdict(list)
    for line in sys.stdin:
        m = LINE.match(line)
        if not m:
            continue
        end, cpu, task, ran = float(m.group(1)), int(m.group(2)), m.group(3), float(m.group(6)) / 1000
        runs[cpu].append((end - ran, end, name_of(task)))
    if not runs:
        sys.exit('no perf sched timehist lines on stdin')
    for cpu in runs:
        runs[cpu].sort()
    starts = {cpu: [a for a, _, _ in runs[cpu]] for cpu in runs}
    begin = max(r[0][0] for r in runs.values())
    finish = min(max(b for _, b, _ in r) for r in runs.values())

    def running(cpu, t):
        i = bisect.bisect_right(starts[cpu], t) - 1
        if i >= 0 and runs[cpu][i][1] > t:
            return runs[cpu][i][2]
        return '<gap>'

    others = collections.Counter()
    samples = 0
    t = begin
    cpus = sorted(runs)
    while t < finish:
        now = {cpu: running(cpu, t) for cpu in cpus}
        for cpu in cpus:
            samples += 1
            if now[cpu] == '<idle>':
                for other in cpus:
                    if other != cpu:
                        others[now[other]] += 1 / (len(cpus) - 1)
        t += 0.00005
    idle = sum(others.values())
    print('idle: %.1f%% of core time' % (100 * idle / samples))
    for name, n in others.most_common(12):
        print('  while another core ran %-32s %.1f%% of core time' % (name, 100 * n / samples))


if __name__ == '__main__':
    main()
