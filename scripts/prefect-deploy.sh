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
# `prefect deploy --name FLOW/NAME` matches FLOW against the entrypoint's function name
# (segment_flow), while `prefect deployment run` uses the flow's name (segment): map one to
# the other so that both commands take the same FLOW/NAME.
args=()
for n in "${names[@]}"; do
  case "$n" in
    */*) args+=(--name "${n%%/*}_flow/${n#*/}") ;;
    *) args+=(--name "$n") ;;
  esac
done
# After creating a deployment, `prefect deploy` asks the server for the pool's online
# workers; Prefect 3.8.8's server answers that request with a 422 under the pinned fastapi
# (limit/offset sent as null), so the command can fail although every deployment was
# created. Judge by the result instead: each requested deployment must exist.
if ! prefect --no-prompt deploy "${args[@]}"; then
  for n in "${names[@]}"; do
    case "$n" in
      */*) prefect deployment inspect "$n" >/dev/null \
             || { echo "deployment $n was not created" >&2; exit 1; } ;;
      *) echo "prefect deploy failed" >&2; exit 1 ;;
    esac
  done
  echo "deployments registered: ${names[*]} (ignoring the worker-listing error above)"
fi
