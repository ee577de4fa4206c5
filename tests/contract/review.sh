#!/usr/bin/env bash
# Contract test of the review API: `vigil review serve` (the demo pipeline,
# without following Kafka) on a schema of its own in the test PostgreSQL,
# holding the review decisions of a short `vigil demo`, checked against
# docs/review-openapi.yaml by schemathesis: no server errors, documented status
# codes, content types, headers and bodies, and that the session is not ignored.
#
# Logging out and disabling accounts are left out of the generated requests
# (they would end the session the run works in); crates/vigil-review-web's
# tests cover them.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"

source tests/contract/venv.sh
cargo build --locked --quiet --bin vigil
vigil=./target/debug/vigil

schema="review_contract_$$"
psql_test() { psql -q -h 127.0.0.1 -U postgres -d test -v ON_ERROR_STOP=1 -c "$1"; }
psql_test "CREATE SCHEMA $schema"
export VIGIL_REVIEW_DATABASE="host=127.0.0.1 user=postgres dbname=test options='-c search_path=$schema'"
work=$(mktemp -d)
server=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null || true
    psql_test "DROP SCHEMA $schema CASCADE" || true
    rm -rf "$work"
}
trap cleanup EXIT

"$vigil" demo --pipeline pipelines/demo.toml --events 3000 --out "$work/decisions.jsonl" > /dev/null
"$vigil" review ingest --pipeline pipelines/demo.toml --decisions "$work/decisions.jsonl"
export VIGIL_CONTRACT_PASSWORD; VIGIL_CONTRACT_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
"$vigil" review user add --name contract --role admin --password-env VIGIL_CONTRACT_PASSWORD > /dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=target/contract-review.log
"$vigil" review serve --pipeline pipelines/demo.toml --no-follow --listen "127.0.0.1:$port" > "$log" 2>&1 &
server=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break
    kill -0 $server 2>/dev/null || { cat "$log"; echo "vigil review serve did not start" >&2; exit 1; }
    sleep 0.1
done

# Log in as the browser would: the cookie and the CSRF token.
curl -sf -D "$work/headers" -H 'Content-Type: application/json' \
    --data "{\"name\": \"contract\", \"password\": \"$VIGIL_CONTRACT_PASSWORD\"}" \
    "http://127.0.0.1:$port/api/v1/review/session" > "$work/session.json"
csrf=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["csrf_token"])' "$work/session.json")
token=$(sed -n 's/^[Ss]et-[Cc]ookie: vigil_review=\([0-9a-f]*\);.*/\1/p' "$work/headers")
[ -n "$token" ] || { echo "no session cookie came back" >&2; exit 1; }

spec=target/review-openapi-run.yaml
"$VENV/bin/python" - "$spec" <<'PY'
import sys, yaml
spec = yaml.safe_load(open("docs/review-openapi.yaml"))
del spec["paths"]["/api/v1/review/session"]["delete"]
del spec["paths"]["/api/v1/review/users/{name}"]
yaml.safe_dump(spec, open(sys.argv[1], "w"), sort_keys=False)
PY

# The session as the spec's security schemes name it: schemathesis puts the
# cookie and the header where the schemes say, and leaves them out to check
# that the server refuses requests without them.
export VIGIL_CONTRACT_TOKEN="$token" VIGIL_CONTRACT_CSRF="$csrf"
config="$work/schemathesis.toml"
cat > "$config" <<'TOML'
[auth.openapi.session]
api_key = "${VIGIL_CONTRACT_TOKEN}"

[auth.openapi.csrf]
api_key = "${VIGIL_CONTRACT_CSRF}"
TOML

status=0
"$VENV/bin/schemathesis" --config-file "$config" run "$spec" \
    --url "http://127.0.0.1:$port" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,ignored_auth \
    --max-examples "${VIGIL_CONTRACT_EXAMPLES:-40}" \
    --seed 7 \
    --workers 1 \
    --request-timeout 10 || status=$?
if [ "$status" -ne 0 ]; then
    echo "--- vigil review serve log (last 40 lines)" >&2
    tail -40 "$log" >&2
fi
exit $status
