"""How much of the held-out error is misregistration? An upper bound.

Renders each held-out frame of a trained run at its recorded pose and at small rotations and
translations of it (in the camera frame), and keeps whatever raises that frame's PSNR
against its own photo: a coordinate search, 0.1 deg and 4 cm steps halved three times. Prints
per frame the PSNR before and after and the correction found. The search looks at the
held-out photo, so this is an oracle for analysis, never an evaluation: a method may only
correct held-out poses from training data (colour_oracle.py does the same for exposure).

    python benchmarks/pose_oracle.py RUN [--frames N]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

try:
    import dnmp  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    r = np.eye(4)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    r[i, i] = r[j, j] = c
    r[i, j], r[j, i] = -s, s
    return r


def perturbed(cam_to_world: np.ndarray, p: np.ndarray) -> np.ndarray:
    """cam_to_world float64 [4, 4] moved by p = (rx, ry, rz radians, tx, ty, tz metres),
    rotations about the camera's x, y, z axes, then the translation, in the camera frame."""
    t = np.eye(4)
    t[:3, 3] = p[3:]
    return cam_to_world @ _rotation(0, p[0]) @ _rotation(1, p[1]) @ _rotation(2, p[2]) @ t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run folder or step_*.pt checkpoint")
    ap.add_argument("--frames", type=int, default=0, help="at most this many held-out frames (0: all)")
    args = ap.parse_args(argv)

    from dnmp.evaluate import render_camera
    from dnmp.train.run import open_run

    run = open_run(args.run)
    scene = run.scene
    frames = scene.frames_by_split("test")
    if args.frames > 0:
        frames = frames[:args.frames]
    gains = []
    for f in frames:
        cam = scene.camera_of(f)
        gt = torch.from_numpy(scene.load_image(f))
        c2w = np.asarray(f.cam_to_world, dtype=np.float64)

        def psnr(pose):
            out = render_camera(run.renderer, cam, pose)
            return -10 * math.log10(float(((out["rgb"].cpu() - gt) ** 2).mean()))

        p = np.zeros(6)
        best = base = psnr(c2w)
        steps = [math.radians(0.1)] * 3 + [0.04] * 3
        for _ in range(3):
            for k in range(6):
                for sign in (1, -1):
                    while True:
                        q = p.copy()
                        q[k] += sign * steps[k]
                        v = psnr(perturbed(c2w, q))
                        if v <= best + 1e-3:
                            break
                        p, best = q, v
            steps = [s / 2 for s in steps]
        gains.append(best - base)
        print(f"{f.name}: {base:.3f} -> {best:.3f} dB; rotation (deg) {np.degrees(p[:3]).round(3).tolist()}, "
              f"translation (m) {p[3:].round(3).tolist()}", flush=True)
    print(f"mean gain {np.mean(gains):.3f} dB over {len(gains)} frames")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
