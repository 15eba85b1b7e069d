"""Would anti-aliased renders score better held out? Pixel centres against S x S supersampling.

dnmp renders (and trains on) one ray through each pixel centre, while a camera pixel
integrates light over its area. This renders every held-out frame of a trained run twice:
as the product does, and at S times the resolution (the same camera with fx, fy, cx, cy
scaled so that the S x S sub-pixels tile each pixel) box-filtered back to the image size, and
prints the PSNR of each against the photo. S x S supersampling costs S^2 the render time.

    python benchmarks/supersampling.py RUN [--factor 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

try:
    import dnmp  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def supersampled_camera(cam, factor: int):
    """The camera (`dnmp.data.Camera`) of an image `factor` times larger whose factor x factor
    pixels tile each pixel of `cam`'s image: pixel centres sit at integer coordinates
    (DESIGN.md), so pixel u spans [u - 0.5, u + 0.5] and c' = factor (c + 0.5) - 0.5."""
    return dataclasses.replace(cam, width=cam.width * factor, height=cam.height * factor,
                               fx=cam.fx * factor, fy=cam.fy * factor,
                               cx=factor * (cam.cx + 0.5) - 0.5, cy=factor * (cam.cy + 0.5) - 0.5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run folder or step_*.pt checkpoint")
    ap.add_argument("--factor", type=int, default=2, help="sub-pixels per pixel edge (default 2)")
    args = ap.parse_args(argv)
    if args.factor < 1:
        ap.error("--factor must be >= 1")

    from dnmp import metrics
    from dnmp.evaluate import render_camera
    from dnmp.train.run import open_run

    try:
        run = open_run(args.run)
    except (OSError, ValueError) as exc:  # CheckpointError is a ValueError: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scene, renderer = run.scene, run.renderer
    frames = scene.frames_by_split("test")
    if not frames:
        print(f"error: {scene.root} has no held-out (test) frames", file=sys.stderr)
        return 2
    centre, sampled = [], []
    for f in frames:
        cam, s = scene.camera_of(f), args.factor
        gt = torch.from_numpy(scene.load_image(f))
        one = render_camera(renderer, cam, f.cam_to_world)["rgb"].cpu()
        big = render_camera(renderer, supersampled_camera(cam, s), f.cam_to_world)["rgb"].cpu()
        box = big.view(cam.height, s, cam.width, s, 3).mean((1, 3))
        centre.append(metrics.psnr(one, gt))
        sampled.append(metrics.psnr(box, gt))
        print(f"{f.name}: pixel centres {centre[-1]:.3f} dB, {s}x{s} supersampled {sampled[-1]:.3f} dB",
              flush=True)
    n = len(frames)
    print(f"mean over {n} held-out frames: pixel centres {sum(centre) / n:.3f} dB, "
          f"{args.factor}x{args.factor} supersampled {sum(sampled) / n:.3f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
