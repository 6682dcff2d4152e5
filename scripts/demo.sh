#!/usr/bin/env bash
# Install fedasync into ./.venv and run the main job: a full federated task on the
# embedded stack (no AWS account needed). Usage: bash scripts/demo.sh [demo flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
install_extras "tf"
exec .venv/bin/fedasync demo "$@"
