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
      (`train.row_adam`), and the GEMM positional encoding: the default;
  "rows-refenc": "rows" with the reference positional encoding (the encoding's share);
  "remap": alias of "rows" (the name of the default before issue 12).

    python benchmarks/bench_train_step.py [--scene scenes/kitti00] [--checkpoint RUN]
        [--steps 30] [--batch 8192] [--threads N] [--variants reference rows]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import dnmp  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", default=str(Path(__file__).resolve().parents[1] / "scenes" / "kitti00"))
    ap.add_argument("--checkpoint", help="run folder or checkpoint (default: untrained default model)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per variant (after 3 warm-up)")
    ap.add_argument("--batch", type=int, default=None, help="rays per step (default: the config's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--variants", nargs=2, default=["reference", "rows"],
                    choices=["reference", "unique", "rows", "rows-refenc", "remap"])
    args = ap.parse_args(argv)
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
        rows = name in ("rows", "remap", "rows-refenc")
        variants[name] = (model, _make_optimizers(model, cfg, sparse_adam=not rows), rows, [])
    fast_encoding = field.positional_encoding
    for i in range(3 + args.steps):
        for name, (model, opts, rows, times) in variants.items():
            ref_enc = name in ("reference", "unique", "rows-refenc")
            field.positional_encoding = field.positional_encoding_reference if ref_enc else fast_encoding
            t = time.perf_counter()
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
