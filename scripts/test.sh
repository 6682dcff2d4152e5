#!/usr/bin/env bash
# Install everything the test suite needs into ./.venv, then run the whole suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
install_extras "dev,cdk,tf,torch"
# The Lambda bundle (numpy + our code, no TensorFlow; pip, no Docker) for tests/cdk.
.venv/bin/python infra/bundle.py >/dev/null 2>&1 ||
    echo "warning: the Lambda bundle could not be built; its test will be skipped" >&2
# asl-validator (npm) checks the ASL when Node.js is on the machine.
if command -v npm >/dev/null 2>&1; then
    npm install --silent --no-save --no-audit --no-fund --prefix .venv/node asl-validator >/dev/null 2>&1 ||
        echo "warning: npm could not install asl-validator; the structural ASL check still runs" >&2
    export PATH="$PWD/.venv/node/node_modules/.bin:$PATH"
fi
exec .venv/bin/python -m pytest "$@"
