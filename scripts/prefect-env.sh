# Sourced by the other scripts: where the local Prefect server is and which pool to use.
# Override any of these in the environment.
: "${PREFECT_HOST:=127.0.0.1}"
: "${PREFECT_PORT:=4200}"
: "${PREFECT_API_URL:=http://${PREFECT_HOST}:${PREFECT_PORT}/api}"
: "${GEOSEG_POOL:=geoseg-local}"
# No usage analytics from the server, the CLI or the flows (Prefect's own switches): a
# pipeline on a survey should not phone home, nor log "Failed to send telemetry" offline.
: "${PREFECT_SERVER_ANALYTICS_ENABLED:=false}"
: "${DO_NOT_TRACK:=1}"
GEOSEG_HOME="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PREFECT_HOST PREFECT_PORT PREFECT_API_URL GEOSEG_POOL GEOSEG_HOME
export PREFECT_SERVER_ANALYTICS_ENABLED DO_NOT_TRACK
# Prefect's CLI and the flows come from the project's virtualenv when there is one.
if [ -x "${GEOSEG_HOME}/.venv/bin/prefect" ]; then
  PATH="${GEOSEG_HOME}/.venv/bin:${PATH}"
  export PATH
fi
