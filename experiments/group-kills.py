"""Does a consumer group on the test broker survive repeated SIGKILLs?

Two plain confluent-kafka consumers share a group on a 4-partition topic fed at
a steady rate; one of them is killed with SIGKILL and restarted every 1-3 s
(seeded), `--kills` times; then the feed ends and the group has `--drain` seconds
to read everything. Each consumer appends `partition offset` for every record it
reads to its own file, so the records read at least once can be counted from
outside the consumers. The modes change only the consumers' settings:

  plain        librdkafka's defaults (eager range assignment, dynamic members)
  static       `group.instance.id` per slot: a restarted member rejoins as itself
  cooperative  `partition.assignment.strategy = cooperative-sticky`
  both         static and cooperative

  python experiments/group-kills.py --brokers 127.0.0.1:19092 --mode static

Prints one line of figures per run. Not part of the suite: the broker under test
is started by hand (see NOTES.md).
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import time
import uuid

from killing import feed_while_killing


def consumer(args):
    from confluent_kafka import Consumer

    conf = {
        "bootstrap.servers": args.brokers,
        "group.id": args.group,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": args.session_ms,
        "heartbeat.interval.ms": max(1000, args.session_ms // 6),
        "fetch.wait.max.ms": 10,
    }
    if args.mode in ("static", "both"):
        conf["group.instance.id"] = f"slot-{args.slot}"
    if args.mode in ("cooperative", "both"):
        conf["partition.assignment.strategy"] = "cooperative-sticky"
    c = Consumer(conf)
    c.subscribe([args.topic])
    with open(args.out, "a", buffering=1) as out:
        while True:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            out.write(f"{m.partition()} {m.offset()}\n")


def read(files):
    seen = set()
    for f in files:
        if os.path.exists(f):
            with open(f) as fh:
                for line in fh:
                    parts = line.split()
                    if len(parts) == 2:
                        seen.add((int(parts[0]), int(parts[1])))
    return seen


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--brokers", default="127.0.0.1:19092")
    p.add_argument("--mode", default="plain", choices=["plain", "static", "cooperative", "both"])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--drain", type=int, default=90)
    p.add_argument("--session-ms", type=int, default=10000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--work", default="/tmp/group-kills")
    # internal: run as one consumer
    p.add_argument("--consumer", action="store_true")
    p.add_argument("--group")
    p.add_argument("--topic")
    p.add_argument("--slot", type=int)
    p.add_argument("--out")
    args = p.parse_args()
    if args.consumer:
        return consumer(args)

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    rng = random.Random(args.seed)
    tag = uuid.uuid4().hex[:8]
    topic, group = f"kills-{tag}", f"kills-{tag}"
    os.makedirs(args.work, exist_ok=True)
    admin = AdminClient({"bootstrap.servers": args.brokers})
    for f in admin.create_topics([NewTopic(topic, 4, 1)]).values():
        f.result()
    files = [os.path.join(args.work, f"{tag}-{slot}.txt") for slot in range(2)]

    def start(slot):
        cmd = [sys.executable, __file__, "--consumer", "--brokers", args.brokers, "--mode", args.mode,
               "--group", group, "--topic", topic, "--slot", str(slot), "--out", files[slot],
               "--session-ms", str(args.session_ms)]
        return subprocess.Popen(cmd)

    procs = [start(0), start(1)]
    producer = Producer({"bootstrap.servers": args.brokers, "linger.ms": 5})
    total = args.rate * args.seconds
    records = ((topic, str(i % 997), str(i)) for i in range(total))
    kills = feed_while_killing(producer, records, args.rate, args.kills, rng, procs, start)
    last_kill = time.monotonic()
    read_at_last_kill = len(read(files))
    drained = None
    while time.monotonic() - last_kill < args.drain:
        if len(read(files)) >= total:
            drained = time.monotonic() - last_kill
            break
        time.sleep(1)
    seen = len(read(files))
    for pr in procs:
        pr.send_signal(signal.SIGKILL)
        pr.wait()
    print(
        f"mode {args.mode}: {kills} kills, {total} records, read {seen} "
        f"({read_at_last_kill} at the last kill), "
        + (f"all read {drained:.1f} s after the last kill" if drained is not None else
           f"NOT drained {args.drain} s after the last kill")
    )


if __name__ == "__main__":
    main()
