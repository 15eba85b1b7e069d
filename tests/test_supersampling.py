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
    cam = Camera("c", width=40, height=30, fx=50.0, fy=55.0, cx=19.3, cy=14.6, channels=1)
    for s in (1, 2, 3):
        big = supersampling.supersampled_camera(cam, s)
        assert (big.width, big.height, big.channels) == (40 * s, 30 * s, 1)
        # a ray through camera coordinates (x, y) lands at pixel (fx x + cx, fy y + cy); in the
        # big image at s (u + 0.5) - 0.5: big pixels s u .. s u + s - 1 tile pixel u's span
        x, y = np.meshgrid(np.linspace(-0.3, 0.3, 7), np.linspace(-0.2, 0.2, 5))
        u, v = cam.fx * x + cam.cx, cam.fy * y + cam.cy
        ub, vb = big.fx * x + big.cx, big.fy * y + big.cy
        np.testing.assert_allclose(ub, s * (u + 0.5) - 0.5, atol=1e-9)
        np.testing.assert_allclose(vb, s * (v + 0.5) - 0.5, atol=1e-9)
