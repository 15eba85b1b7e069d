"""Rendering trajectories to files (dnmp.views, `dnmp render --trajectory`): colour, depth,
coverage, videos, atomic writes, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from .conftest import WALL_Z, wall_depth
from dnmp import views as views_mod
from dnmp.data import read_depth_png
from dnmp.evaluate import depth_errors, render_frame
from dnmp.train.run import open_run
from dnmp.trajectory import dataset_views, interpolate_views, lane_offset, shift_views, write_camera_path

REPO = Path(__file__).resolve().parents[1]


def dnmp(*args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "dnmp", *map(str, args)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def run(tiny_run):
    return open_run(tiny_run)


def test_zero_shift_renders_the_dataset_frames_bit_for_bit(run, tmp_path):
    scene = run.scene
    frames = {f.name: f for f in scene.frames}
    rec = dataset_views(scene, "all")
    zero = shift_views(scene, "all", (0.0, 0.0, 0.0))
    for a, b in zip(rec, zero):
        img = views_mod.render_camera(run.renderer, b.camera, b.cam_to_world)
        ref = render_frame(run.renderer, scene, frames[a.name])  # what `dnmp render` always did
        for key in ("rgb", "depth", "coverage"):
            assert torch.equal(img[key], ref[key]), key
    r0 = views_mod.render_views(run.renderer, rec, tmp_path / "rec", progress=False)
    r1 = views_mod.render_views(run.renderer, zero, tmp_path / "zero", progress=False)
    assert r0["images"] == r1["images"] == len(scene.frames)
    for v in rec:
        assert (tmp_path / "rec" / f"{v.name}.png").read_bytes() == \
            (tmp_path / "zero" / f"{v.name}.png").read_bytes()
    # a real shift changes the picture
    moved = shift_views(scene, "test", lane_offset(lane_shift=0.3))[0]
    img = views_mod.render_camera(run.renderer, moved.camera, moved.cam_to_world)["rgb"]
    ref = render_frame(run.renderer, scene, scene.frames_by_split("test")[0])["rgb"]
    assert (img - ref).abs().mean() > 0.01


def test_depth_and_coverage_outputs(run, tmp_path):
    scene = run.scene
    views = dataset_views(scene, "all")
    res = views_mod.render_views(run.renderer, views, tmp_path, depth=True, coverage=True,
                                 video_fps=10, video_prefix="all", progress=False)
    assert res["images"] == 4 * len(views)
    for v in views:
        out = views_mod.render_camera(run.renderer, v.camera, v.cam_to_world)
        d = read_depth_png(tmp_path / f"{v.name}_depth.png")  # the scenes' depth format
        assert np.abs(d - out["depth"].numpy()).max() <= 0.5 / 256 + 1e-6
        cov = iio.imread(tmp_path / f"{v.name}_coverage.png")
        assert cov.dtype == np.uint8 and cov.ndim == 2
        assert np.abs(cov / 255.0 - out["coverage"].numpy()).max() <= 0.5 / 255 + 1e-6
        prev = iio.imread(tmp_path / f"{v.name}_depth_preview.png")
        assert prev.shape == (v.camera.height, v.camera.width, 3)
        assert (prev[d == 0] == 0).all() and prev[d > 0].max() > 0
        # the wall is at z = WALL_Z - camera z: covered wall pixels read its depth
        truth = wall_depth(v.camera, v.cam_to_world)
        m = (truth > 0) & (d > 0)
        assert m.sum() > 0.8 * (truth > 0).sum()
        assert np.median(np.abs(d[m] - truth[m])) < 0.15
        assert (truth[m] == pytest.approx(WALL_Z, abs=1e-9))
    for suffix in ("", "_depth", "_coverage"):
        path = tmp_path / f"all_cam{suffix}.mp4"
        assert path.stat().st_size > 500
        with imageio.get_reader(path) as r:
            assert r.count_frames() == len(views)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # npy: float32 metres, equal to the render
    views_mod.render_views(run.renderer, views[:1], tmp_path / "npy", depth=True, depth_format="npy",
                           progress=False)
    d = np.load(tmp_path / "npy" / f"{views[0].name}_depth.npy")
    out = views_mod.render_camera(run.renderer, views[0].camera, views[0].cam_to_world)
    assert d.dtype == np.float32 and np.array_equal(d, out["depth"].numpy())


def test_composited_depth_matches_the_lidar(run):
    # the synthetic scene's LiDAR-like depth images are the wall's exact depth
    surface = depth_errors(run.renderer, run.scene, "test")
    comp = depth_errors(run.renderer, run.scene, "test", composited=True)
    assert comp["pixels"] == surface["pixels"] > 0
    assert comp["covered"] > 0.5
    assert comp["median_m"] < 0.15 and surface["median_m"] < 0.15


def test_interrupt_leaves_no_partial_file(run, tmp_path, monkeypatch):
    views = interpolate_views(run.scene, fps=30)
    real, calls = views_mod.render_camera, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(views_mod, "render_camera", flaky)
    with pytest.raises(KeyboardInterrupt):
        views_mod.render_views(run.renderer, views, tmp_path, depth=True, video_fps=30, progress=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"{v.name}{s}" for v in views[:2]
                           for s in (".png", "_depth.png", "_depth_preview.png"))
    for n in names:  # the finished ones are whole
        assert iio.imread(tmp_path / n).size > 0


def test_cli_render_trajectories(tiny_run, tmp_path):
    proc = dnmp("render", tiny_run, "--trajectory", "shift", "--lane-shift", "0.2", "--depth",
                "--coverage", "--video", "--out", tmp_path / "shift", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 1 views (4 images)" in proc.stdout
    assert (tmp_path / "shift" / "test_shift_-0.2_0_0_cam_depth.mp4").stat().st_size > 500
    # a path file written from an interpolation renders the same number of views
    run = open_run(tiny_run)
    path = write_camera_path(tmp_path / "p.json", interpolate_views(run.scene, frames=4), fps=8)
    proc = dnmp("render", tiny_run, "--trajectory", "path", path, "--video", "--out", tmp_path / "p",
                "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 4 views" in proc.stdout and "(4 frames, 8 fps)" in proc.stdout
    assert len(list((tmp_path / "p").glob("path_*.png"))) == 4
    # bad input: one line, exit code 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"render_width": 8, "render_height": 8,
                               "camera_path": [{"camera_to_world": [float("nan")] * 16, "fov": 40}]}))
    for args, needle in ((("--trajectory", "spiral"), "unknown trajectory 'spiral'"),
                         (("--trajectory", "path", bad), "NaN"),
                         (("--trajectory", "path", tmp_path / "none.json"), "none.json"),
                         (("--trajectory", "shift", "--offset", "1,2"), "--offset"),
                         (("--trajectory", "interpolate", "--lane-shift", "1"), "shift")):
        proc = dnmp("render", tiny_run, *args, "--out", tmp_path / "never")
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("dnmp: error:"), proc.stderr
        assert needle in lines[0]
    assert not (tmp_path / "never").exists()
