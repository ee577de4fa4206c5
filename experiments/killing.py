"""The feed-and-kill loop the kill experiments share (`group-kills.py`,
`run-kills.py`)."""

import signal
import time


def kill_and_restart(procs, slot, start):
    procs[slot].send_signal(signal.SIGKILL)
    procs[slot].wait()
    procs[slot] = start(slot)


def feed_while_killing(producer, records, rate, kills, rng, procs, start):
    """Produces `records` (topic, key, value) at `rate` per second, killing a
    random member of `procs` with SIGKILL and restarting it (`start(slot)`)
    every 1-3 s, `kills` times in all: the kills not made while feeding are
    made after it, at the same pace. Returns when the last kill is made."""
    started = time.monotonic()
    next_kill = started + rng.uniform(1, 3)
    made = 0
    for i, (topic, key, value) in enumerate(records):
        producer.produce(topic, key=key, value=value)
        if i % 100 == 0:
            producer.poll(0)
            # Pace the feed.
            ahead = started + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        now = time.monotonic()
        if made < kills and now >= next_kill:
            kill_and_restart(procs, rng.randrange(len(procs)), start)
            made += 1
            next_kill = now + rng.uniform(1, 3)
    producer.flush(30)
    while made < kills:
        time.sleep(rng.uniform(1, 3))
        kill_and_restart(procs, rng.randrange(len(procs)), start)
        made += 1
    return made
