"""Does a video through a block run show a seam where one block hands over to the next?

    python benchmarks/seam_check.py RUN [--camera NAME] [--json]

Renders every frame of one camera in time order with the run's blended blocks
(`dnmp.train.blocks.BlockRenderer`), and for each pair of consecutive frames the mean
absolute colour change (0-255 scale). A seam would show as a jump in that change where
the blend weights change; the script prints the change inside the overlaps against the
change elsewhere, and how far apart the two blocks' own images are in each overlap (the
jump a hard switch from one block to the other would make in a single frame).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from dnmp.train.run import open_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a block run folder (with manifest.json)")
    ap.add_argument("--camera", help="camera name (default: the first frame's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    run = open_run(args.run)
    br = run.renderer
    scene = run.scene
    cam_name = args.camera or scene.frames[0].camera
    frames = sorted((f for f in scene.frames if f.camera == cam_name), key=lambda f: f.timestamp)
    cam = scene.camera_of(frames[0])
    k = cam.intrinsics(as_tensor=True)
    images, weights, gaps = [], [], []
    with torch.no_grad():
        for f in frames:
            c2w = torch.from_numpy(f.cam_to_world)
            w = br.weights(f.cam_to_world)
            weights.append(w)
            parts = {i: br.renderer(i).render(k, c2w, cam.height, cam.width)["rgb"] for i in w}
            images.append(sum(parts[i] * wi for i, wi in w.items()))
            if len(parts) == 2:
                a, b = parts.values()
                gaps.append(float((a - b).abs().mean()) * 255)
    change = [float((b - a).abs().mean()) * 255 for a, b in zip(images, images[1:])]
    in_overlap = [c for c, w0, w1 in zip(change, weights, weights[1:]) if len(w0) > 1 or len(w1) > 1]
    outside = [c for c, w0, w1 in zip(change, weights, weights[1:]) if len(w0) == 1 and len(w1) == 1]
    res = {"frames": len(frames), "camera": cam_name, "blocks": run.blocks,
           "change_in_overlaps_median": statistics.median(in_overlap) if in_overlap else None,
           "change_in_overlaps_max": max(in_overlap) if in_overlap else None,
           "change_elsewhere_median": statistics.median(outside) if outside else None,
           "change_elsewhere_max": max(outside) if outside else None,
           "block_disagreement_in_overlaps_median": statistics.median(gaps) if gaps else None,
           "per_frame_change": [round(c, 2) for c in change]}
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{res['frames']} frames of {cam_name}, {res['blocks']} blocks; mean |change| between "
          f"consecutive frames (0-255):")
    for key in ("change_in_overlaps", "change_elsewhere"):
        med, mx = res[f"{key}_median"], res[f"{key}_max"]
        print(f"  {key.replace('_', ' '):<20s} median {med:.2f}  max {mx:.2f}" if med is not None
              else f"  {key}: none")
    if gaps:
        print(f"  the two blocks' images differ by {res['block_disagreement_in_overlaps_median']:.2f} "
              f"(median over overlap frames): the jump a hard switch would make")


if __name__ == "__main__":
    main()
