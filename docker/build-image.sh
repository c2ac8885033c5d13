#!/usr/bin/env bash
# Build docker/Dockerfile with buildah, without a container registry: `make image` runs this.
#
# The base image is Debian bookworm made with `debootstrap --variant=minbase` (built once, then
# reused), and the wheels come from this machine's local indexes (the host's pip config), then PyPI
# for what they lack. Every file:// index is mounted read-only into the build, and the host's CA
# bundle is given to pip (PIP_CERT), so pip works behind the same proxy as on the host. On a host with Docker and registry access, plain `docker build -f docker/Dockerfile .`
# uses the CUDA base image and the CUDA wheels instead (docs/docker.md).
#
# Environment (all optional):
#   IMAGE                image to build (default: localhost/clipserve:latest)
#   BASE_IMAGE           base image (default: localhost/clipserve-base:bookworm, made here if absent)
#   TORCH_INDEX_URL      torch wheel index (default: https://pypi.org/simple)
#   PIP_EXTRA_INDEX_URL  more indexes (default: the host's `pip config get global.extra-index-url`,
#                        here file:///opt/pypi/simple file:///opt/pypi-more/simple)
#   CA_BUNDLE            CA bundle for pip (default: /etc/ssl/certs/ca-certificates.crt)
#   DEBIAN_MIRROR        debootstrap mirror (default: http://deb.debian.org/debian)
#
# Needs root, buildah and debootstrap (`apt-get install -y buildah debootstrap`). Prints the build
# time and the image size at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/clipserve:latest}
LOCAL_BASE=localhost/clipserve-base:bookworm
BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE}
# torch from PyPI's own index (its Linux wheels are the CUDA build), and this machine's local
# indexes as extra ones: among equal wheels pip takes the one of the index listed last, so every
# wheel that lies on the local disk (torch, torchvision, the CUDA libraries) comes from there, and
# PyPI gives only what the local indexes lack
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://pypi.org/simple}
PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL-$(pip config get global.extra-index-url 2>/dev/null || true)}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

for tool in buildah; do
  command -v "$tool" >/dev/null || { echo "build-image.sh: $tool not found; run: apt-get install -y buildah debootstrap" >&2; exit 2; }
done

# 1. The base image: debootstrap a minimal bookworm and commit it as an image (once).
if [ "$BASE_IMAGE" = "$LOCAL_BASE" ] && ! buildah inspect --type image "$LOCAL_BASE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { echo "build-image.sh: debootstrap not found; run: apt-get install -y debootstrap" >&2; exit 2; }
  rootfs=$(mktemp -d /var/tmp/clipserve-rootfs.XXXXXX)
  start_s=$(date +%s)
  debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr")
  tar -C "$rootfs" -cf - . | tar -C "$mnt" -xpf -
  buildah umount "$ctr" >/dev/null
  buildah config --cmd /bin/bash "$ctr"
  buildah commit --rm "$ctr" "$LOCAL_BASE" >/dev/null
  rm -rf "$rootfs"
  echo "build-image.sh: base image $LOCAL_BASE made in $(( $(date +%s) - start_s )) s"
fi

# 2. The Dockerfile, with the local indexes mounted read-only (file:// URLs only).
volumes=()
for dir in $(for url in $TORCH_INDEX_URL $PIP_EXTRA_INDEX_URL; do
               case "$url" in file://*) dirname "${url#file://}" ;; esac   # <index>/simple -> <index>
             done | sort -u); do
  volumes+=(-v "$dir:$dir:ro")
done
volumes+=(-v "$CA_BUNDLE:/run/host-ca-bundle.crt:ro")

start_s=$(date +%s)
buildah bud --isolation chroot --format docker --layers \
  -f docker/Dockerfile -t "$IMAGE" \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL" \
  --build-arg "PIP_EXTRA_INDEX_URL=$PIP_EXTRA_INDEX_URL" \
  --build-arg "PIP_CERT=/run/host-ca-bundle.crt" \
  "${volumes[@]}" \
  .
build_s=$(( $(date +%s) - start_s ))
size=$(buildah images --format '{{.Size}}' "$IMAGE" | head -n1)
echo "build-image.sh: built $IMAGE from $BASE_IMAGE in $build_s s; size $size"
