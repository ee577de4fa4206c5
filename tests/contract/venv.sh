# Sourced by the contract scripts: schemathesis, at the version both use, in a
# virtual environment under target/ (made once).
SCHEMATHESIS_VERSION=4.32.5
VENV=target/contract-venv
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi
