"""Shared fixtures: a tiny synthetic scene in the dnmp scene format.

A textured wall 6 m in front of a camera that slides sideways; pixels that miss
the wall see a sky colour. Images are computed analytically (ray-plane hits), so
they are multi-view consistent and a model can fit them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from dnmp.data import Camera, Frame, PointCloud, write_ply_points, write_scene_json
from dnmp.data import write_depth_png

REPO = Path(__file__).resolve().parents[1]
# test helper modules (_poses.py) import by name under --import-mode=importlib
sys.path.insert(0, str(Path(__file__).resolve().parent))
SHARED_KITTI = REPO.parent / "shared" / "data" / "kitti_odometry_00"
WALL_Z = 6.0
WALL_HALF = (2.0, 1.5)  # half extents in x and y, metres
SKY = np.array([0.55, 0.7, 0.9])


def wall_colour(x, y):
    return np.stack([0.5 + 0.4 * np.sin(2.0 * x), 0.5 + 0.4 * np.cos(3.0 * y),
                     0.3 + 0.2 * np.sin(x + y)], axis=-1)


def synthetic_image(cam: Camera, c2w: np.ndarray) -> np.ndarray:
    v, u = np.mgrid[0:cam.height, 0:cam.width].astype(np.float64)
    d = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], -1)
    d = d @ c2w[:3, :3].T
    o = c2w[:3, 3]
    t = (WALL_Z - o[2]) / d[..., 2]
    x, y = o[0] + t * d[..., 0], o[1] + t * d[..., 1]
    hit = (np.abs(x) <= WALL_HALF[0]) & (np.abs(y) <= WALL_HALF[1])
    img = np.where(hit[..., None], wall_colour(x, y), SKY)
    return (img * 255 + 0.5).astype(np.uint8)


def wall_depth(cam: Camera, c2w: np.ndarray) -> np.ndarray:
    """Camera-space z (metres) of the wall at every pixel centre, 0 where the ray
    misses it (the wall is parallel to the image plane: z = WALL_Z - camera z)."""
    v, u = np.mgrid[0:cam.height, 0:cam.width].astype(np.float64)
    z = WALL_Z - c2w[2, 3]
    x = c2w[0, 3] + (u - cam.cx) / cam.fx * z
    y = c2w[1, 3] + (v - cam.cy) / cam.fy * z
    hit = (np.abs(x) <= WALL_HALF[0]) & (np.abs(y) <= WALL_HALF[1])
    return np.where(hit, z, 0.0)


def make_tiny_scene(root: Path, width: int = 40, height: int = 30, frames: int = 5,
                    depth: bool = False) -> Path:
    """Write the synthetic scene to `root`; the middle frame is the test frame.
    With `depth`, every frame gets a LiDAR-like depth image of the wall (every
    other pixel, as LiDAR is sparse)."""
    cam = Camera("cam", width, height, fx=0.8 * width, fy=0.8 * width,
                 cx=(width - 1) / 2, cy=(height - 1) / 2)
    (root / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(frames):
        c2w = np.eye(4)
        c2w[0, 3] = -0.4 + 0.8 * i / max(1, frames - 1)
        rel = f"images/{i:06d}.png"
        iio.imwrite(root / rel, synthetic_image(cam, c2w))
        drel = None
        if depth:
            drel = f"depth/{i:06d}.png"
            (root / "depth").mkdir(exist_ok=True)
            dep = wall_depth(cam, c2w)
            dep[1::2, :] = 0
            write_depth_png(root / drel, dep)
        out.append(Frame(image=rel, camera="cam", cam_to_world=c2w, timestamp=0.1 * i,
                         split="test" if i == frames // 2 else "train", name=f"{i:06d}", depth=drel))
    gx, gy = np.meshgrid(np.linspace(-WALL_HALF[0], WALL_HALF[0], 60),
                         np.linspace(-WALL_HALF[1], WALL_HALF[1], 45))
    pts = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, WALL_Z)], 1).astype(np.float32)
    (root / "points").mkdir(exist_ok=True)
    write_ply_points(root / "points" / "lidar.ply", pts)
    write_scene_json(root, "tiny", {"dataset": "synthetic", "sequence": "wall", "licence": "CC0"},
                     [0, 0, 0], {"cam": cam}, out, [PointCloud("points/lidar.ply", "lidar")])
    return root


@pytest.fixture
def tiny_scene(tmp_path) -> Path:
    return make_tiny_scene(tmp_path / "tiny")


@pytest.fixture
def make_scene(tmp_path):
    """Factory: make_scene(name, **kwargs) writes another synthetic scene under tmp_path."""
    return lambda name, **kw: make_tiny_scene(tmp_path / name, **kw)


@pytest.fixture
def fast_config_toml(tmp_path) -> Path:
    p = tmp_path / "fast.toml"
    p.write_text("steps = 30\nbatch_size = 512\ncheckpoint_every = 10\nlog_every = 5\n"
                 "lr_features = 0.05\nlr_mlp = 0.01\nhidden = 32\nfeature_dim = 8\n")
    return p


@pytest.fixture
def hook_checkpoint_writes(monkeypatch):
    """hook(before_write): call before_write(save, write, nbytes) before every write of
    `dnmp._io.atomic_torch_save` (save: 1-based count of saves since the hook; write:
    1-based count of writes in this save; nbytes: bytes of this save including this
    write), e.g. to fill the disk or send a signal in the middle of a save."""
    import dnmp._io as dio

    real_fdopen, saves = os.fdopen, [0]

    class Hooked:
        def __init__(self, fh):
            saves[0] += 1
            self.fh, self.save, self.writes, self.nbytes = fh, saves[0], 0, 0

        def write(self, data):
            self.writes += 1
            self.nbytes += len(data)
            before_write(self.save, self.writes, self.nbytes)
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def hook(fn):
        nonlocal before_write
        before_write = fn
        monkeypatch.setattr(dio.os, "fdopen", lambda fd, mode: Hooked(real_fdopen(fd, mode)))

    before_write = None
    return hook


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A trained run folder of the synthetic wall scene (with LiDAR-like depth): 20 radiance
    steps of a small model (~19 dB held out; 30 s on a busy machine); shared by the
    render and viewer tests (read only)."""
    from dnmp.data import load_scene
    from dnmp.train.config import TrainConfig
    from dnmp.train.radiance import train_radiance

    root = tmp_path_factory.mktemp("tiny_run")
    scene = load_scene(make_tiny_scene(root / "scene", depth=True))
    cfg = TrainConfig(steps=20, batch_size=512, checkpoint_every=20, log_every=30, lr_features=0.05,
                      lr_mlp=0.01, hidden=32, feature_dim=8, time_budget_minutes=0)
    train_radiance(scene, root / "run", cfg, progress=False, log=lambda *a: None)
    return root / "run"
