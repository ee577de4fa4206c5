"""Two `vigil run` instances in one group, one killed with SIGKILL and
restarted every 1-3 s (seeded): does the group keep deciding, and is every
event decided?

  python experiments/run-kills.py --vigil target/release/vigil --brokers 127.0.0.1:19092

The pipeline is `pipelines/local.toml` with this run's own topics, group and
Redis key prefix, on the given broker (`--assignment` sets the consumer's
`partition.assignment.strategy`). Events come from `vigil gen` and are sent at
`--rate` per second, keyed by card as `vigil produce` keys them. After the
kills, the instances have `--drain` seconds to decide everything. The
decisions topic is then read from outside: distinct transaction ids decided,
and decisions repeated without `"replayed": true`. One line of figures per
run. Not part of the suite (see NOTES.md).
"""

import argparse
import json
import os
import random
import signal
import subprocess
import time
import uuid

from killing import feed_while_killing


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--vigil", default="target/release/vigil")
    p.add_argument("--brokers", default="127.0.0.1:19092")
    p.add_argument("--assignment", default="cooperative-sticky")
    p.add_argument("--events", type=int, default=40000)
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--drain", type=int, default=90)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--work", default="/tmp/run-kills")
    args = p.parse_args()

    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    rng = random.Random(args.seed)
    tag = uuid.uuid4().hex[:8]
    os.makedirs(args.work, exist_ok=True)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "pipelines/local.toml")).read()
    topics = {k: f"{k}-{tag}" for k in ["in", "out", "dlq", "labels"]}
    # The shipped file, its Kafka section and key prefix changed by replacing lines.
    lines = []
    for line in text.splitlines():
        key = line.split("=")[0].strip()
        value = {
            "brokers": f'"{args.brokers}"',
            "group_id": f'"g-{tag}"',
            "input_topic": f'"{topics["in"]}"',
            "decisions_topic": f'"{topics["out"]}"',
            "dead_letter_topic": f'"{topics["dlq"]}"',
            "labels_topic": f'"{topics["labels"]}"',
            "key_prefix": f'"k-{tag}"',
        }.get(key)
        lines.append(f"{key} = {value}" if value and "=" in line else line)
    text = "\n".join(lines) + "\n"
    text = text.replace("[kafka.properties]\n", f'[kafka.properties]\n"partition.assignment.strategy" = "{args.assignment}"\n', 1)
    path = os.path.join(root, f"pipelines/.kills-{tag}.toml")
    with open(path, "w") as f:
        f.write(text)

    admin = AdminClient({"bootstrap.servers": args.brokers})
    for f in admin.create_topics([NewTopic(t, 4, 1) for t in topics.values()]).values():
        f.result()
    events_path = os.path.join(args.work, f"events-{tag}.jsonl")
    subprocess.run([args.vigil, "gen", "--events", str(args.events), "--seed", str(args.seed), "--out", events_path],
                   check=True, cwd=root, stderr=subprocess.DEVNULL)
    events = [json.loads(l) for l in open(events_path)]

    def start(slot):
        log = open(os.path.join(args.work, f"{tag}-{slot}.log"), "a")
        return subprocess.Popen([args.vigil, "run", "--pipeline", path], cwd=root, stdout=log, stderr=log)

    procs = [start(0), start(1)]
    producer = Producer({"bootstrap.servers": args.brokers, "linger.ms": 5})
    records = ((topics["in"], e.get("card_id") or "", json.dumps(e)) for e in events)
    kills = feed_while_killing(producer, records, args.rate, args.kills, rng, procs, start)
    last_kill = time.monotonic()

    reader = Consumer({"bootstrap.servers": args.brokers, "group.id": f"check-{tag}", "auto.offset.reset": "earliest",
                       "enable.auto.commit": False})
    reader.subscribe([topics["out"]])
    firsts = {}
    unmarked = 0
    decided_at_last_kill = None
    drained = None
    while time.monotonic() - last_kill < args.drain:
        m = reader.poll(0.5)
        if decided_at_last_kill is None:
            decided_at_last_kill = len(firsts)
        if m is None or m.error():
            if len(firsts) >= len(events):
                drained = time.monotonic() - last_kill
                break
            continue
        d = json.loads(m.value())
        tx = d["transaction_id"]
        if tx in firsts and not d.get("replayed"):
            unmarked += 1
        firsts.setdefault(tx, d)
        if len(firsts) >= len(events):
            drained = time.monotonic() - last_kill
            break
    for pr in procs:
        pr.send_signal(signal.SIGINT)
    for pr in procs:
        try:
            pr.wait(30)
        except subprocess.TimeoutExpired:
            pr.kill()
    os.remove(path)
    print(
        f"vigil run, {args.assignment}: {kills} kills, {len(events)} events, decided {len(firsts)}, "
        f"{unmarked} repeated without replayed, "
        + (f"all decided {drained:.1f} s after the last kill" if drained is not None else
           f"NOT all decided {args.drain} s after the last kill")
    )


if __name__ == "__main__":
    main()
