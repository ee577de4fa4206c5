#!/usr/bin/env bash
# Raw card transactions in (card, terminal, amount, time; each fraud confirmed
# a week after the payment), one training week, a 7-day gap, one test week:
# Vigil trained on the features its pipeline declares (benches/raw/raw.toml),
# beside scikit-learn, LightGBM and XGBoost on the textbook features computed
# in Python from the same raw rows, scored on the same test rows, in one run.
#
#   bash benches/raw/compare.sh
#
# env: VIGIL_RAW_SEED (1, the simulation's and every model's seed),
# VIGIL_RAW_DAYS (91), VIGIL_RAW_TRAIN (2026-06-03), VIGIL_RAW_TEST
# (2026-06-17), VIGIL_RAW_WEEK (7, days in each of the training and test
# periods), VIGIL_RAW_DIR.
#
# The data come from simulate.py (its docstring says how); they tell whether
# the features and models do what they should on data of this shape, not what
# they do on a payment company's own history.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
seed=${VIGIL_RAW_SEED:-1}
days=${VIGIL_RAW_DAYS:-91}
train=${VIGIL_RAW_TRAIN:-2026-06-03}
test=${VIGIL_RAW_TEST:-2026-06-17}
week=${VIGIL_RAW_WEEK:-7}
work=${VIGIL_RAW_DIR:-$root/target/compare-raw-$seed}
mkdir -p "$work"
. "$root/benches/python-env.sh"

cd "$root"
"$venv/bin/python" benches/raw/simulate.py "$work/raw.csv" --days "$days" --seed "$seed" >&2
# The periods as predicates over the history's time (every earlier event still
# counts in the features of later ones).
period() { echo "timestamp >= '$1T00:00:00Z' AND timestamp < '$(date -u -d "$1 + $week days" +%Y-%m-%d)T00:00:00Z'"; }
for algorithm in gbdt logistic; do
  "$vigil" train --pipeline benches/raw/raw.toml --history "$work/raw.csv" --where "$(period "$train")" \
    --train-share 1 --algorithm "$algorithm" --train-seed "$seed" \
    --out "$work/vigil-$algorithm.model.json" --format json >"$work/vigil-$algorithm-train.json"
  "$vigil" evaluate --pipeline benches/raw/raw.toml --model "$work/vigil-$algorithm.model.json" \
    --history "$work/raw.csv" --where "$(period "$test")" --format json \
    --scores "$work/vigil-$algorithm-scores.csv" >"$work/vigil-$algorithm-evaluate.json"
done
"$venv/bin/python" benches/raw/textbook.py "$work" "$train" "$test" "$week" "$seed"
