# geoseg GPU worker: a Prefect worker for the `geoseg-gpu` docker work pool, and the image
# that worker starts flow runs in (prefect.yaml's docker pool passes the GPUs to them).
#
# Build:  make image                      (docker, else podman/buildah; passes the host's pip
#                                          configuration, CA certificate and local wheel folders)
#    or:  docker build -t geoseg-gpu .    (straight from PyPI)
# Run:    docker run --gpus all -e PREFECT_API_URL=http://HOST:4200/api \
#             -v /var/run/docker.sock:/var/run/docker.sock geoseg-gpu
#
# Python 3.11 is Debian 12's own; every library comes from the project's lock file
# (constraints.txt), exactly as `make setup` installs them. torch 2.14.1's CUDA 13 wheels
# bring their own CUDA user-space libraries (cuBLAS, cuDNN, NCCL, ...), so no CUDA base image
# is needed: the NVIDIA container toolkit only needs the variables below to mount the
# host's driver into the container.
# No `# syntax=` line: it would make BuildKit pull its frontend from Docker Hub, which offline
# builders cannot; docker's built-in frontend (Docker 23+) has the RUN --mount used below.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA=cuda>=13.0 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DASK_LOGGING__DISTRIBUTED=warning

# Python 3.11 from Debian (pyproject: >=3.11,<3.12). Only the interpreter and venv/pip
# bootstrap: every wheel the project uses bundles its native libraries (GDAL, PROJ, CUDA).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && python3.11 -m venv /opt/venv

# The source tree stays at /opt/geoseg: prefect.yaml's docker deployments run from there.
WORKDIR /opt/geoseg

# Dependencies first, in their own layer: it is rebuilt only when the lock file or the
# dependency list changes, not when the source does (the CUDA wheels are ~95% of the image).
# The host's pip configuration and CA certificate arrive as build secrets (`make image`
# passes them; a plain `docker build` uses PyPI): they are read by pip and never stored in
# a layer. No pip cache is kept (PIP_NO_CACHE_DIR). Trimmed in the same layer (so the bytes
# really go): static libraries (nothing links at run time) and the packages' own test
# suites, ~350 MB.
COPY pyproject.toml constraints.txt ./
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    export PIP_CONFIG_FILE=/run/secrets/pip.conf \
 && python -m pip install --upgrade pip \
 && python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(*p["dependencies"], *p["optional-dependencies"]["worker"], sep="\n")' > /tmp/requirements.txt \
 && python -m pip install -c constraints.txt -r /tmp/requirements.txt \
 && rm -rf /tmp/requirements.txt /root/.cache \
 && find /opt/venv -name '*.a' -delete \
 && find /opt/venv/lib/python3.11/site-packages -type d -name tests -prune -exec rm -rf {} +

# Installed exactly as `make setup` does: pip with the lock file as constraints (the
# dependencies are already there, so this adds geoseg itself).
COPY README.md ./
COPY geoseg ./geoseg
COPY flows ./flows
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    export PIP_CONFIG_FILE=/run/secrets/pip.conf \
 && python -m pip install -c constraints.txt ".[worker]" \
 && rm -rf build *.egg-info /root/.cache \
 && python -c "import geoseg, torch, rasterio, zarr, prefect_docker" \
 && geoseg --help > /dev/null \
 && geoseg model --help > /dev/null

# Run as an unprivileged user; the virtualenv and the source stay root-owned (read-only to
# it). To use the host's docker socket, add its group at run time:
# `docker run --group-add $(stat -c %g /var/run/docker.sock) ...`.
RUN useradd --create-home --uid 10001 --user-group geoseg
# Flow runs start in /opt/geoseg: prefect.yaml's entrypoints (flows/*.py) resolve there.
COPY prefect.yaml ./
USER geoseg

# CMD, not ENTRYPOINT: the docker worker starts flow-run containers from this same image
# with its own command (`prefect flow-run execute`), which must not be prefixed by this one.
CMD ["prefect", "worker", "start", "--pool", "geoseg-gpu", "--type", "docker"]
