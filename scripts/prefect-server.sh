#!/usr/bin/env bash
# Start a local Prefect server (UI and API at http://$PREFECT_HOST:$PREFECT_PORT) in the foreground.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/prefect-env.sh"
# A port already taken (another server, another program): one clear line and exit 2, instead
# of the server's traceback. The probe binds as uvicorn does (SO_REUSEADDR), so a port left
# in TIME_WAIT by a server just stopped counts as free, like it does for the server.
# Any other bind failure (a host that is not this machine's) is left to the server to report.
if ! python3 - "${PREFECT_HOST}" "${PREFECT_PORT}" <<'PY'
import errno, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(family, socket.SOCK_STREAM) as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
    except OSError as exc:
        sys.exit(1 if exc.errno == errno.EADDRINUSE else 0)
PY
then
  echo "make server: port ${PREFECT_PORT} on ${PREFECT_HOST} is already in use (another Prefect server?): stop that, or choose another port with PREFECT_PORT, e.g. PREFECT_PORT=$((PREFECT_PORT + 1)) make server (and the same PREFECT_PORT in the worker's and deploy's terminals)" >&2
  exit 2
fi
echo "Prefect server: ${PREFECT_API_URL%/api} (API ${PREFECT_API_URL}); PREFECT_HOME=${PREFECT_HOME:-~/.prefect}"
exec prefect server start --host "${PREFECT_HOST}" --port "${PREFECT_PORT}"
