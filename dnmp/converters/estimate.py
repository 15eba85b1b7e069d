"""The expected memory and time of ``dnmp train`` on a scene being converted
(:func:`training_estimate`), printed before a converter's heavy work."""

from __future__ import annotations

from typing import Sequence

import numpy as np


# Constants of :func:`training_estimate`: `dnmp train` with the default TrainConfig on the
# 2-core CPU machine the README's figures come from. Converters must not import dnmp.train
# (layering), so the few settings involved are restated here; if those defaults change, these
# go stale but stay the right order of magnitude (it is an estimate).
EST_BASE_BYTES = 0.45e9  # resident python + torch + open3d + dnmp before any data (measured 0.41 GB)
EST_CACHE_PIXELS = 6_000_000  # TrainConfig.cache_pixels: at most this many training pixels cached
EST_BYTES_PER_CACHED_PIXEL = 99  # cached fragments of one pixel (K = 4 + 4 layers; train/frame_pool.py)
EST_BYTES_PER_PRIMITIVE = 19_000  # 42 vertices x 32 float32 features (5.4 KB) + 2 Adam moments (10.8 KB)
#                                   + 80 faces (1.9 KB int64) + vertices, latent. Measured: the bundled
#                                   scene's geometry.pt is 141 MB for 25,959 primitives (5.4 KB each),
#                                   with the moments a radiance checkpoint 0.42 GB (16.2 KB each)
# Primitives (0.25 m fine + 1.0 m coarse voxels) grow with the metres driven, plus what the
# first frames see ahead. Stereo points to 25 m place fine and coarse primitives, those from 25 to
# 40 m ("stereo_far", the converters' default) coarse ones only: kitti_gray_51 (stereo only) has
# 44.2k over 51.8 m, its first 10 frames 12.2k over 9.3 m, the bundled scene (LiDAR to 80 m +
# stereo) 26.8k over 6.7 m (`scene_centres` of the default TrainConfig). With every stereo point
# at the fine scale they were 115.9k, 26.7k and 43.1k.
EST_PRIMITIVES_PER_METRE = 750
EST_PRIMITIVES_AHEAD = {"stereo": 5_000, "lidar": 22_000}
EST_RENDER_BYTES_PER_PIXEL = 890  # peak of rendering one frame (dnmp profile: 0.85 MiB per 1k px)
EST_BLOCK_FRAMES, EST_BLOCK_OVERLAP = 80, 8  # TrainConfig.block_frames / block_overlap (instants)
EST_RADIANCE_SECONDS = 3000 / 4.3  # TrainConfig.steps (3,000) at ~4.3 steps/s (far field on), per block
EST_GEOMETRY_SECONDS = 25.0  # geometry stage: 300 steps of 8 windows per scale (~75 ms each) ...
EST_RASTER_SECONDS_PER_MPX = 0.7  # ... + 3 visibility refreshes of every training frame, and the
#                                     caching of the training pixels (one rasterization each)
EST_RENDER_SECONDS_PER_MPX = 6.5  # a full render (dnmp profile: 6.1 ms per 1k px) of held-out frames


def training_estimate(images: Sequence[tuple], left_centres, lidar: bool = True) -> dict:
    """Expected peak memory and wall time of ``dnmp train`` (default settings)
    on a scene, from what a converter knows before its heavy work: the output
    images, the trajectory and whether there is LiDAR. An estimate from the
    constants above (``EST_*``, each explained there), not a measurement.

    images: [(pixels of the output image, split "train" | "test")];
    left_centres: [N, 3] camera centres of one camera (metres), one per instant,
    in drive order; lidar: LiDAR points (80 m) or stereo points only (40 m).
    A drive of more than EST_BLOCK_FRAMES instants trains as overlapping blocks,
    one after the other: memory is that of one block, time the sum.
    Memory = base + the block's primitives (EST_PRIMITIVES_AHEAD[kind] +
    EST_PRIMITIVES_PER_METRE * metres, EST_BYTES_PER_PRIMITIVE each) + the
    larger of the pixel cache (min(training pixels, EST_CACHE_PIXELS) *
    EST_BYTES_PER_CACHED_PIXEL) and one held-out render. Time per block =
    geometry stage + rasterizing its training pixels 4 times (3 visibility
    refreshes, the cache) + the radiance steps; plus rendering the held-out frames.
    Returns {"train_pixels", "test_pixels", "travelled_m", "blocks",
    "primitives" (of one block), "memory_gb", "cache_gb", "primitives_gb",
    "minutes", "line"} where "line" is the one line a converter prints.
    """
    train_px = sum(int(n) for n, split in images if split == "train")
    test_px = [int(n) for n, split in images if split == "test"]
    c = np.asarray(left_centres, np.float64).reshape(-1, 3)
    travelled = float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum()) if len(c) > 1 else 0.0
    n = max(1, len(c))
    step = EST_BLOCK_FRAMES - EST_BLOCK_OVERLAP
    blocks = 1 if n <= EST_BLOCK_FRAMES else int(np.ceil((n - EST_BLOCK_OVERLAP) / step))
    share = min(1.0, EST_BLOCK_FRAMES / n)  # one block's part of the drive
    prims = EST_PRIMITIVES_AHEAD["lidar" if lidar else "stereo"] + EST_PRIMITIVES_PER_METRE * travelled * share
    block_px = train_px * share
    cache = min(block_px, EST_CACHE_PIXELS) * EST_BYTES_PER_CACHED_PIXEL
    render = max(test_px, default=0) * EST_RENDER_BYTES_PER_PIXEL
    memory = EST_BASE_BYTES + prims * EST_BYTES_PER_PRIMITIVE + max(cache, render)
    per_block = EST_GEOMETRY_SECONDS + EST_RADIANCE_SECONDS + 4 * EST_RASTER_SECONDS_PER_MPX * block_px / 1e6
    seconds = blocks * per_block + EST_RENDER_SECONDS_PER_MPX * sum(test_px) / 1e6
    out = {"train_pixels": train_px, "test_pixels": sum(test_px), "travelled_m": round(travelled, 2),
           "blocks": blocks, "primitives": int(round(prims, -3)), "memory_gb": round(memory / 1e9, 2),
           "cache_gb": round(cache / 1e9, 2), "primitives_gb": round(prims * EST_BYTES_PER_PRIMITIVE / 1e9, 2),
           "minutes": round(seconds / 60, 1)}
    per = f" per block of {EST_BLOCK_FRAMES} frames ({blocks} blocks)" if blocks > 1 else ""
    out["line"] = (f"expected training (dnmp train, default settings; an estimate): peak memory "
                   f"~{out['memory_gb']:.1f} GB{per} (pixel cache {out['cache_gb']:.2f} GB of "
                   f"{train_px / 1e6:.1f}M training pixels, ~{out['primitives'] / 1e3:.0f}k primitives "
                   f"{out['primitives_gb']:.2f} GB), time ~{out['minutes']:.0f} min for {travelled:.0f} m "
                   f"({len(test_px)} held-out renders included)")
    return out
