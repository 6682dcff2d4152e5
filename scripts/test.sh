#!/usr/bin/env bash
# Install everything the test suite needs into ./.venv, then run the whole suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
install_extras "dev,cdk,tf"
exec .venv/bin/python -m pytest "$@"
