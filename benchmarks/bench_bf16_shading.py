"""bf16 against float32 operands in the fused rendering ops, on a trained run's held-out
frames: the time of the shading (`DNMPRenderer.shade_image`: `shade_fwd` + `background_fwd`
on fragments rasterized once) and what the operands do to the image.

Per frame: the medians of --repeats shadings with each setting, run alternately (A B A B) so
that a load change hits both; the PSNR of each image against the photo (and of the torch
reference, `shade_rays_early_exit` in float32); the PSNR between the bf16 and the reference
image. Needs a CPU with bf16 matrix kernels (`dnmp.ops._extension.bf16_matmul_available`).

    python benchmarks/bench_bf16_shading.py RUN [--frames 3] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run folder or checkpoint (dnmp train's output)")
    ap.add_argument("--frames", type=int, default=3, help="held-out frames to shade (first N)")
    ap.add_argument("--repeats", type=int, default=3, help="timed shadings per setting and frame")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from dnmp.metrics import psnr
    from dnmp.ops._extension import bf16_matmul_available
    from dnmp.train.run import open_run

    if not bf16_matmul_available():
        raise SystemExit("this CPU has no bf16 matrix kernels: nothing to compare")
    run = open_run(args.run, None, None)
    scene = run.scene
    frames = (scene.frames_by_split("test") or scene.frames)[: args.frames]
    print(f"{'frame':<16} {'fp32 ms/kpx':>11} {'bf16 ms/kpx':>11} {'speed-up':>8} "
          f"{'PSNR ref':>9} {'fp32':>8} {'bf16':>8} {'bf16 vs ref':>11}")
    for frame in frames:
        r = run.model_for(frame)
        r.geometry()
        cam = scene.camera_of(frame)
        K = cam.intrinsics(as_tensor=True).float()
        c2w = torch.from_numpy(frame.cam_to_world).float()
        h, w = cam.height, cam.width
        frags = r.rasterize(K, torch.linalg.inv(c2w.double()).float(), (h, w))
        gt = torch.from_numpy(scene.load_image(frame)).float()
        times: dict[bool, list[float]] = {False: [], True: []}
        images = {}
        for _ in range(args.repeats):
            for bf16 in (False, True):
                r.config.bf16_matmul = bf16
                t = time.perf_counter()
                images[bf16] = r.shade_image(frags, K, c2w, h, w, fused=True)["rgb"]
                times[bf16].append(time.perf_counter() - t)
        ref = r.shade_image(frags, K, c2w, h, w, fused=False)["rgb"]
        r.config.bf16_matmul = None
        kpx = h * w / 1000
        t32, t16 = (statistics.median(times[b]) * 1e3 / kpx for b in (False, True))
        print(f"{frame.name:<16} {t32:>11.2f} {t16:>11.2f} {t32 / t16:>7.2f}x {psnr(ref, gt):>9.4f} "
              f"{psnr(images[False], gt):>8.4f} {psnr(images[True], gt):>8.4f} {psnr(images[True], ref):>9.1f} dB")


if __name__ == "__main__":
    main()
