#!/usr/bin/env bash
# The GPU check in one line, from a fresh checkout on a bare GPU machine (under 8 minutes):
#
#     bench/gpu.sh [OUT.json]            # default: $OUT/gpu.json, else /tmp/geoseg-gpu.json
#     bench/gpu.sh --dry-run [OUT.json] [--parts ...]  # every part tiny, on the CPU (the tests)
#     bench/gpu.sh --fetch-wheels        # on a machine with PyPI: the packages a bare GPU
#                                        # machine lacks, into .whl/ (carry it there)
#
# Python: $GEOSEG_PYTHON, else the machine's python3 (the device machines' python3 holds
# torch with CUDA). Packages geoseg needs beside torch that are missing are installed from
# .whl/ (no network needed) into a private folder; without .whl/ it tries PyPI, and when
# that fails it stops with the list of what is missing and how to bring it. geoseg itself
# runs from this checkout (PYTHONPATH): its pyproject pins Python 3.11, the GPU machines
# have 3.12. What it writes is described in bench/gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."

# what a bare GPU machine lacks (bench/gpu.py writes no GeoPackage, so no pyogrio: 33 MB
# more would not fit the device tool's 64 MiB carry); pinned as in constraints.txt
WHEELS=(rasterio==1.4.4 affine==3.0.1 cligj==0.7.2 click-plugins==1.1.1.2
        zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
        dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tblib==3.2.2 tornado==6.6.1 zict==3.0.0
        shapely==2.2.0 pystac==1.15.2 pystac-core==1.15.2 pystac-ext-classification==2.0.1
        pystac-ext-datacube==2.2.1 pystac-ext-eo==1.1.1 pystac-ext-file==2.1.1 pystac-ext-grid==1.1.1
        pystac-ext-item-assets==1.0.1 pystac-ext-label==1.0.2 pystac-ext-mgrs==1.0.1 pystac-ext-mlm==1.4.1
        pystac-ext-pointcloud==1.0.1 pystac-ext-projection==2.0.1 pystac-ext-raster==1.1.1
        pystac-ext-render==2.0.0 pystac-ext-sar==1.0.1 pystac-ext-sat==1.0.1 pystac-ext-scientific==1.0.1
        pystac-ext-storage==2.0.1 pystac-ext-table==1.2.1 pystac-ext-timestamps==1.1.1
        pystac-ext-version==1.2.1 pystac-ext-view==1.0.1 pystac-ext-xarray-assets==1.0.1)
MODULES="rasterio zarr numcodecs shapely pystac affine dask distributed safetensors skimage scipy sklearn tqdm PIL"
PY=${GEOSEG_PYTHON:-python3}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl "${WHEELS[@]}"
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    du -sh .whl
    exit 0
fi

DRY=()
if [[ "${1:-}" == "--dry-run" ]]; then DRY=(--dry-run); shift; fi
if [[ -n "${1:-}" ]]; then JSON=$1; shift; elif [[ -n "${OUT:-}" ]]; then JSON=$OUT/gpu.json; else JSON=/tmp/geoseg-gpu.json; fi
EXTRA=("$@")  # passed on to bench/gpu.py (e.g. --parts peak,segment)

missing() {
    "$PY" - "$@" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}

command -v "$PY" >/dev/null || { echo "bench/gpu.sh: no $PY on this machine (set GEOSEG_PYTHON)" >&2; exit 2; }
"$PY" -c "import torch" 2>/dev/null || { echo "bench/gpu.sh: $PY has no torch (set GEOSEG_PYTHON to a Python with torch)" >&2; exit 2; }
lacking=$(missing $MODULES)
if [[ -n "$lacking" ]]; then
    SITE=/tmp/geoseg-site
    if compgen -G ".whl/*.whl" >/dev/null; then
        echo "installing from .whl/ into $SITE (missing: $lacking)"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    else
        echo "no .whl/ here: trying PyPI for $lacking"
        "$PY" -m pip install -q --no-cache-dir --target "$SITE" "${WHEELS[@]}" 2>/dev/null || {
            echo "bench/gpu.sh: missing Python packages: $lacking; this machine cannot download them." >&2
            echo "  On a machine with PyPI, in this checkout: bench/gpu.sh --fetch-wheels; then carry .whl/ here." >&2
            exit 2
        }
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    lacking=$(missing $MODULES)
    [[ -z "$lacking" ]] || { echo "bench/gpu.sh: still missing after the install: $lacking" >&2; exit 2; }
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [[ ${#DRY[@]} -eq 0 ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench/gpu.sh: no CUDA device visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)'))." >&2
    echo "  This is the GPU check: run it on a GPU machine, or 'bench/gpu.sh --dry-run' to check it on the CPU." >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
if [[ ${#DRY[@]} -gt 0 ]]; then exec "$PY" bench/gpu.py --dry-run --json "$JSON" "${EXTRA[@]}"; fi
# bench/gpu.py keeps to 460 s itself; the hard stop at 470 s is a backstop (the JSON holds what finished)
exec timeout --signal=TERM 470 "$PY" bench/gpu.py --json "$JSON" "${EXTRA[@]}"
