#!/usr/bin/env bash
# The ns-train plugin tests (tests/test_nerfstudio_plugin.py) in .venv-ns, created first
# when missing (scripts/setup_nerfstudio_env.sh). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${NS_VENV:-.venv-ns}"
if [ ! -x "$venv/bin/ns-train" ]; then
    scripts/setup_nerfstudio_env.sh "$venv"
else
    # the entry points live in the editable install's metadata: refresh them
    "$venv/bin/pip" install --quiet --no-deps -e .
fi
start=$SECONDS
"$venv/bin/python" -m pytest -rs tests/test_nerfstudio_plugin.py "$@"
echo "nerfstudio plugin tests: $((SECONDS - start)) s"
