"""benchmarks/supersampling.py: the supersampled camera's pixels tile the original pixels."""

import importlib.util
from pathlib import Path

import numpy as np

from dnmp.data.scene import Camera

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "supersampling.py"
_spec = importlib.util.spec_from_file_location("supersampling", _path)
supersampling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(supersampling)


def test_sub_pixels_tile_each_pixel():
    """Each block of s x s pixels of the supersampled camera sees points of one original pixel:
    their centres, mapped back to the original image, average to that pixel's centre and span
    (s - 1) / s of a pixel evenly (independent of how the function writes cx', cy')."""
    cam = Camera("c", width=40, height=30, fx=50.0, fy=55.0, cx=19.3, cy=14.6, channels=1)
    for s in (1, 2, 3):
        big = supersampling.supersampled_camera(cam, s)
        assert (big.width, big.height, big.channels) == (40 * s, 30 * s, 1)
        # big pixel centre U -> camera-plane x = (U - cx') / fx' -> original image u = fx x + cx
        cols = np.arange(big.width, dtype=np.float64)
        rows = np.arange(big.height, dtype=np.float64)
        u = cam.fx * (cols - big.cx) / big.fx + cam.cx
        v = cam.fy * (rows - big.cy) / big.fy + cam.cy
        for back, n in ((u, cam.width), (v, cam.height)):
            blocks = back.reshape(n, s)
            np.testing.assert_allclose(blocks.mean(1), np.arange(n), atol=1e-9)
            np.testing.assert_allclose(blocks[:, -1] - blocks[:, 0], (s - 1) / s, atol=1e-9)
            np.testing.assert_allclose(np.diff(blocks, axis=1), 1.0 / s, atol=1e-9)
