#!/bin/bash
# The figures of README "Several processes" (issue 15). Usage: benchmarks/dist_figures.sh WORKDIR
# (A) data-parallel vs one process (quality) on the synthetic wall scene of tests/conftest.py;
# (B) blocks over processes (time) on the bundled drive as 2 blocks. On a shared machine the
# times are noisy: run it on an idle one.
set -e
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:?usage: $0 WORKDIR}
PY=${PYTHON:-python}
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$WORK" && cd "$WORK"
PYTHONPATH=$REPO:$REPO/tests $PY -c "
from pathlib import Path
from conftest import make_tiny_scene
make_tiny_scene(Path('wall'), frames=9, width=160, height=120)"
for seed in 0 1 2 3; do
  printf 'seed = %s\nsteps = 300\nbatch_size = 2048\ncheckpoint_every = 300\nlog_every = 25\nhidden = 32\nfeature_dim = 16\n' $seed > dpw_s$seed.toml
done
for run in "one 0" "two 0" "one 1" "two 1" "one 2" "two 2" "one 3" "two 3"; do
  set -- $run; rm -rf w_$1_s$2
  if [ $1 = one ]; then
    OMP_NUM_THREADS=1 $PY -m dnmp train wall --out w_$1_s$2 --config dpw_s$2.toml --stages radiance --quiet
  else
    $PY -m torch.distributed.run --standalone --nproc-per-node 2 -m dnmp train wall --out w_$1_s$2 \
        --config dpw_s$2.toml --stages radiance --quiet
  fi
done
printf 'steps = 100\ngeometry_steps = 20\nblock_frames = 6\nblock_overlap = 2\ncheckpoint_every = 100\nlog_every = 25\n' > blocks_kitti.toml
rm -rf b1 b2
OMP_NUM_THREADS=2 /usr/bin/time -f "1 process, 2 threads: wall %e s" $PY -m dnmp train "$REPO/scenes/kitti00" --out b1 --config blocks_kitti.toml --quiet
/usr/bin/time -f "2 processes, 1 thread each: wall %e s" $PY -m torch.distributed.run --standalone --nproc-per-node 2 \
    -m dnmp train "$REPO/scenes/kitti00" --out b2 --config blocks_kitti.toml --quiet
$PY - <<'PY'
import json
for run in ("b1", "b2"):
    m = json.load(open(f"{run}/manifest.json"))
    print(run, [(b["name"], b.get("rank", 0), b["wall_seconds"]) for b in m["blocks"]])
for run in [f"w_{n}_s{s}" for n in ("one", "two") for s in range(4)]:
    m = json.load(open(f"{run}/metrics.json"))
    print(run, round(m["test_psnr"], 2), [round(v, 6) for _, v in m["loss_curve"]])
PY
