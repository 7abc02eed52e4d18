"""Prefect flows of geoseg: thin tasks over the library, Dask task runner, STAC catalogs.

Entry points (prefect.yaml): flows/ingest.py:ingest_flow, flows/train.py:train_flow,
flows/segment.py:segment_flow, flows/pipeline.py:pipeline_flow.

Importing this package switches Prefect's usage analytics off, before Prefect is imported,
for this process and every process it starts (the demo's temporary API server, Dask
workers, flow-run subprocesses): ``PREFECT_SERVER_ANALYTICS_ENABLED=false`` (the server's
telemetry service) and ``DO_NOT_TRACK=1`` (the client SDK's). A user who sets either
variable keeps their value. scripts/prefect-env.sh does the same for ``make server/worker``.
Dask's INFO lines are off the same way (``DASK_LOGGING__DISTRIBUTED=warning``).
"""

import os

ANALYTICS_OFF = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
# Dask's INFO lines (scheduler, nanny, worker start/stop) stay out of flow logs and consoles;
# DASK_LOGGING__DISTRIBUTED=info brings them back (``geoseg --verbose`` sets it).
QUIET_DASK = {"DASK_LOGGING__DISTRIBUTED": "warning"}
for _name, _value in {**ANALYTICS_OFF, **QUIET_DASK}.items():
    os.environ.setdefault(_name, _value)
