#!/usr/bin/env bash
# GPU verification of the DALI executor (issue 4, item 4), one script for the lent GPU machine.
#
# On the device (after the staged wheels are installed, see ../shared/gpu/README.md):
#   bash .gpu/install.sh && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/gpu_check.sh
# Here (CPU only; GPU parts skip, the VP9/DALI-CPU parts run):
#   bash benchmarks/gpu_check.sh
#
# Steps: 1) environment report, 2) the DALI tests (needs_cuda tests: H.264 on NVDEC vs PyAV on the CPU;
# on a GPU machine CLIPSERVE_FAIL_WITHOUT_CUDA=1 so they cannot silently skip), 3) the benchmark
# (benchmarks/gpu_bench.py: it generates its own K400-like H.264 videos with PyAV). Everything goes
# to $OUT (the device tool's output folder; default /tmp/clipserve-gpu-out): env.txt,
# dali_tests.txt, dali_tests.xml, gpu_bench.json, gpu_bench.txt, summary.txt.
# Extra wheels the device needs beyond the default stage (cv2 for the PyAV executor, pytest; the GPU
# tests fall back from torchvision's reference to the OpenCV augmentation when torchvision is missing):
#   EXTRA_WHEELS="opencv-python-headless pytest pytest-timeout" bash ../shared/gpu/stage-wheels.sh
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
OUT=${OUT:-/tmp/clipserve-gpu-out}
mkdir -p "$OUT"
if [[ -n "${PYTHON:-}" ]]; then
  PY=$PYTHON
elif [[ -d /tmp/site ]]; then
  PY=python3
  export PYTHONPATH=${PYTHONPATH:-/tmp/site:$PWD}
elif [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else
  PY=python3
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
export PYTHONDONTWRITEBYTECODE=1

echo "== environment" | tee "$OUT/env.txt"
timeout 120 "$PY" - <<'EOF' 2>&1 | tee -a "$OUT/env.txt"
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("torch", "nvidia.dali", "av", "cv2", "pydantic", "pytest", "torchvision"):
    try:
        m = importlib.import_module(name)
        print(f"{name:12s}", getattr(m, "__version__", "?"))
    except Exception as exc:
        print(f"{name:12s} MISSING ({type(exc).__name__}: {exc})")
try:
    import torch
    print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as exc:
    print("cuda check failed", exc)
from clipserve.executors.backend import cuda_usable
print("cuda_usable", cuda_usable())
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/env.txt"

CUDA=$("$PY" -c "from clipserve.executors.backend import cuda_usable; print(int(cuda_usable()))" 2>/dev/null || echo 0)
MODE=cpu
[[ "$CUDA" == 1 ]] && MODE=gpu

echo "== DALI tests (mode $MODE)"
if "$PY" -c "import pytest" 2>/dev/null; then
  CLIPSERVE_FAIL_WITHOUT_CUDA=$CUDA timeout 240 "$PY" -m pytest tests/test_dali_executor.py tests/test_colour.py -q -p no:cacheprovider \
    --junitxml="$OUT/dali_tests.xml" 2>&1 | tee "$OUT/dali_tests.txt"
  TESTS_RC=${PIPESTATUS[0]}
else
  echo "pytest is not installed here (stage it with EXTRA_WHEELS)" | tee "$OUT/dali_tests.txt"
  TESTS_RC=127
fi

echo "== benchmark (mode $MODE)"
if [[ "$MODE" == gpu ]]; then
  BENCH_ARGS=(--mode gpu)
else
  BENCH_ARGS=(--cpu-only)
fi
timeout 420 "$PY" benchmarks/gpu_bench.py "${BENCH_ARGS[@]}" --out "$OUT" "$@" 2>&1 | grep -v '^\[matroska' | tee "$OUT/gpu_bench.txt"
BENCH_RC=${PIPESTATUS[0]}

{
  echo "mode=$MODE tests_rc=$TESTS_RC bench_rc=$BENCH_RC"
  tail -n 3 "$OUT/dali_tests.txt" 2>/dev/null
  grep '^SUMMARY' "$OUT/gpu_bench.txt" 2>/dev/null
} | tee "$OUT/summary.txt"
[[ $TESTS_RC == 0 && $BENCH_RC == 0 ]]
