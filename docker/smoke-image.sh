#!/usr/bin/env bash
# Run the built image: inside it, `clipserve make-sample`, `clipserve start` until it answers
# /healthz, and 3 steps of `python -m trainer` against it (shared memory, as in compose.yaml).
#
#   docker/smoke-image.sh            # after `make image`; or: IMAGE=... PORT=... docker/smoke-image.sh
#
# Uses `buildah run --isolation chroot` on a working container of the image (as the image's user,
# uid 1000, on the host's network: the port must be free here), so it needs no container engine.
# Exits non-zero when any of the three fails. Prints each step's seconds.
set -euo pipefail

IMAGE=${IMAGE:-localhost/clipserve:latest}
PORT=${PORT:-18431}

# the image's own HEALTHCHECK command (kept by --format docker), run inside once the service is up
healthcheck=$(buildah inspect --type image "$IMAGE" | python3 -c \
  'import json, sys; test = json.load(sys.stdin)["Docker"]["config"]["Healthcheck"]["Test"]; assert test[0] == "CMD-SHELL", test; print(test[1])')

ctr=$(buildah from --quiet "$IMAGE")
trap 'buildah rm "$ctr" >/dev/null' EXIT

# One shell inside the image runs the three steps; the service is stopped with SIGTERM at the end.
buildah run --isolation chroot "$ctr" -- bash -c '
set -euo pipefail
port=$1
cd /tmp
echo "smoke: as $(id -un) (uid $(id -u)), python $(python --version 2>&1 | cut -d" " -f2), in $(pwd)"

start_s=$(date +%s)
clipserve make-sample --out /tmp/sample --classes 2 --videos-per-class 4 --workers 1 --no-progress
echo "smoke: make-sample done in $(( $(date +%s) - start_s )) s"

start_s=$(date +%s)
clipserve start --dataset k400 --root /tmp/sample --host 127.0.0.1 --port "$port" \
  --index-cache /tmp/index.sqlite --backend pyav --workers 1 \
  --batch-size 2 --num-clips 2 --frames-per-clip 4 --crop-size 64 --no-progress &
service_pid=$!
python -c "import sys, time, urllib.request
url = sys.argv[1]
for _ in range(300):
    try:
        print(\"smoke: GET /healthz ->\", urllib.request.urlopen(url, timeout=2).read().decode())
        break
    except OSError:
        time.sleep(1)
else:
    sys.exit(\"smoke: no answer from \" + url)" "http://127.0.0.1:$port/healthz"
echo "smoke: clipserve start healthy in $(( $(date +%s) - start_s )) s"
CLIPSERVE_PORT=$port sh -c "$2"
echo "smoke: the image HEALTHCHECK passes: $2"

start_s=$(date +%s)
python -m trainer --server "http://127.0.0.1:$port" --transport shm \
  --profile cpu --backbone tiny --max-steps 3 --log-every-steps 1 \
  --checkpoint-dir /tmp/trainer-out --progress false
echo "smoke: trainer done in $(( $(date +%s) - start_s )) s; $(wc -l < /tmp/trainer-out/metrics.jsonl) metrics lines, checkpoint $(ls /tmp/trainer-out/*.pt)"

kill -TERM "$service_pid"
wait "$service_pid"
echo "smoke: service stopped cleanly; all three ran inside the image"
' smoke "$PORT" "$healthcheck"
