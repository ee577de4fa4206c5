#!/usr/bin/env bash
# Runs every fuzz target with cargo-fuzz (libFuzzer), from its seeds and the
# corpus it has grown (fuzz/corpus/, not in git).
#   bash fuzz/run.sh             a few seconds each (the test suite's form)
#   bash fuzz/run.sh RUNS        RUNS executions each (10000000 for the figures
#                                in benches/RESULTS.md)
#   FUZZ_TARGETS="rules_parser" bash fuzz/run.sh ...   only these targets
#   FUZZ_SANITIZER=none bash fuzz/run.sh ...   without AddressSanitizer (the
#                                default is address); Vigil's crates hold no
#                                unsafe code, and a panic, a hang (-timeout) or
#                                an unbounded allocation (-rss_limit_mb) fails
#                                the run either way, at two to three times the
#                                speed
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 allows them on stable.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (cargo install, a few minutes)"
  cargo install --locked cargo-fuzz@0.13.2
fi
runs="${1:-}"
targets="${FUZZ_TARGETS:-rules_parser event_json label_json pipeline_config model_file}"
export RUSTC_BOOTSTRAP=1
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  case "$t" in
    model_file) max_len=65536 ;;
    rules_parser | pipeline_config) max_len=8192 ;;
    *) max_len=4096 ;;
  esac
  if [ -n "$runs" ]; then
    limit=(-runs="$runs")
  else
    limit=(-max_total_time=5)
  fi
  echo "fuzz: $t ${limit[*]}"
  log="fuzz/logs/$t.log"
  mkdir -p fuzz/logs
  # -timeout: an input that takes over 5 s is a hang; -rss_limit_mb: unbounded
  # allocation fails the run. libFuzzer exits non-zero on either, or a panic.
  status=0
  cargo fuzz run --fuzz-dir fuzz --sanitizer "${FUZZ_SANITIZER:-address}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    "${limit[@]}" -max_len="$max_len" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|Done )" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$log"
    echo "fuzz: $t failed (log $log; the input that failed is in fuzz/artifacts/$t)"
    exit 1
  fi
done
