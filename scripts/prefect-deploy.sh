#!/usr/bin/env bash
# Register the local deployments of prefect.yaml (segment/local, pipeline/local, train/local)
# on the server at $PREFECT_API_URL. Pass other names to register those instead, e.g.
#   scripts/prefect-deploy.sh 'segment/gpu'
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/prefect-env.sh"
cd "${GEOSEG_HOME}"
prefect work-pool inspect "${GEOSEG_POOL}" >/dev/null 2>&1 \
  || prefect work-pool create "${GEOSEG_POOL}" --type process
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=("segment/local" "pipeline/local" "train/local")
fi
args=()
for n in "${names[@]}"; do args+=(--name "$n"); done
prefect --no-prompt deploy "${args[@]}"
