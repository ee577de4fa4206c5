#!/usr/bin/env bash
# Vigil's models beside scikit-learn's, on the very same feature table and split.
#
#   bash benches/sklearn/compare.sh        # env: VIGIL_COMPARE_EVENTS (1000000), VIGIL_COMPARE_SEED (7)
#   VIGIL_COMPARE_PLAIN=1: the easy generated history of runs before 2026-12-02 (`vigil gen --plain`)
#
# 1. `vigil gen` writes a labelled history; `vigil features` turns it into the
#    feature table `vigil train` fits (amount and the demo pipeline's 22
#    features as of before each event, label features included, and the label).
# 2. Vigil trains a logistic regression (with its input compression and
#    missing-value indicators, and again with plain standardisation) and an
#    isolation forest on the table's first 70% of rows (`vigil train --features ... --format json`) and scores
#    the rest (`vigil evaluate --table --format json`).
# 3. compare.py fits scikit-learn's LogisticRegression and IsolationForest on the
#    same rows with the same preprocessing and hyperparameters, scores the same
#    later rows, and prints both sides: AUC-ROC, average precision, fit time,
#    batch scoring and single-event scoring.
# The Python side lives in a virtual environment this script creates
# (target/sklearn-venv); nothing is installed outside the repository.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
events=${VIGIL_COMPARE_EVENTS:-1000000}
seed=${VIGIL_COMPARE_SEED:-7}
share=0.7
work=${VIGIL_COMPARE_DIR:-$root/target/compare}
mkdir -p "$work"
. "$root/benches/python-env.sh"

cd "$root"
echo "compare: $events events, seed $seed, in $work" >&2
plain=()
[ "${VIGIL_COMPARE_PLAIN:-0}" = 1 ] && plain=(--plain)
"$vigil" gen "${plain[@]}" --events "$events" --seed "$seed" --inline-labels --format parquet --out "$work/history.parquet" >&2
"$vigil" features --pipeline pipelines/demo.toml --history "$work/history.parquet" --out "$work/table.csv"
inputs=$(head -1 "$work/table.csv" | tr ',' '\n' | grep -vxE 'transaction_id|timestamp|label' | paste -sd, -)
"$venv/bin/python" "$root/benches/sklearn/compare.py" split "$work" "$share"

# `logistic` compresses never-negative inputs and flags missing ones (Vigil's
# default); `logistic-plain` only standardises them (`--plain-inputs`).
for model in logistic logistic-plain isolation-forest; do
  case $model in
    logistic) flags=(--algorithm logistic) ;;
    logistic-plain) flags=(--algorithm logistic --plain-inputs) ;;
    isolation-forest) flags=(--algorithm isolation-forest) ;;
  esac
  algorithm=$model
  "$vigil" train --history "$work/table.csv" --features "$inputs" --label label --train-share "$share" \
    --seed "$seed" "${flags[@]}" --out "$work/vigil-$algorithm.model.json" --format json \
    >"$work/train-$algorithm.json"
  "$vigil" evaluate --table --model "$work/vigil-$algorithm.model.json" --history "$work/test.csv" --label label \
    --format json --report "$work/report-$algorithm" >"$work/evaluate-$algorithm.json"
  "$venv/bin/python" -c 'import json,sys; t,e,o=sys.argv[1:]; json.dump({"train": json.load(open(t)), "evaluate": json.load(open(e))}, open(o,"w"))' \
    "$work/train-$algorithm.json" "$work/evaluate-$algorithm.json" "$work/vigil-$algorithm.json"
done

"$venv/bin/python" "$root/benches/sklearn/compare.py" compare "$work" "$share" "$seed"
