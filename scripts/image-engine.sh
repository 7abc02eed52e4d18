# Sourced by scripts/image.sh and scripts/image-check.sh: which container engine works here.
# An engine counts only when it answers, not when its binary exists: a docker client without
# a reachable daemon is common (and is what these development machines have).

fail() {
    echo "${0##*/}: $*" >&2
    exit 2
}

# Why ENGINE cannot be used here, or nothing when it works.
engine_problem() {
    local engine=$1
    if ! command -v "$engine" > /dev/null; then
        echo "$engine: not installed"
    elif ! "$engine" info > /dev/null 2>&1; then
        case $engine in
            docker) echo "docker: installed, but no daemon answers (\`docker info\` fails)" ;;
            *) echo "$engine: installed, but \`$engine info\` fails" ;;
        esac
    fi
}

ENGINES=(docker podman buildah)

# "docker: ...; podman: ..." for every engine of ENGINES that cannot be used here.
engine_problems() {
    local engine problem problems=()
    for engine in "${ENGINES[@]}"; do
        problem=$(engine_problem "$engine")
        if [[ -n $problem ]]; then problems+=("$problem"); fi
    done
    local IFS=";"
    echo "${problems[*]}" | sed 's/;/; /g'
}

# The engine to use: $ENGINE if it works, else the first working of docker, podman, buildah.
pick_engine() {
    local engine
    if [[ -n ${ENGINE:-} ]]; then
        [[ " ${ENGINES[*]} " == *" $ENGINE "* ]] || fail "ENGINE=$ENGINE: use docker, podman or buildah"
        local ENGINES=("$ENGINE")
    fi
    for engine in "${ENGINES[@]}"; do
        if [[ -z $(engine_problem "$engine") ]]; then
            echo "$engine"
            return 0
        fi
    done
    fail "no working container engine ($(engine_problems)): start the docker daemon, or install podman or buildah (Debian/Ubuntu: apt-get install buildah)"
}
