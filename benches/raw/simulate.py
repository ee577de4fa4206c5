"""Raw card transactions of the kind issue 20 names, written as a Vigil history.

  python simulate.py OUT.csv [--customers 5000] [--terminals 10000] [--days 91] [--seed 1]

Only what a payment log holds: card, terminal, amount, time; a fraud label and
when it was confirmed. Nothing here knows about Vigil's features.

- Customers and terminals sit at random points of a 100 x 100 square; a
  customer pays at terminals within 5 units of home, at random among them.
- Each customer has a usual amount (uniform 5 to 100, spread half of it) and a
  daily rate (uniform 0 to 4 payments); payments fall around midday (normal,
  sd 5.5 h, clipped to the day).
- Frauds, three kinds:
  1. any payment above 220 is fraud (a stolen card spent big);
  2. every day two terminals are compromised: every payment at them in the
     next 28 days is fraud;
  3. every day three cards are compromised: over the next 14 days a third of
     their payments are multiplied by 5 and are fraud.
- Each fraud is confirmed (`fraud_reported_at`) 7 days after the payment.

The columns are the event contract's (docs/events.md) plus the history's label
columns, so `vigil train --history` and `vigil evaluate --history` read it as is.
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

START = pd.Timestamp("2026-04-01T00:00:00Z")
DAY = 86_400
CONFIRMED_AFTER_DAYS = 7


def simulate(customers: int, terminals: int, days: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    home = rng.uniform(0, 100, size=(customers, 2))
    place = rng.uniform(0, 100, size=(terminals, 2))
    usual = rng.uniform(5, 100, size=customers)
    spread = usual / 2
    rate = rng.uniform(0, 4, size=customers)

    # Terminals within reach of each customer (a customer with none never pays).
    reach = []
    for c in range(customers):
        near = np.flatnonzero(((place - home[c]) ** 2).sum(axis=1) < 25.0)
        reach.append(near)

    per_day = rng.poisson(np.tile(rate, (days, 1)))  # days x customers
    card_rows, day_rows = [], []
    for day in range(days):
        counts = per_day[day]
        payers = np.repeat(np.arange(customers), counts)
        card_rows.append(payers)
        day_rows.append(np.full(len(payers), day))
    card = np.concatenate(card_rows)
    day = np.concatenate(day_rows)
    keep = np.array([len(reach[c]) > 0 for c in range(customers)])[card]
    card, day = card[keep], day[keep]
    n = len(card)

    second = np.clip(rng.normal(DAY / 2, 20_000, size=n), 0, DAY - 1).astype(np.int64)
    amount = rng.normal(usual[card], spread[card])
    low = amount < 0
    amount[low] = rng.uniform(0, 2 * usual[card[low]])
    amount = np.round(amount, 2)
    pick = rng.random(n)
    terminal = np.array([reach[c][int(p * len(reach[c]))] for c, p in zip(card, pick)])
    time = day.astype(np.int64) * DAY + second

    order = np.argsort(time, kind="stable")
    card, terminal, amount, time = card[order], terminal[order], amount[order], time[order]
    fraud = np.zeros(n, dtype=np.int8)
    scenario = np.zeros(n, dtype=np.int8)

    # 1. large amounts.
    big = amount > 220
    fraud[big], scenario[big] = 1, 1

    # 2. compromised terminals: 28 days from the day after they are drawn.
    for d in range(days):
        for t in rng.choice(terminals, size=2, replace=False):
            hit = (terminal == t) & (time >= (d + 1) * DAY) & (time < (d + 29) * DAY)
            fraud[hit], scenario[hit] = 1, np.where(scenario[hit] == 0, 2, scenario[hit])

    # 3. compromised cards: a third of the next 14 days' payments, five times bigger.
    for d in range(days):
        for c in rng.choice(customers, size=3, replace=False):
            window = np.flatnonzero((card == c) & (time >= (d + 1) * DAY) & (time < (d + 15) * DAY))
            if len(window) == 0:
                continue
            chosen = rng.choice(window, size=len(window) // 3, replace=False)
            amount[chosen] = np.round(amount[chosen] * 5, 2)
            fraud[chosen] = 1
            scenario[chosen] = np.where(scenario[chosen] == 0, 3, scenario[chosen])

    stamp = START + pd.to_timedelta(time, unit="s")
    reported = stamp + pd.Timedelta(days=CONFIRMED_AFTER_DAYS)
    iso = "%Y-%m-%dT%H:%M:%SZ"
    table = pd.DataFrame(
        {
            "transaction_id": [f"tx{i:08d}" for i in range(n)],
            "timestamp": stamp.strftime(iso),
            "amount": [f"{a:.2f}" for a in amount],
            "currency": "EUR",
            "card_id": [f"c{c:05d}" for c in card],
            "terminal_id": [f"t{t:05d}" for t in terminal],
            "is_fraud": fraud,
            "fraud_reported_at": np.where(fraud == 1, reported.strftime(iso), ""),
            "scenario": scenario,
        }
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--terminals", type=int, default=10000)
    parser.add_argument("--days", type=int, default=91)
    parser.add_argument("--seed", type=int, default=1)
    a = parser.parse_args()
    table = simulate(a.customers, a.terminals, a.days, a.seed)
    # `scenario` is for the report only: a history's unknown column would
    # become an event attribute, so it goes to a file of its own.
    table[["transaction_id", "scenario"]].to_csv(a.out.with_suffix(".scenarios.csv"), index=False)
    table.drop(columns=["scenario"]).to_csv(a.out, index=False)
    frauds = int(table["is_fraud"].sum())
    print(
        f"simulate: {len(table)} payments over {a.days} days, {frauds} frauds ({frauds / len(table):.2%}) "
        f"by kind {table.loc[table.is_fraud == 1, 'scenario'].value_counts().sort_index().to_dict()}",
    )


if __name__ == "__main__":
    main()
