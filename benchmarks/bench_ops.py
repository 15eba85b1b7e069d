"""Benchmark dnmp.ops on a synthetic street scene (the DNMP workload).

~20k primitives (level-1 ico-spheres: 42 verts, 80 faces, radius 0.43 m) at
random occupied 0.5 m voxels of a street 5-60 m in front of the camera, seen by
a KITTI-like camera at 1241x376, K=4. Prints milliseconds per 1000 pixels
(median of --runs timed runs after a warm-up) for rasterize, interpolate
(C=32) and their backward passes.

    python benchmarks/bench_ops.py [--prims 20000] [--runs 7] [--threads N] [--device cuda]

On CUDA the timings synchronise the device around each run; --check also
rasterizes on the CPU and compares the fragments (pix_to_face equal, zbuf and
bary_coords within 1e-5); --raster-only skips interpolate and the backward.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import dnmp  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def icosphere_level1() -> tuple[torch.Tensor, torch.Tensor]:
    """Unit ico-sphere, one subdivision: 42 vertices, 80 faces (the DNMP primitive)."""
    from dnmp.model import ico_sphere

    return ico_sphere(1)


def street_scene(n_prims: int, seed: int = 0, voxel: float = 0.5, radius: float = 0.43):
    g = torch.Generator().manual_seed(seed)
    # occupied voxels of a street: x (right) +-20 m, y (down) from 3 m above to the road
    # 1.6 m below the camera, z (forward) 5-60 m; unique voxel cells
    lo = torch.tensor([-20.0, -3.0, 5.0])
    hi = torch.tensor([20.0, 1.6, 60.0])
    cells = ((hi - lo) / voxel).long()
    idx = torch.unique(torch.stack([torch.randint(0, int(c), (n_prims * 2,), generator=g) for c in cells], 1), dim=0)
    idx = idx[torch.randperm(idx.shape[0], generator=g)[:n_prims]]
    centres = lo + (idx.float() + 0.5) * voxel
    sv, sf = icosphere_level1()
    verts = (centres[:, None, :] + radius * sv[None]).reshape(-1, 3)
    faces = (sf[None] + 42 * torch.arange(centres.shape[0])[:, None, None]).reshape(-1, 3)
    return verts.contiguous(), faces.contiguous()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, runs: int, device: torch.device = torch.device("cpu")) -> float:
    fn()  # warm-up
    _sync(device)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prims", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave default)")
    ap.add_argument("--height", type=int, default=376)
    ap.add_argument("--width", type=int, default=1241)
    ap.add_argument("-k", "--faces-per-pixel", type=int, default=4)
    ap.add_argument("-c", "--channels", type=int, default=32)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    ap.add_argument("--check", action="store_true", help="compare the fragments with the CPU kernels'")
    ap.add_argument("--raster-only", action="store_true", help="time rasterize only")
    args = ap.parse_args()
    from dnmp.device import keep_freed_memory

    malloc = "kept" if keep_freed_memory() else "system"  # as the command line runs
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    import dnmp.ops as ops

    verts, faces = street_scene(args.prims)
    H, W, K = args.height, args.width, args.faces_per_pixel
    intr = torch.tensor([[707.09, 0.0, 601.89], [0.0, 707.09, 183.11], [0.0, 0.0, 1.0]])
    w2c = torch.eye(4)
    kpx = H * W / 1000.0
    print(f"backend={ops.backend()} device={dev} threads={torch.get_num_threads()} prims={args.prims} "
          f"verts={verts.shape[0]} faces={faces.shape[0]} image={W}x{H} K={K} C={args.channels} malloc={malloc}")
    cpu_args = (verts, faces, intr, w2c)
    verts, faces, intr, w2c = (t.to(dev) for t in cpu_args)

    frags = ops.rasterize(verts, faces, intr, w2c, (H, W), K)
    cov = (frags.pix_to_face >= 0).float().mean(dim=(0, 1, 2))
    print("coverage per layer:", [round(float(c), 3) for c in cov])
    if args.check:
        ref = ops.rasterize(*cpu_args, (H, W), K)
        same = torch.equal(frags.pix_to_face.cpu(), ref.pix_to_face)
        dz = float((frags.zbuf.cpu() - ref.zbuf).abs().max())
        db = float((frags.bary_coords.cpu() - ref.bary_coords).abs().max())
        ok = same and dz <= 1e-5 * max(1.0, float(ref.zbuf.abs().max())) and db <= 1e-5
        print(f"check vs cpu: {'PASS' if ok else 'FAIL'} pix_to_face_equal={same} "
              f"(differing {int((frags.pix_to_face.cpu() != ref.pix_to_face).sum())}) "
              f"max|dzbuf|={dz:.3g} max|dbary|={db:.3g}")
    t = median_ms(lambda: ops.rasterize(verts, faces, intr, w2c, (H, W), K), args.runs, dev)
    print(f"rasterize          {t:8.2f} ms/image  {t / kpx:7.4f} ms/1k px")
    if args.raster_only:
        return

    attr = torch.randn(verts.shape[0], args.channels).to(dev)
    t = median_ms(lambda: ops.interpolate(attr, faces, frags), args.runs, dev)
    print(f"interpolate C={args.channels:<3d}  {t:8.2f} ms/image  {t / kpx:7.4f} ms/1k px")

    vg = verts.clone().requires_grad_()
    ag = attr.clone().requires_grad_()

    def fwd_bwd():
        fr = ops.rasterize(vg, faces, intr, w2c, (H, W), K)
        ops.interpolate(ag, faces, fr).sum().backward()

    t = median_ms(fwd_bwd, args.runs, dev)
    print(f"raster+interp fwd+bwd {t:8.2f} ms/image  {t / kpx:7.4f} ms/1k px")


if __name__ == "__main__":
    main()
