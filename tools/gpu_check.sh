#!/usr/bin/env bash
# dnmp on a GPU machine, end to end, in under 8 minutes:
#   1. imports without open3d        2. just-in-time build of the CPU + CUDA kernels
#   3. the CUDA tests (tests/ops)     4. 300 training steps of the bundled scene on the GPU
#   5. dnmp profile --json on CUDA    6. rasterize ~2M faces at 1241x376, K=4 (+ CPU comparison)
# One summary line per check (PASS/FAIL + figure) at the end; exit status 1 if any failed.
#
# Needs only the working tree and a Python with a CUDA build of torch, numpy, imageio,
# tqdm (no open3d, no internet). Usage, from anywhere:
#     bash tools/gpu_check.sh                 # PYTHON=... to pick the interpreter
# Scratch (build cache, run, logs) goes to $GPU_CHECK_DIR (default: a new folder in /tmp).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
WORK=${GPU_CHECK_DIR:-$(mktemp -d /tmp/dnmp_gpu_check.XXXXXX)}
mkdir -p "$WORK"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export DNMP_BUILD_DIR="$WORK/build"     # fresh just-in-time build against this torch
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export DNMP_WITH_CUDA=1                 # build the CUDA kernels (fail loudly if they do not build)
export DNMP_SKIP_NVCC_TEST=1            # the real build below replaces the compile-only test
# torch takes CUDA_HOME from `which nvcc` when unset; a wrapper such as /usr/local/bin/nvcc
# would point it at /usr/local (no CUDA headers): pick a real toolkit folder instead
if [ -z "${CUDA_HOME:-}" ]; then
  for c in /usr/local/cuda "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /nonexistent)")")")"; do
    if [ -x "$c/bin/nvcc" ] && [ -f "$c/include/cuda_runtime.h" ]; then export CUDA_HOME=$c; break; fi
  done
fi
T0=$(date +%s)
SUMMARY=()
FAILED=0

record() {  # record NAME STATUS FIGURE
  SUMMARY+=("$(printf '%-6s %-10s %s' "$2" "$1" "$3")")
  [ "$2" = PASS ] || FAILED=1
  echo "== $2 $1: $3"
}

BUDGET=${GPU_CHECK_BUDGET:-470}   # seconds for all steps together (the whole check stays under 8 min)

step() {  # step NAME SECONDS CMD... : runs CMD with a time limit, output in $WORK/NAME.log
  local name=$1 limit=$2
  shift 2
  local left=$(( T0 + BUDGET - $(date +%s) ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then
    echo "== $name: no time left in the ${BUDGET}s budget" | tee "$WORK/$name.log"
    STEP_S=0
    return 124
  fi
  echo "== $name (limit ${limit}s)"
  local t=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  STEP_S=$(( $(date +%s) - t ))
  tail -n 25 "$WORK/$name.log"
  [ $rc -eq 124 ] && echo "(timed out after ${limit}s)"
  return $rc
}

echo "dnmp gpu check in $ROOT, scratch $WORK"
"$PY" - <<'EOF'
import sys, torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"cuda available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
EOF
command -v nvcc >/dev/null && nvcc --version | tail -1
echo "CUDA_HOME=${CUDA_HOME:-unset}"

# 1. the GPU path must import without open3d (only the point-cloud tools may need it)
mkdir -p "$WORK/no_open3d"
cat >"$WORK/no_open3d/sitecustomize.py" <<'EOF'
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "open3d" or name.startswith("open3d."):
            raise ImportError("open3d is blocked by tools/gpu_check.sh")
sys.meta_path.insert(0, _Block())
EOF
if step imports 40 env PYTHONPATH="$WORK/no_open3d:$PYTHONPATH" DNMP_FORCE_REFERENCE=1 \
    "$PY" -c "import dnmp, dnmp.ops, dnmp.model, dnmp.train, dnmp.cli, dnmp.profile, dnmp.export; print('imports ok')"; then
  record imports PASS "dnmp, .ops, .model, .train, .cli, .profile, .export import without open3d"
else
  record imports FAIL "see $WORK/imports.log"
fi

# 2. just-in-time build (CPU + CUDA) against this torch
if step build 240 "$PY" -c "
import torch, warnings
warnings.simplefilter('error', RuntimeWarning)   # a fallback to the reference is a failure here
import dnmp.ops as ops
from dnmp.ops._extension import kernels_for, load_extension
assert ops.backend() == 'cpp', ops.backend()
assert torch.cuda.is_available(), 'no CUDA device'
assert kernels_for(torch.device('cuda')), 'extension built without CUDA'
print('built', load_extension().__file__)
"; then
  record build PASS "CUDA extension built just in time in ${STEP_S}s"
else
  record build FAIL "see $WORK/build.log"
fi

# 3. the kernel tests with CUDA cases (device-parametrised scenarios, gradients, determinism)
if step tests 120 "$PY" -m pytest -q -rs -x -p no:cacheprovider tests/ops/test_devices.py \
    tests/ops/test_torch_integration.py; then
  record tests PASS "$(grep -E '[0-9]+ passed' "$WORK/tests.log" | tail -1)"
else
  record tests FAIL "$(grep -E 'passed|failed|error' "$WORK/tests.log" | tail -1) (see $WORK/tests.log)"
fi
if grep -q "cuda" "$WORK/tests.log" && grep -qE "SKIPPED.*no CUDA device" "$WORK/tests.log"; then
  record tests FAIL "CUDA cases were skipped"
fi

# 4. 300 steps of the bundled scene on the GPU
printf 'steps = 300\ngeometry_steps = 100\n' >"$WORK/train.toml"
if step train 150 "$PY" -m dnmp train scenes/kitti00 --out "$WORK/run" --config "$WORK/train.toml" \
    --device cuda --quiet; then
  fig=$("$PY" - "$WORK/run" <<'EOF'
import json, sys, pathlib
p = pathlib.Path(sys.argv[1]) / "metrics.json"
m = json.loads(p.read_text()) if p.exists() else {}
keys = [k for k, v in m.items() if isinstance(v, (int, float)) and any(w in k for w in ("psnr", "ssim", "second"))]
print(", ".join(f"{k}={m[k]:.4g}" for k in keys[:6]) or "no metrics.json")
EOF
)
  record train PASS "300 steps in ${STEP_S}s; $fig"
else
  record train FAIL "see $WORK/train.log"
fi

# 5. profile on CUDA (the trained run when step 4 worked, else the untrained model)
PROFILE_ARGS=("$WORK/run")
[ -d "$WORK/run/checkpoints" ] || PROFILE_ARGS=(--scene scenes/kitti00)
if step profile 90 "$PY" -m dnmp profile "${PROFILE_ARGS[@]}" --json --device cuda; then
  fig=$("$PY" - "$WORK/profile.log" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
m = {}
for at in (i for i, line in enumerate(text.splitlines(keepends=True)) if line.startswith("{")):
    try:  # the JSON object printed by --json (other lines may be warnings)
        m = json.JSONDecoder().raw_decode("".join(text.splitlines(keepends=True)[at:]))[0]
        break
    except ValueError:
        continue
def pick(k):
    v = m.get(k)
    return "?" if v is None else f"{v:.4g}"
print(f"render {pick('render_ms_per_kpx')} ms/1k px, raster {pick('raster_ms_per_kpx')} ms/1k px, "
      f"peak {pick('peak_memory_mb_per_kpx')} MB/1k px")
EOF
)
  record profile PASS "$fig"
else
  record profile FAIL "see $WORK/profile.log"
fi

# 6. rasterization benchmark: 25,000 ico-spheres = 2,000,000 faces at 1241x376, K=4, fragments vs the CPU's
if step bench 90 "$PY" benchmarks/bench_ops.py --device cuda --prims 25000 --runs 10 --raster-only --check; then
  chk=$(grep -o "check vs cpu: [A-Z]*" "$WORK/bench.log" | awk '{print $4}')
  fig="$(grep -E '^rasterize' "$WORK/bench.log" | awk '{print $4 " ms/1k px (" $2 " ms/image)"}'), fragments vs CPU: ${chk:-?}"
  [ "$chk" = PASS ] && record bench PASS "$fig" || record bench FAIL "$fig"
else
  record bench FAIL "see $WORK/bench.log"
fi

echo
echo "== summary ($(( $(date +%s) - T0 ))s, logs in $WORK)"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
