#!/usr/bin/env bash
# Start a local Prefect server (UI and API at http://$PREFECT_HOST:$PREFECT_PORT) in the foreground.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/prefect-env.sh"
echo "Prefect server: ${PREFECT_API_URL%/api} (API ${PREFECT_API_URL}); PREFECT_HOME=${PREFECT_HOME:-~/.prefect}"
exec prefect server start --host "${PREFECT_HOST}" --port "${PREFECT_PORT}"
