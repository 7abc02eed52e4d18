#!/usr/bin/env bash
# Start a process worker for the geoseg-local pool (created if missing), in the foreground.
# It runs flows in subprocesses, from the checkout the deployments were registered from.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/prefect-env.sh"
wait_for_server() {
  for _ in $(seq 1 120); do
    if python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" \
        "${PREFECT_API_URL}" 2>/dev/null; then
      return 0
    fi
    sleep 1
  done
  echo "no Prefect server answers at ${PREFECT_API_URL} (start it with: make server)" >&2
  return 1
}
wait_for_server
prefect work-pool inspect "${GEOSEG_POOL}" >/dev/null 2>&1 \
  || prefect work-pool create "${GEOSEG_POOL}" --type process
exec prefect worker start --pool "${GEOSEG_POOL}" --type process "$@"
