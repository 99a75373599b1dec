#!/usr/bin/env bash
# The light client distribution installs and passes its own tests in an environment WITHOUT torch:
# a separate venv (.venv-client) holding only clients/ (numpy + grpcio + protobuf) and pytest.
# The package is installed from a copy, non-editable, so the tests import what a user would get.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CLIENT_VENV:-$ROOT/.venv-client}"
PY="$VENV/bin/python"

test -x "$PY" || python3 -m venv "$VENV"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cp -r "$ROOT/clients" "$WORK/clients"
rm -rf "$WORK/clients/build" "$WORK/clients"/*.egg-info
"$PY" -m pip install -q --upgrade "$WORK/clients" pytest

if "$PY" -c "import torch" 2>/dev/null; then
  echo "error: torch is importable in $VENV; the client must be tested without it" >&2
  exit 1
fi
cd "$WORK/clients"
"$PY" -m pytest -q -p no:cacheprovider tests
