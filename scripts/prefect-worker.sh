#!/usr/bin/env bash
# Start a process worker for the geoseg-local pool (created if missing), in the foreground.
# It runs flows in subprocesses, from the checkout the deployments were registered from.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/prefect-env.sh"
wait_for_server
ensure_pool
# The worker is named POOL@HOST:PID, so that the runs it leaves behind when it stops (Ctrl-C,
# SIGTERM: their processes end with it, but the server still shows them Running and `--watch`
# waits for ever) are found and marked Crashed with a line saying what to do (flows/orphans.py):
# after it stops, and before it starts for a worker of this host that was killed outright.
prefix="${GEOSEG_POOL}@$(hostname):"
(cd "${GEOSEG_HOME}" && python -m flows.orphans --pool "${GEOSEG_POOL}" --worker-prefix "${prefix}") || true
# Not exec: the signals reach the worker itself (the terminal's process group, or a direct
# kill); this shell outlives it to mark its runs.
trap : INT TERM
status=0
prefect worker start --pool "${GEOSEG_POOL}" --type process --name "${prefix}$$" "$@" || status=$?
(cd "${GEOSEG_HOME}" && python -m flows.orphans --pool "${GEOSEG_POOL}" --worker-prefix "${prefix}" --grace 15) || true
exit "${status}"
