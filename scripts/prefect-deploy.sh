#!/usr/bin/env bash
# Register the deployments of prefect.yaml that the local process pool serves (segment/local,
# pipeline/local, train/local, retrain/local) on the server at $PREFECT_API_URL; the worker
# may already be running. Pass FLOW/NAME of other deployments to register those instead, e.g.
#   scripts/prefect-deploy.sh 'segment/gpu'
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/prefect-env.sh"
cd "${GEOSEG_HOME}"
wait_for_server
ensure_pool
# `prefect deploy --name` takes the entrypoint's function name (segment_flow/local), while
# `prefect deployment run` takes the flow's name (segment/local): flows/deployments.py maps
# one to the other, from prefect.yaml, so that both commands take the same FLOW/NAME.
args=()
while IFS= read -r line; do args+=("$line"); done \
  < <(python -m flows.deployments --pool "${GEOSEG_POOL}" "$@")
[ ${#args[@]} -gt 0 ] || exit 2
prefect --no-prompt deploy "${args[@]}"
remember_server
echo "deployments registered on ${PREFECT_API_URL}"
