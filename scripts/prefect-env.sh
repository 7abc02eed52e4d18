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
# The server streams flow-run logs to websocket subscribers (off by default in Prefect): without
# it `prefect deployment run ... --watch` shows only state changes, never why a run failed.
: "${PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED:=true}"
: "${PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED:=true}"
export PREFECT_SERVER_ANALYTICS_ENABLED DO_NOT_TRACK
export PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED
# Prefect's CLI and the flows come from the project's virtualenv when there is one.
if [ -x "${GEOSEG_HOME}/.venv/bin/prefect" ]; then
  PATH="${GEOSEG_HOME}/.venv/bin:${PATH}"
  export PATH
fi

# Wait (up to 2 minutes) for the server at $PREFECT_API_URL to answer.
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

# Create the process pool $GEOSEG_POOL unless it exists. `make worker` and `make deploy`
# may both get here at once: when the other one created it first, the pool exists now.
ensure_pool() {
  prefect work-pool inspect "${GEOSEG_POOL}" >/dev/null 2>&1 \
    || prefect work-pool create "${GEOSEG_POOL}" --type process >/dev/null 2>&1 \
    || prefect work-pool inspect "${GEOSEG_POOL}" >/dev/null \
    || { echo "could not create the work pool ${GEOSEG_POOL} on ${PREFECT_API_URL}" >&2; return 1; }
  echo "work pool ${GEOSEG_POOL} (process) on ${PREFECT_API_URL}"
}

# Point the Prefect profile of $PREFECT_HOME at this server when it names none, so that
# `prefect ...` in a new terminal talks to it. Without this the CLI there starts a temporary
# server on the same database: a `deployment run --watch` is executed by the worker but never
# hears it end. A profile that already names a server (Prefect Cloud, another host) is kept;
# the user is told which server a new terminal will use instead.
remember_server() {
  local saved
  saved="$(env -u PREFECT_API_URL python -c \
    'from prefect.settings import PREFECT_API_URL; print(PREFECT_API_URL.value() or "")')" || return 0
  if [ -z "${saved}" ]; then
    prefect config set PREFECT_API_URL="${PREFECT_API_URL}" >/dev/null \
      && echo "the Prefect profile now points at ${PREFECT_API_URL}: \`prefect\` in any terminal talks to this server"
  elif [ "${saved}" != "${PREFECT_API_URL}" ]; then
    echo "note: the Prefect profile points at ${saved}; in a new terminal run export PREFECT_API_URL=${PREFECT_API_URL} before \`prefect deployment run\`" >&2
  fi
}
