"""How much could per-image exposure / white-balance codes gain? An upper bound.

Renders every frame of a trained run, fits the best affine colour transform (3x3 + offset,
least squares) from the render to that frame's own photo, and prints the PSNR before and
after it: an oracle no held-out method can beat. Also prints, for held-out frames, the PSNR
with the mean of the transforms fitted on the neighbouring frames of the same camera (what a
per-image code interpolated from the training frames could give at best), and the PSNR of
the pixels the primitives cover vs the rest (`dnmp.evaluate.COVERED_OPACITY`).

    python benchmarks/colour_oracle.py RUN [--split test|all]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

try:
    import dnmp  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _fit(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Least-squares affine map float64 [4, 3]: [rgb, 1] @ A ~ gt."""
    x = torch.cat([pred.reshape(-1, 3), torch.ones(pred.numel() // 3, 1)], 1).double()
    return torch.linalg.lstsq(x, gt.reshape(-1, 3).double()).solution


def _apply(a: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    x = torch.cat([pred.reshape(-1, 3), torch.ones(pred.numel() // 3, 1)], 1).double()
    return (x @ a).float().reshape(pred.shape).clamp(0, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run folder or step_*.pt checkpoint")
    ap.add_argument("--split", default="all", choices=["test", "all"],
                    help="frames to render (neighbour transforms need the training frames: all)")
    args = ap.parse_args(argv)

    from dnmp import metrics
    from dnmp.evaluate import COVERED_OPACITY, render_frame
    from dnmp.train.run import open_run

    run = open_run(args.run)
    scene = run.scene
    frames = scene.frames if args.split == "all" else scene.frames_by_split("test")
    fitted = {}
    for f in frames:
        out = render_frame(run.renderer, scene, f)
        pred = out["rgb"].cpu()
        gt = torch.from_numpy(scene.load_image(f))
        a = _fit(pred, gt)
        covered = out["coverage"].cpu() >= COVERED_OPACITY
        parts = []
        for label, m in (("covered", covered), ("uncovered", ~covered)):
            sse, n = metrics.masked_mse(pred, gt, m)
            parts.append(f"{label} {100 * n / covered.numel():.1f}% {metrics.psnr_of_mse(sse, n) or float('nan'):.2f} dB")
        print(f"{f.name} ({f.split}): PSNR {metrics.psnr(pred, gt):.2f} dB, with its own best colour "
              f"transform {metrics.psnr(_apply(a, pred), gt):.2f} dB; {', '.join(parts)}", flush=True)
        fitted[f.name] = (f, a, pred, gt)
    for name, (f, _, pred, gt) in fitted.items():
        if f.split != "test":
            continue
        same_cam = sorted((g for g in fitted.values() if g[0].split == "train" and g[0].camera == f.camera),
                          key=lambda g: abs(g[0].timestamp - f.timestamp))[:2]
        if same_cam:
            a = sum(g[1] for g in same_cam) / len(same_cam)
            print(f"{name}: with the neighbours' transforms {metrics.psnr(_apply(a, pred), gt):.2f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
