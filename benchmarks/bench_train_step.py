"""Radiance training steps per second, two variants interleaved in one process.

Builds the default model on a scene (or opens a run's checkpoint), caches the training
frames' fragments as training does (`FramePool`), and times the training loop's own
step (`train.radiance.radiance_loss_backward` + `optimizer_step`) for each variant on
its own copy of the model, alternating A B A B ... so that load on a shared machine hits
both alike. Prints medians and the ratio.

Variants (`--variants A B`, the first is the baseline of the ratio):
  "reference": the reference paths, i.e. the step before issue 12: an embedding with a
      sparse COO gradient, coalesced and applied by torch.optim.SparseAdam, and the
      positional encoding in plain torch ops (`field.positional_encoding_reference`);
  "unique": as "reference", with the reference sparse lookup (two torch.unique sorts
      instead of `renderer.unique_inverse`);
  "rows": the features' rows gathered as a leaf, their gradient handed to RowAdam
      (`train.row_adam`), the GEMM positional encoding and the MLPs' bf16 products where
      the CPU has bf16 matrix kernels (`TrainConfig.bf16_matmul = true`, opt-in);
  "rows-fp32": "rows" with float32 products: the default step;
  "rows-refenc": "rows" with the reference positional encoding (the encoding's share);
  "rows-gemmenc": "rows-fp32" with the positional encoding as a GEMM + ATen sin
      (`field._PositionalEncoding`), not the compiled op `encode_fwd` (the default step on a
      CPU where the kernels are built);
  "remap": alias of "rows" (the name of the default before issue 12).

    python benchmarks/bench_train_step.py [--scene scenes/kitti00] [--checkpoint RUN]
        [--steps 30] [--batch 8192] [--threads N] [--variants reference rows]

`--against DIR` times another checkout (DIR holds its `dnmp` package, built) against this
one instead: two worker processes (each imports its own dnmp, default model on --scene,
`_make_optimizers`, `radiance_loss_backward` + `optimizer_step`, the API both share) take
one step each in turn; prints both medians and the ratio. E.g. before/after a change:
`git archive BASE | tar -x -C /tmp/base && cp dnmp/_C*.so /tmp/base/dnmp/`, then
`--against /tmp/base`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import dnmp  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _worker(scene_dir: str, threads: int | None, batch: int | None) -> int:
    """--worker: build the default model and pool, then time one step per stdin line."""
    if threads:
        torch.set_num_threads(threads)
    from dnmp.data.scene import load_scene
    from dnmp.train.config import TrainConfig
    from dnmp.train.factory import build_renderer, scene_centres
    from dnmp.train.frame_pool import FramePool
    from dnmp.train.radiance import _make_optimizers, optimizer_step, radiance_loss_backward

    scene, cfg = load_scene(scene_dir), TrainConfig()
    torch.manual_seed(0)
    model = build_renderer(scene_centres(scene, cfg), cfg)
    pool = FramePool(model, scene, scene.frames_by_split("train"), cfg.cache_pixels,
                     cfg.cache_rotate_every, seed=cfg.seed, progress=False)
    pool.sync(0)
    opts = _make_optimizers(model, cfg)
    import dnmp as package  # the checkout's, through PYTHONPATH

    print(f"ready {Path(package.__file__).parent}", flush=True)
    for _ in sys.stdin:
        t = time.perf_counter()
        radiance_loss_backward(model, pool, opts, batch or cfg.batch_size)
        optimizer_step(opts)
        print(time.perf_counter() - t, flush=True)
    return 0


def _against(other: str, args) -> int:
    """Time the checkout `other` against this one, in two processes, steps alternating."""
    import os
    import subprocess

    sides = {"other": str(Path(other).resolve()), "this": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--scene", args.scene]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--batch", str(args.batch)] if args.batch else []
    procs = {}
    for name, root in sides.items():
        env = {**os.environ, "PYTHONPATH": root}
        procs[name] = subprocess.Popen(cmd, env=env, cwd=root, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
    for name, p in procs.items():
        line = p.stdout.readline().split()
        if not line or line[0] != "ready":
            raise SystemExit(f"bench_train_step: the worker of {sides[name]} did not start")
        print(f"{name}: dnmp from {line[1]}")
    times = {name: [] for name in procs}
    for i in range(3 + args.steps):
        for name, p in procs.items():
            p.stdin.write("step\n")
            p.stdin.flush()
            t = float(p.stdout.readline())
            if i >= 3:
                times[name].append(t)
    for p in procs.values():
        p.stdin.close()
        p.wait()
    med = {name: statistics.median(v) for name, v in times.items()}
    for name, m in med.items():
        print(f"{name:6s} {1e3 * m:8.1f} ms/step  {1 / m:6.2f} steps/s")
    print(f"ratio this / other steps per second: {med['other'] / med['this']:.3f}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", default=str(Path(__file__).resolve().parents[1] / "scenes" / "kitti00"))
    ap.add_argument("--checkpoint", help="run folder or checkpoint (default: untrained default model)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per variant (after 3 warm-up)")
    ap.add_argument("--batch", type=int, default=None, help="rays per step (default: the config's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--variants", nargs=2, default=["reference", "rows"],
                    choices=["reference", "unique", "rows", "rows-refenc", "rows-fp32", "rows-gemmenc", "remap"])
    ap.add_argument("--against", metavar="DIR", help="time the checkout DIR against this one")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args.scene, args.threads, args.batch)
    if args.against:
        return _against(args.against, args)
    if args.threads:
        torch.set_num_threads(args.threads)

    import dnmp.model.field as field
    from dnmp.data.scene import load_scene
    from dnmp.train.config import TrainConfig
    from dnmp.train.frame_pool import FramePool
    from dnmp.train.radiance import _make_optimizers, optimizer_step, radiance_loss_backward

    if args.checkpoint:
        from dnmp.train.run import open_run

        run = open_run(args.checkpoint, None)
        scene, cfg = run.scene, TrainConfig.from_dict(run.config, run.source)
        base = run.model_for(scene.frames_by_split("train")[0])
    else:
        from dnmp.train.factory import build_renderer, scene_centres

        scene, cfg = load_scene(args.scene), TrainConfig()
        torch.manual_seed(0)
        base = build_renderer(scene_centres(scene, cfg), cfg)
    batch = args.batch or cfg.batch_size
    t = time.perf_counter()
    pool = FramePool(base, scene, scene.frames_by_split("train"), cfg.cache_pixels, cfg.cache_rotate_every,
                     seed=cfg.seed, progress=False)
    pool.sync(0)
    print(f"cached {len(pool)} pixels in {time.perf_counter() - t:.1f} s; batch {batch}, "
          f"{torch.get_num_threads()} threads")
    variants = {}
    for name in args.variants:
        model = copy.deepcopy(base)
        model.refresh_geometry()
        model.sparse_lookup = "unique" if name == "unique" else "remap"
        rows = name in ("rows", "remap", "rows-refenc", "rows-fp32", "rows-gemmenc")
        cfg_v = dataclasses.replace(cfg, bf16_matmul=name in ("rows", "remap"))
        variants[name] = (model, _make_optimizers(model, cfg_v, sparse_adam=not rows), rows, [])
    fast_encoding = field.positional_encoding
    for i in range(3 + args.steps):
        for name, (model, opts, rows, times) in variants.items():
            ref_enc = name in ("reference", "unique", "rows-refenc")
            field.positional_encoding = field.positional_encoding_reference if ref_enc else fast_encoding
            t = time.perf_counter()
            with field.compiled_encoding(name != "rows-gemmenc"):
                radiance_loss_backward(model, pool, opts, batch, feature_rows=rows)
            optimizer_step(opts)
            if i >= 3:
                times.append(time.perf_counter() - t)
    field.positional_encoding = fast_encoding
    med = {name: statistics.median(v[-1]) for name, v in variants.items()}
    for name, m in med.items():
        print(f"{name:9s} {1e3 * m:8.1f} ms/step  {1 / m:6.2f} steps/s")
    a, b = args.variants
    print(f"ratio {b} / {a} steps per second: {med[a] / med[b]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
