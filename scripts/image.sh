#!/usr/bin/env bash
# `make image`: build the GPU worker image (Dockerfile) as geoseg-gpu:latest.
#
# Engine: docker when its daemon answers, else podman, else buildah (ENGINE=... forces one).
# The host's pip configuration, CA certificate and local wheel folders reach the build through
# scripts/host_pip.py: build secrets plus a read-only server on 127.0.0.1 for the build's
# `--network host`; nothing of them is stored in a layer. The image is built under a temporary
# tag and tagged geoseg-gpu only when the whole build succeeded.
#
# Environment: ENGINE (docker|podman|buildah), IMAGE (default geoseg-gpu:latest),
# BASE_IMAGE (passed as --build-arg when set), PYTHON (the host Python whose pip settings are
# used, default python3), BUILDAH_ISOLATION (default chroot: works inside containers too).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/image-engine.sh

IMAGE=${IMAGE:-geoseg-gpu:latest}
PYTHON=${PYTHON:-python3}
engine=$(pick_engine) || exit 2

work=$(mktemp -d "${TMPDIR:-/tmp}/geoseg-image.XXXXXX")
server_pid=""
cleanup() {
    if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

command -v "$PYTHON" > /dev/null || fail "no $PYTHON to read the host's pip settings: set PYTHON=/path/to/python3"
"$PYTHON" scripts/host_pip.py "$work/pip" &
server_pid=$!
for _ in $(seq 600); do
    [[ -f $work/pip/ready ]] && break
    kill -0 "$server_pid" 2>/dev/null || fail "scripts/host_pip.py could not read the host's pip settings (see above)"
    sleep 0.1
done
[[ -f $work/pip/ready ]] || fail "scripts/host_pip.py did not start within 60 s"

repository=${IMAGE%:*}
if [[ ${IMAGE##*:} == */* ]]; then repository=$IMAGE; fi  # registry:port/name without a tag
temporary="$repository:build-$$"
args=(--network host -t "$temporary")
while read -r secret; do args+=(--secret "$secret"); done < "$work/pip/secrets"
if [[ -n ${BASE_IMAGE:-} ]]; then args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE"); fi

echo "image: building $IMAGE with $engine (temporary tag $temporary)"
status=0
case $engine in
    docker) DOCKER_BUILDKIT=1 docker build "${args[@]}" . || status=$? ;;
    podman) podman build --layers "${args[@]}" . || status=$? ;;
    buildah) buildah bud --isolation "${BUILDAH_ISOLATION:-chroot}" --layers "${args[@]}" . || status=$? ;;
esac
if [[ $status -ne 0 ]]; then
    "$engine" rmi "$temporary" > /dev/null 2>&1 || true
    fail "the $engine build failed (its log is above); $IMAGE was left as it was"
fi
"$engine" tag "$temporary" "$IMAGE"
"$engine" rmi "$temporary" > /dev/null
echo "image: built $IMAGE with $engine"
