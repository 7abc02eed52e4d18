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
sweep() { (cd "${GEOSEG_HOME}" && python -m flows.orphans --pool "${GEOSEG_POOL}" --worker-prefix "${prefix}" "$@") || true; }
sweep
# Not exec: this shell outlives the worker to mark its runs. A signal sent to this shell
# alone (`kill PID`, a supervisor) is passed on to the worker; with job control on, the
# worker keeps SIGINT at its default (a script's background job would ignore it).
set -m
prefect worker start --pool "${GEOSEG_POOL}" --type process --name "${prefix}$$" "$@" &
worker=$!
trap 'kill -INT "${worker}" 2>/dev/null || true' INT
trap 'kill -TERM "${worker}" 2>/dev/null || true' TERM
status=0
while :; do  # a trapped signal ends `wait` early: wait again until the worker has exited
    if wait "${worker}"; then status=0; else status=$?; fi
    kill -0 "${worker}" 2>/dev/null || break
done
sweep --grace 15
exit "${status}"
