#!/usr/bin/env bash
# `make image-check` (run by .ci/run): build the GPU worker image and run the pipeline inside it.
#
#  1. a container engine: docker when its daemon answers, else podman, else buildah; when
#     none works, buildah is installed with apt-get (root only);
#  2. the Dockerfile's default base image: used when present, else pulled, else bootstrapped
#     from Debian's packages with debootstrap (installed with apt-get when missing) and tagged
#     with the base's name, so the Dockerfile builds unchanged;
#  3. `make image` (scripts/image.sh);
#  4. inside the image, as its default user (checked not to be root): `geoseg --help`,
#     `prefect worker start --help`, no pip.conf / ca.crt left in it, then ingest, train (3 steps) and segment of a real tile
#     from ../shared/data mounted read-only; the COG (validated) and the GeoPackage (with
#     polygons) that `geoseg segment` reports must exist.
#
# Skips (exit 0, saying why) only when no engine works and none can be installed. Anything
# else missing or failing: one line naming it and what to do, exit 2.
# Environment: ENGINE, IMAGE (default geoseg-gpu:latest), GEOSEG_DATA (default ../shared/data),
# DEBIAN_MIRROR (default http://deb.debian.org/debian), BUILDAH_ISOLATION (default chroot).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/image-engine.sh

IMAGE=${IMAGE:-geoseg-gpu:latest}
DATA=${GEOSEG_DATA:-../shared/data}
TILE=neon/OSBS_029.tif
started=$SECONDS
say() { echo "image-check: $* [$((SECONDS - started)) s]"; }

# Checked first: no engine install, bootstrap or build for a run that cannot finish.
[[ -f $DATA/$TILE ]] || fail "no $DATA/$TILE: the shared data must lie beside the checkout (or set GEOSEG_DATA)"

apt_install() {
    [[ $EUID -eq 0 ]] && command -v apt-get > /dev/null || return 1
    local wait=(-o DPkg::Lock::Timeout=900)
    apt-get "${wait[@]}" update -q > /dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get "${wait[@]}" install -y -q --no-install-recommends "$@" > /dev/null
}

# --- 1. engine ---------------------------------------------------------------------------
if ! engine=$(pick_engine 2> /dev/null); then
    problems=$(engine_problems)
    say "no working container engine ($problems); installing buildah with apt-get"
    if ! apt_install buildah; then
        say "SKIPPED: no container engine works here ($problems) and none can be installed (apt-get install buildah needs root and a Debian/Ubuntu package registry)"
        exit 0
    fi
    engine=$(ENGINE=buildah pick_engine) || exit 2
fi
export ENGINE=$engine BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
say "engine: $engine"

has_image() {
    case $engine in
        docker) docker image inspect "$1" > /dev/null 2>&1 ;;
        podman) podman image exists "$1" ;;
        buildah) buildah inspect --type image "$1" > /dev/null 2>&1 ;;
    esac
}

# --- 2. base image -----------------------------------------------------------------------
base=$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)
[[ -n $base ]] || fail "Dockerfile has no \`ARG BASE_IMAGE=...\` default"

bootstrap_base() {
    local suite=${base##*:}
    suite=${suite%-slim}
    local mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    [[ $EUID -eq 0 ]] || fail "cannot pull $base and debootstrap needs root: run as root, or load the image first (docker load / podman load)"
    command -v debootstrap > /dev/null || apt_install debootstrap ||
        fail "cannot pull $base and there is no debootstrap: apt-get install debootstrap, or load the image first (docker load / podman load)"
    local root
    root=$(mktemp -d "${TMPDIR:-/tmp}/geoseg-base.XXXXXX")
    # shellcheck disable=SC2064 # expand now: root is local
    trap "rm -rf '$root'" EXIT
    debootstrap --variant=minbase "$suite" "$root/fs" "$mirror" > "$root/log" 2>&1 ||
        fail "debootstrap $suite from $mirror failed: $(tail -1 "$root/log")"
    # As debian:*-slim: updates and security sources, no apt lists, docs, man pages or locales.
    {
        echo "deb $mirror $suite main"
        echo "deb $mirror $suite-updates main"
        if [[ -z ${DEBIAN_MIRROR:-} ]]; then echo "deb http://deb.debian.org/debian-security $suite-security main"; fi
    } > "$root/fs/etc/apt/sources.list"
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
        'path-exclude /usr/share/locale/*' > "$root/fs/etc/dpkg/dpkg.cfg.d/docker-slim"
    rm -rf "$root"/fs/var/lib/apt/lists/* "$root"/fs/var/cache/apt/*.bin "$root"/fs/var/cache/apt/archives/*.deb \
        "$root"/fs/usr/share/man/* "$root"/fs/usr/share/info/* "$root"/fs/usr/share/locale/*
    find "$root/fs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    tar -C "$root/fs" -cf "$root/fs.tar" .
    case $engine in
        docker) docker import --change 'CMD ["bash"]' "$root/fs.tar" "$base" > /dev/null ;;
        podman) podman import --change 'CMD ["bash"]' "$root/fs.tar" "$base" > /dev/null ;;
        buildah)
            local ctr
            ctr=$(buildah from scratch)
            buildah add "$ctr" "$root/fs.tar" / > /dev/null
            buildah config --cmd bash "$ctr"
            buildah commit -q --rm "$ctr" "$base" > /dev/null
            ;;
    esac
    rm -rf "$root"
    trap - EXIT
}

if has_image "$base"; then
    say "base image $base: present"
elif "$engine" pull "$base" > /dev/null 2>&1; then
    say "base image $base: pulled"
else
    say "base image $base: cannot be pulled; bootstrapping it with debootstrap"
    bootstrap_base
    say "base image $base: bootstrapped from Debian packages"
fi

# --- 3. build ----------------------------------------------------------------------------
make --no-print-directory image IMAGE="$IMAGE" || exit 2
say "built $IMAGE"

# --- 4. run inside the image -------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/geoseg-image-check.XXXXXX")
ctr=""
cleanup() {
    if [[ -n $ctr ]]; then buildah rm "$ctr" > /dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
data=$(cd "$DATA" && pwd)
if [[ $engine == buildah ]]; then ctr=$(buildah from --pull-never "$IMAGE"); fi

# in_image STEP CMD...: CMD in the image as its default user, /data read-only, /work writable.
in_image() {
    local step=$1 status=0
    shift
    case $engine in
        docker | podman)
            "$engine" run --rm --network none -v "$data:/data:ro" -v "$work:/work" "$IMAGE" "$@" || status=$?
            ;;
        buildah)
            buildah run --isolation "$BUILDAH_ISOLATION" -v "$data:/data:ro" -v "$work:/work" "$ctr" -- "$@" || status=$?
            ;;
    esac
    [[ $status -eq 0 ]] || fail "$step failed inside $IMAGE (exit $status; its output is above)"
}

uid=$(in_image "id -u" id -u)
[[ $uid =~ ^[0-9]+$ && $uid -ne 0 ]] || fail "$IMAGE's default user is root (uid '$uid'): the Dockerfile must end with USER geoseg"
if [[ $EUID -eq 0 ]]; then chown "$uid" "$work"; else chmod a+rwx "$work"; fi
say "default user: uid $uid"

in_image "geoseg --help" geoseg --help > /dev/null
in_image "prefect worker start --help" prefect worker start --help > /dev/null
say "geoseg --help and prefect worker start --help run"
# make image handed the build the host's pip.conf and CA certificate as secrets: none may remain.
in_image "a search for host pip settings left in the image" sh -c \
    'left=$(find / -xdev \( -name pip.conf -o -name ca.crt \) 2> /dev/null); [ -z "$left" ] || { echo "left in the image: $left"; exit 1; }'
say "no pip.conf or ca.crt left in the image"

in_image "geoseg ingest" geoseg ingest "/data/$TILE" --out /work/tile.zarr --patch-size 64 > /dev/null
in_image "geoseg train" geoseg train /work/tile.zarr --out /work/model --k 4 --k-a 8 --steps 3 \
    --batch-size 4 --preset small --device auto --quiet > /dev/null
# `geoseg segment` prints the paths it wrote (the cluster COG, the GeoPackage): ask it, so
# the output names are defined in one place only (geoseg.segment.output_paths).
written=$(in_image "geoseg segment" geoseg segment /work/model "/data/$TILE" --out /work/seg --quiet)
cog=$(grep '\.tif$' <<< "$written" | head -1 || true)
gpkg=$(grep '\.gpkg$' <<< "$written" | head -1 || true)
[[ -n $cog && -s $work/${cog#/work/} ]] || fail "geoseg segment inside $IMAGE wrote no cluster COG (it printed: $written)"
[[ -n $gpkg && -s $work/${gpkg#/work/} ]] || fail "geoseg segment inside $IMAGE wrote no GeoPackage (it printed: $written)"
in_image "rio cogeo validate $cog" rio cogeo validate --strict "$cog" > /dev/null
polygons=$(in_image "reading $gpkg" python -c "import pyogrio, sys; print(pyogrio.read_info(sys.argv[1])['features'])" "$gpkg")
[[ $polygons -gt 0 ]] || fail "$gpkg written inside $IMAGE has no polygons"
say "ingest + train + segment of $TILE inside $IMAGE: valid COG ${cog##*/}, ${gpkg##*/} with $polygons polygons"

# A build that fails (its base image does not exist) must exit 2 and leave IMAGE as it was.
image_id() {
    case $engine in
        docker | podman) "$engine" image inspect --format '{{.Id}}' "$1" ;;
        buildah) buildah inspect --type image --format '{{.FromImageID}}' "$1" ;;
    esac
}
tags() {
    case $engine in
        docker | podman) "$engine" images --format '{{.Repository}}:{{.Tag}}' ;;
        buildah) buildah images --format '{{.Name}}:{{.Tag}}' ;;
    esac
}
before=$(image_id "$IMAGE")
status=0
BASE_IMAGE=localhost/geoseg-image-check-missing-base:none IMAGE=$IMAGE scripts/image.sh > "$work/failing.log" 2>&1 || status=$?
[[ $status -eq 2 ]] || fail "a build from a missing base image exited $status, not 2 (log: $(tail -1 "$work/failing.log"))"
[[ $(image_id "$IMAGE") == "$before" ]] || fail "a failed build changed $IMAGE"
if tags | grep -q "${IMAGE%:*}:build-"; then fail "a failed build left a temporary tag of ${IMAGE%:*}"; fi
say "a failed build exits 2 ($(tail -1 "$work/failing.log")) and leaves $IMAGE unchanged"
say "passed"
