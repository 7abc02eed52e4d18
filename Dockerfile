# syntax=docker/dockerfile:1
#
# geoseg GPU worker: a Prefect worker for the `geoseg-gpu` docker work pool, and the image
# that worker starts flow runs in (prefect.yaml's docker pool passes the GPUs to them).
#
# Build:  docker build -t geoseg-gpu .
# Run:    docker run --gpus all -e PREFECT_API_URL=http://HOST:4200/api \
#             -v /var/run/docker.sock:/var/run/docker.sock geoseg-gpu
#
# Python and every library come from the project's lock file (constraints.txt), exactly as
# `make setup` installs them: torch 2.14.1's CUDA 13 wheels bring their own CUDA user-space
# libraries; the CUDA runtime base image provides the NVIDIA container-toolkit wiring
# (NVIDIA_VISIBLE_DEVICES, driver capabilities) and a matching CUDA 13 runtime.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DASK_LOGGING__DISTRIBUTED=warning

# Python 3.11 (pyproject: >=3.11,<3.12); Ubuntu 24.04 ships 3.12, so it comes from deadsnakes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv

# The source tree stays at /opt/geoseg: prefect.yaml's docker deployments run from there.
WORKDIR /opt/geoseg
# Installed exactly as `make setup` does: pip with the lock file as constraints.
COPY pyproject.toml constraints.txt README.md ./
COPY geoseg ./geoseg
COPY flows ./flows
RUN python -m pip install --upgrade pip \
 && python -m pip install -c constraints.txt ".[worker]" \
 && python -c "import geoseg, torch, rasterio, zarr, prefect_docker" \
 && geoseg --help > /dev/null \
 && geoseg model --help > /dev/null

# Run as an unprivileged user (to use the host's docker socket, add its group at run time:
# `docker run --group-add $(stat -c %g /var/run/docker.sock) ...`).
RUN useradd --create-home --uid 10001 --user-group geoseg
# Flow runs start in /opt/geoseg: prefect.yaml's entrypoints (flows/*.py) resolve there.
COPY prefect.yaml ./
USER geoseg

# CMD, not ENTRYPOINT: the docker worker starts flow-run containers from this same image
# with its own command (`prefect flow-run execute`), which must not be prefixed by this one.
CMD ["prefect", "worker", "start", "--pool", "geoseg-gpu", "--type", "docker"]
