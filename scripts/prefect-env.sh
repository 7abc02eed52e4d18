# Sourced by the other scripts: where the local Prefect server is and which pool to use.
# Override any of these in the environment.
: "${PREFECT_HOST:=127.0.0.1}"
: "${PREFECT_PORT:=4200}"
: "${PREFECT_API_URL:=http://${PREFECT_HOST}:${PREFECT_PORT}/api}"
: "${GEOSEG_POOL:=geoseg-local}"
GEOSEG_HOME="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PREFECT_HOST PREFECT_PORT PREFECT_API_URL GEOSEG_POOL GEOSEG_HOME
# Prefect's CLI and the flows come from the project's virtualenv when there is one.
if [ -x "${GEOSEG_HOME}/.venv/bin/prefect" ]; then
  PATH="${GEOSEG_HOME}/.venv/bin:${PATH}"
  export PATH
fi
