#!/usr/bin/env bash
# The whole test suite: brings up Kafka and Redis, then runs every test of
# every crate, including the integration tests in tests/ against those services,
# then the HTTP APIs' contract tests and a few seconds of each fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
# Chromium and playwright-core for the review pages' browser test (tests/review_browser.rs).
bash scripts/browser.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo test --workspace --locked "$@"
# The HTTP API against its OpenAPI contract (schemathesis, in a virtual environment it creates).
bash tests/contract/run.sh
# The review API against docs/review-openapi.yaml, on the test PostgreSQL.
bash tests/contract/review.sh
# Every fuzz target for a few seconds (fuzz/run.sh; the 10M-execution figures are in benches/RESULTS.md).
bash fuzz/run.sh
