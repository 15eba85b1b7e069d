"""Gradient exchange of a data-parallel radiance step: sparse all-gather vs dense all-reduce.

Two gloo processes on this machine (file rendezvous, 1 thread each) load a trained model
(geometry.pt or step_*.pt of a run), take the real fragments of one training frame, and
each shades its half of a batch and back-propagates (sparse vertex-feature gradients, as
in training). Then, interleaved, --repeats times each:

  sparse  dnmp.train.distributed.GradientSync: MLP gradients + loss in one all-reduce,
          vertex-feature rows all-gathered as (indices, values) and coalesced (what
          `dnmp train` does under torchrun)
  dense   the same MLP all-reduce, and the vertex-feature gradient made dense and
          all-reduced whole (what DistributedDataParallel does with a dense embedding)

Prints the median milliseconds of each, of one step's forward + backward on this rank
(for scale), the touched rows per rank and the feature table's size.

    python benchmarks/dist_grad_sync.py RUN_OR_CHECKPOINT [--batch 8192] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

try:
    import dnmp  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def worker(rank: int, world: int, init: str, ckpt_path: str, batch: int, repeats: int) -> None:
    from dnmp.data import load_scene
    from dnmp.model import pixel_rays
    from dnmp.train.checkpoint import checkpoint_scene_path, load_checkpoint, scene_for_checkpoint
    from dnmp.train.distributed import DistContext, GradientSync
    from dnmp.train.factory import renderer_from_checkpoint

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    ckpt = load_checkpoint(ckpt_path)
    scene = scene_for_checkpoint(ckpt, load_scene(checkpoint_scene_path(ckpt)))
    r = renderer_from_checkpoint(ckpt)
    r.refresh_geometry()
    f = scene.frames_by_split("train")[0]
    cam = scene.camera_of(f)
    frags = r.rasterize(cam.intrinsics(as_tensor=True), torch.from_numpy(f.world_to_cam()).float(),
                        (cam.height, cam.width))
    k = frags.pix_to_face.shape[-1]
    g = torch.Generator().manual_seed(rank)
    pick = torch.randint(0, cam.width * cam.height, (batch // world,), generator=g)
    p2f = frags.pix_to_face.reshape(-1, k)[pick]
    bary = frags.bary_coords.reshape(-1, k, 3)[pick]
    dirs = pixel_rays(cam.intrinsics(as_tensor=True), torch.from_numpy(f.cam_to_world),
                      pick % cam.width, pick // cam.width)
    rgb = torch.rand(len(pick), 3, generator=g)
    feats = r.primitives.features
    dense = list(r.field.parameters()) + list(r.background.parameters())
    if r.far_field is not None:
        dense += list(r.far_field.parameters())
    origins = torch.from_numpy(f.cam_to_world[:3, 3]).float().expand(len(pick), 3)
    sync = GradientSync(dense, feats, DistContext(rank, world))

    def backward() -> torch.Tensor:
        for p in dense + [feats]:
            p.grad = None
        pred = r.shade_rays(p2f, bary, dirs, sparse_features=True, ray_origins=origins)["rgb"]
        loss = torch.sum((pred - rgb) ** 2) / (batch * 3)
        loss.backward()
        return loss

    def dense_sync(loss: torch.Tensor) -> None:
        flat = torch.cat([p.grad.reshape(-1) for p in dense] + [loss.detach().reshape(1)])
        dist.all_reduce(flat)
        grad = feats.grad.to_dense()
        dist.all_reduce(grad)

    times = {"forward+backward": [], "sparse": [], "dense": []}
    rows = 0
    for i in range(repeats + 1):  # the first round is a warm-up
        for name in ("sparse", "dense"):
            dist.barrier()
            t0 = time.perf_counter()
            loss = backward()
            t1 = time.perf_counter()
            rows = feats.grad.coalesce().indices().shape[1]
            dist.barrier()
            t2 = time.perf_counter()
            if name == "sparse":
                sync(loss, [])
            else:
                dense_sync(loss)
            t3 = time.perf_counter()
            if i > 0:
                times[name].append(1e3 * (t3 - t2))
                times["forward+backward"].append(1e3 * (t1 - t0))
    if rank == 0:
        mb = feats.numel() * feats.element_size() / 2**20
        print(f"{ckpt_path}: {feats.shape[0]} vertices x {feats.shape[1]} features ({mb:.0f} MiB), "
              f"batch {batch} over {world} gloo processes (1 thread each), {rows} feature rows "
              f"touched on rank 0")
        for name, t in times.items():
            print(f"  {name:17s} {statistics.median(t):8.1f} ms  (median of {len(t)})")
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a run folder, step_*.pt or geometry.pt")
    ap.add_argument("--batch", type=int, default=8192, help="rays per step, all ranks together")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args()
    path = Path(args.checkpoint)
    if path.is_dir():
        from dnmp.train.checkpoint import latest_checkpoint
        path = latest_checkpoint(path / "checkpoints") or path / "checkpoints" / "geometry.pt"
    path = path.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(args.processes, f"file://{tmp}/rendezvous", str(path), args.batch,
                               args.repeats), nprocs=args.processes, join=True)


if __name__ == "__main__":
    main()
