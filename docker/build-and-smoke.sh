#!/usr/bin/env bash
# Build both images and smoke-test them.
#   CPU image: `gpucnn info`, a one-epoch `gpucnn train`, and the test suite (test stage).
#   GPU image: `python -c "import cupy"` and `gpucnn info`, which without a GPU must report
#              that it fell back to NumPy and why.
# Uses `docker` when a Docker engine answers, otherwise podman/buildah with chroot isolation
# (for hosts without a container runtime that can create cgroups).
# Environment: CUDA_MAJOR=12|13 (GPU image, default 12), SKIP_GPU=1 to build only the CPU image,
# NO_CACHE=1 to rebuild every layer (for build timings).
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_MAJOR=${CUDA_MAJOR:-12}
log() { printf '\n== %s\n' "$*"; }

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  engine=docker
  build() { docker build "$@"; }
  run_in() { local image=$1; shift; docker run --rm --entrypoint "$1" "$image" "${@:2}"; }
  size_of() { docker image inspect --format '{{.Size}}' "$1"; }
elif command -v podman >/dev/null && command -v buildah >/dev/null; then
  engine=podman
  extra=()
  # hosts whose package index sits behind a proxy: lend the build its pip config and CA
  # bundle read-only (build time only; nothing of it is copied into the image)
  [ -f /etc/pip.conf ] && extra+=(-v /etc/pip.conf:/etc/pip.conf:ro)
  # (mounted beside, not over, the image's own bundle, which Debian's ca-certificates rewrites)
  [ -f /etc/ssl/certs/ca-certificates.crt ] \
    && extra+=(-v /etc/ssl/certs/ca-certificates.crt:/host-ca.crt:ro --build-arg PIP_CERT=/host-ca.crt)
  build() { podman build --isolation=chroot "${extra[@]}" "$@"; }
  run_in() {
    local image=$1 container status=0; shift
    container=$(buildah from "$image")
    buildah run --isolation=chroot "$container" -- "$@" || status=$?
    buildah rm "$container" >/dev/null
    return $status
  }
  size_of() { podman image inspect --format '{{.Size}}' "$1"; }
else
  echo "build-and-smoke: needs docker (with a running engine) or podman and buildah" >&2
  exit 1
fi
log "engine: $engine"

timed_build() {
  local start=$SECONDS
  if [ "${NO_CACHE:-0}" = 1 ]; then set -- --no-cache "$@"; fi
  build "$@"
  echo "built in $((SECONDS - start)) s"
}

log "CPU image"
timed_build -f docker/Dockerfile.cpu --target runtime -t gpucnn:cpu .
timed_build -f docker/Dockerfile.cpu --target test -t gpucnn:cpu-test .
run_in gpucnn:cpu gpucnn info
run_in gpucnn:cpu gpucnn train --epochs 1 --out /tmp/smoke-run
run_in gpucnn:cpu-test python -m pytest -q -m "not slow" -p no:cacheprovider /opt/gpucnn-tests/tests

if [ "${SKIP_GPU:-0}" != 1 ]; then
  log "GPU image (CUDA ${CUDA_MAJOR})"
  timed_build -f docker/Dockerfile --build-arg "CUDA_MAJOR=${CUDA_MAJOR}" -t "gpucnn:cuda${CUDA_MAJOR}" .
  run_in "gpucnn:cuda${CUDA_MAJOR}" python -c "import cupy; print('cupy', cupy.__version__)"
  info=$(run_in "gpucnn:cuda${CUDA_MAJOR}" gpucnn info)
  echo "$info"
  if ! grep -q "reason: CuPy found a CUDA device" <<<"$info"; then
    grep -q "fell back to NumPy because" <<<"$info" || { echo "GPU image: no GPU and no fall-back reason" >&2; exit 1; }
  fi
fi

log "image sizes"
for image in gpucnn:cpu "gpucnn:cuda${CUDA_MAJOR}"; do
  if size=$(size_of "$image" 2>/dev/null); then
    echo "$image $((size / 1024 / 1024)) MiB"
  fi
done
log "smoke tests passed"
