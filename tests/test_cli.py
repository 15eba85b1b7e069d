"""The `dnmp` command line end to end, and its one-line errors for bad input."""

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dnmp.data import downscale_scene

REPO = Path(__file__).resolve().parents[1]
SHARED_KITTI = REPO.parent / "shared" / "data" / "kitti_odometry_00"
BUNDLED = REPO / "scenes" / "kitti00"
FAST = ("steps = 40\nbatch_size = 2048\ncheckpoint_every = 20\nlog_every = 10\n"
        "lr_features = 0.05\nlr_mlp = 0.01\ntime_budget_minutes = 0\ngeometry_steps = 20\n")


def dnmp(*args, check=True, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "dnmp.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"dnmp {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    err = [ln for ln in lines if ln.startswith("dnmp: error:")]
    assert len(err) == 1, proc.stderr
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


def test_help_of_every_command():
    for cmd in ("train", "render", "eval", "profile", "coverage", "convert", "export-mesh",
                "train-autoencoder"):
        out = dnmp(cmd, "--help").stdout
        assert "usage: dnmp " + cmd in out
    assert "raster_ms_per_kpx" in dnmp("profile", "--help").stdout
    assert "--out" in dnmp("convert", "kitti-odometry", "--help").stdout


@pytest.mark.skipif(not SHARED_KITTI.is_dir() and not BUNDLED.is_dir(), reason="no KITTI data")
def test_end_to_end_convert_train_render_eval_profile(tmp_path):
    scene = tmp_path / "scene"
    if SHARED_KITTI.is_dir():
        dnmp("convert", "kitti-odometry", SHARED_KITTI, "--out", scene, "--first", "0", "--last", "5",
             "--downscale", "4", "--no-stereo", "--quiet")
    else:  # a user without ../shared: downscale the bundled copy instead
        downscale_scene(BUNDLED, scene, 4)
    meta = json.loads((scene / "scene.json").read_text())
    assert meta["cameras"]["image_2"]["width"] == 310
    cfg = tmp_path / "fast.toml"
    cfg.write_text(FAST)
    run = tmp_path / "run"
    out = dnmp("train", scene, "--out", run, "--config", cfg, "--quiet")
    summary = json.loads(out.stdout.strip().splitlines()[-2])
    assert summary["step"] == 40
    m = json.loads((run / "metrics.json").read_text())
    # 40 steps on real frames: well above a random model (~10 dB), far from converged
    assert 12.0 < m["test_psnr"] < 40.0
    n_test = sum(f["split"] == "test" for f in meta["frames"])  # 3 from ../shared, 5 bundled
    assert m["num_test_frames"] == n_test and m["test_lpips"] is None and "lpips_note" in m
    geo = m["geometry"]
    assert geo["steps"] == 20 and geo["test_depth_template"]["median_m"] > 0
    assert geo["test_depth_optimized"]["median_m"] > 0 and geo["test_depth_optimized"]["frames"] == n_test
    assert (run / "checkpoints" / "geometry.pt").is_file()

    out = dnmp("export-mesh", run, "--out", tmp_path / "mesh.ply", "--colour").stdout
    assert "wrote" in out and (tmp_path / "mesh.ply").stat().st_size > 1000
    assert sorted(p.name for p in (run / "renders" / "test").iterdir())[:2] == [
        "image_2_000001_gt.png", "image_2_000001_pred.png"]

    dnmp("render", run, "--split", "all", "--video", "--out", tmp_path / "frames")
    pngs = list((tmp_path / "frames").glob("*.png"))
    assert len(pngs) == len(meta["frames"])
    assert (tmp_path / "frames" / "all_image_2.mp4").stat().st_size > 1000

    ev = json.loads(dnmp("eval", run, "--out", tmp_path / "ev").stdout.splitlines()[0])
    assert ev["test_psnr"] == pytest.approx(m["test_psnr"], abs=1e-4)  # deterministic render
    written = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"test_psnr", "test_ssim", "test_lpips", "num_test_frames"} <= set(written)

    prof = json.loads(dnmp("profile", run, "--json", "--repeats", "5", "--geometry").stdout)
    assert prof["geometry_step_ms"] > 0 and len(prof["geometry_step_ms_runs"]) == 5
    assert prof["geometry_refresh_ms"] > 0
    for key in ("raster_ms_per_kpx", "render_ms_per_kpx", "peak_memory_mb_per_kpx"):
        assert prof[key] is None or prof[key] > 0
    assert prof["raster_ms_per_kpx"] < prof["render_ms_per_kpx"]
    assert len(prof["raster_ms_per_kpx_by_scale"]) == 2 and min(prof["raster_ms_per_kpx_by_scale"]) > 0
    assert prof["num_faces"] == 80 * prof["num_primitives"] and len(prof["raster_ms_runs"]) == 5
    # every command keeps freed memory for reuse where the C library is glibc
    glibc = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    assert prof["malloc"] == ("kept" if glibc else "system")

    # a checkpoint from another scene is refused, naming the checkpoint
    other = tmp_path / "other"
    downscale_scene(scene, other, 2)
    err = one_line_error(dnmp("eval", run, "--scene", other, check=False), "belongs to scene")
    assert "step_" in err


def test_bad_scene_folders_give_one_line_errors(tiny_scene, tmp_path):
    not_scene = tmp_path / "empty"
    not_scene.mkdir()
    one_line_error(dnmp("train", not_scene, "--out", tmp_path / "o1", check=False), str(not_scene))
    assert not (tmp_path / "o1").exists()

    meta = json.loads((tiny_scene / "scene.json").read_text())
    meta["version"] = 7
    (tiny_scene / "scene.json").write_text(json.dumps(meta))
    one_line_error(dnmp("train", tiny_scene, "--out", tmp_path / "o2", check=False), "scene.json", "7")
    meta["version"] = 1
    (tiny_scene / "scene.json").write_text(json.dumps(meta))

    img = tiny_scene / "images" / "000001.png"
    img.write_bytes(b"not a png at all")
    one_line_error(dnmp("train", tiny_scene, "--out", tmp_path / "o3", check=False), "000001.png")
    assert not (tmp_path / "o3").exists()
    img.unlink()
    one_line_error(dnmp("train", tiny_scene, "--out", tmp_path / "o4", check=False), "000001.png")


def test_missing_and_corrupt_checkpoints(tmp_path):
    one_line_error(dnmp("eval", tmp_path / "nope.pt", check=False), "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    one_line_error(dnmp("render", bad, check=False), "bad.pt")


def test_train_skips_geometry_without_lidar_depth(tiny_scene, tmp_path):
    cfg = tmp_path / "fast.toml"
    cfg.write_text(FAST.replace("steps = 40", "steps = 3") + "hidden = 8\nfeature_dim = 4\n")
    proc = dnmp("train", tiny_scene, "--out", tmp_path / "run", "--config", cfg, "--quiet")
    assert "skipping the geometry stage" in proc.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["step"] == 3 and "geometry" not in m
    one_line_error(dnmp("train", tiny_scene, "--out", tmp_path / "run2", "--config", cfg,
                        "--stages", "geometry", check=False), "LiDAR depth")
    one_line_error(dnmp("train", tiny_scene, "--out", tmp_path / "run3", "--stages", "colour",
                        check=False), "--stages")
    out = tmp_path / "mesh"
    one_line_error(dnmp("export-mesh", tmp_path / "run", "--out", out / "m.xyz", check=False),
                   "unsupported mesh format")


def test_moved_scene_and_existing_output_file(tiny_scene, tmp_path):
    cfg = tmp_path / "fast.toml"
    cfg.write_text(FAST.replace("steps = 40", "steps = 2") + "hidden = 8\nfeature_dim = 4\n")
    dnmp("train", tiny_scene, "--out", tmp_path / "run", "--config", cfg, "--quiet")
    moved = tmp_path / "moved"
    tiny_scene.rename(moved)
    one_line_error(dnmp("eval", tmp_path / "run", "--no-images", check=False), "--scene")
    assert dnmp("eval", tmp_path / "run", "--no-images", "--scene", moved).returncode == 0
    f = tmp_path / "afile"
    f.write_text("x")
    one_line_error(dnmp("convert", "kitti-odometry", tmp_path / "nope", "--out", f, check=False),
                   "existing file")
    assert f.read_text() == "x"
