#!/usr/bin/env bash
# Start a process worker for the geoseg-local pool (created if missing), in the foreground.
# It runs flows in subprocesses, from the checkout the deployments were registered from.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/prefect-env.sh"
wait_for_server
ensure_pool
exec prefect worker start --pool "${GEOSEG_POOL}" --type process "$@"
