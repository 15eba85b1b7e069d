"""Several processes (torch.distributed, gloo on CPU): blocks dealt to ranks, data-parallel
steps, and re-running after a rank died.

The torchrun tests start `python -m torch.distributed.run --standalone --nproc-per-node 2
-m dnmp train ...` on tiny synthetic scenes (tests/conftest.py); each takes 15-40 s on two
busy cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dnmp.cli import main
from dnmp.data import load_scene
from dnmp.train.blocks import BLOCK_DONE, read_manifest
from dnmp.train.checkpoint import latest_checkpoint, load_checkpoint
from dnmp.train.config import TrainConfig
from dnmp.train.distributed import (DistContext, GradientSync, assign_blocks, backend_for,
                                    env_context, rank_batch_size, rank_generator, state_checksum)
from dnmp.train.factory import build_renderer, renderer_from_checkpoint, scene_centres
from dnmp.train.pipeline import train
from dnmp.train.run import open_run

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(batch_size=512, checkpoint_every=20, log_every=5, hidden=16, feature_dim=8,
             lr_features=0.05, lr_mlp=0.01, time_budget_minutes=0)


def toml(path: Path, **values) -> Path:
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return path


def torchrun(*args, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", str(nproc), "-m", "dnmp", "train", *map(str, args),
                           "--quiet"], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def trained_blocks(text: str) -> dict[str, list[int]]:
    """block name -> ranks whose log says they started training it."""
    out: dict[str, list[int]] = {}
    for rank, name in re.findall(r"\[rank (\d+)/\d+\] \[(block_\d+) \d+/\d+\] instants", text):
        out.setdefault(name, []).append(int(rank))
    return out


# ---------------------------------------------------------------- pure functions

def test_assign_blocks_deals_each_pending_block_to_exactly_one_rank():
    names = [f"block_{i:03d}" for i in range(7)]
    for world in (1, 2, 3, 8):
        deal = assign_blocks(names, world)
        assert len(deal) == world
        dealt = [n for share in deal for n in share]
        assert sorted(dealt) == names  # every block once, none twice
        assert max(map(len, deal)) - min(map(len, deal)) <= 1
    assert assign_blocks(names, 2) == [names[0::2], names[1::2]]
    # a re-run after block_001 and block_004 finished, with another world size: only the rest
    pending = [n for n in names if n not in ("block_001", "block_004")]
    assert sorted(n for s in assign_blocks(pending, 3) for n in s) == pending
    with pytest.raises(ValueError):
        assign_blocks(names, 0)


def test_rank_batches_sum_to_the_batch_and_generators_differ_by_rank():
    for batch, world in ((512, 2), (8192, 3), (5, 4), (3, 3)):
        shares = [rank_batch_size(batch, r, world) for r in range(world)]
        assert sum(shares) == batch and max(shares) - min(shares) <= 1
    a, b = (torch.randint(0, 10**6, (64,), generator=rank_generator(0, r, 5)) for r in (0, 1))
    assert not torch.equal(a, b)
    again = torch.randint(0, 10**6, (64,), generator=rank_generator(0, 0, 5))
    assert torch.equal(a, again)  # a function of (seed, rank, step): resumes draw the same rays
    assert not torch.equal(a, torch.randint(0, 10**6, (64,), generator=rank_generator(0, 0, 6)))


def test_env_context_and_backend(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert env_context() is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_context() == DistContext(1, 3, 1)
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="RANK < WORLD_SIZE"):
        env_context()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="must be integers"):
        env_context()
    assert backend_for("cpu") == "gloo" and "cuda:nccl" in backend_for("cuda:0")


def test_bad_torchrun_environment_is_a_one_line_error(tiny_scene, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    assert main(["train", str(tiny_scene), "--out", str(tmp_path / "r"), "--stages", "radiance",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dnmp: error:") and "MASTER_ADDR" in err and len(err.splitlines()) == 1


# ------------------------------------------- gradient sync against one full batch

def _sync_worker(rank: int, world: int, init: str, scene_dir: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        scene = load_scene(scene_dir)
        cfg = TrainConfig(hidden=16, feature_dim=8, seed=3, far_shells=2, far_shell_texels=8)
        r = build_renderer(scene_centres(scene, cfg), cfg)
        p2f, bary, dirs, rgb, origins = torch.load(Path(out) / "batch.pt", weights_only=True)
        share = slice(rank * len(p2f) // world, (rank + 1) * len(p2f) // world)
        pred = r.shade_rays(p2f[share], bary[share], dirs[share], sparse_features=True,
                            ray_origins=origins[share])["rgb"]
        loss = torch.sum((pred - rgb[share]) ** 2) / rgb.numel()  # as radiance.py
        loss.backward()
        dense = list(r.field.parameters()) + list(r.background.parameters()) + list(r.far_field.parameters())
        total, flags = GradientSync(dense, r.primitives.features, DistContext(rank, world))(
            loss, [float(rank == 1), 0.0])
        torch.save({"loss": total, "flags": flags, "dense": [p.grad for p in dense],
                    "features": r.primitives.features.grad.to_dense()},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gradient_sync_equals_the_gradient_of_the_whole_batch(make_scene, tmp_path):
    """Two gloo processes, each shading half of a batch, end with the gradients (dense MLPs
    and sparse vertex features) and loss of one process shading all of it."""
    scene = load_scene(make_scene("wall", frames=3))
    cfg = TrainConfig(hidden=16, feature_dim=8, seed=3, far_shells=2, far_shell_texels=8)
    r = build_renderer(scene_centres(scene, cfg), cfg)
    f = scene.frames_by_split("train")[0]
    cam = scene.camera_of(f)
    frags = r.rasterize(cam.intrinsics(as_tensor=True), torch.from_numpy(f.world_to_cam()).float(),
                        (cam.height, cam.width))
    from dnmp.model import pixel_rays
    k = frags.pix_to_face.shape[-1]
    pick = torch.randperm(cam.width * cam.height, generator=torch.Generator().manual_seed(0))[:301]
    p2f = frags.pix_to_face.reshape(-1, k)[pick]
    bary = frags.bary_coords.reshape(-1, k, 3)[pick]
    dirs = pixel_rays(cam.intrinsics(as_tensor=True), torch.from_numpy(f.cam_to_world),
                      pick % cam.width, pick // cam.width)
    rgb = torch.rand(len(pick), 3, generator=torch.Generator().manual_seed(1))
    assert (p2f >= 0).any() and (p2f < 0).all(-1).any()  # hits and background both present
    origins = torch.from_numpy(f.cam_to_world[:3, 3]).float().expand(len(pick), 3).contiguous()
    torch.save((p2f, bary, dirs, rgb, origins), tmp_path / "batch.pt")
    pred = r.shade_rays(p2f, bary, dirs, sparse_features=True, ray_origins=origins)["rgb"]
    loss = torch.mean((pred - rgb) ** 2)
    loss.backward()
    dense = list(r.field.parameters()) + list(r.background.parameters()) + list(r.far_field.parameters())
    mp.spawn(_sync_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(scene.root), str(tmp_path)),
             nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["loss"] == pytest.approx(loss.item(), rel=1e-5)
        assert got["flags"] == [1.0, 0.0]
        for g, p in zip(got["dense"], dense):
            torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(got["features"], r.primitives.features.grad.to_dense(),
                                   rtol=1e-4, atol=1e-7)
    # both ranks hold bit-identical gradients (they take the same optimizer step)
    a, b = (torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    assert torch.equal(a["features"], b["features"])
    assert all(torch.equal(x, y) for x, y in zip(a["dense"], b["dense"]))


# ------------------------------------------------------------- torchrun, end to end

def test_torchrun_deals_blocks_once_writes_the_manifest_and_renders(make_scene, tmp_path):
    scene = make_scene("drive", frames=12, width=32, height=24)
    cfg = toml(tmp_path / "blocks.toml", steps=10, block_frames=6, block_overlap=2, **SMALL)
    out = tmp_path / "run"
    proc = torchrun(scene, "--out", out, "--config", cfg, "--stages", "radiance")
    text = proc.stdout + proc.stderr
    # 3 blocks on 2 ranks: rank 0 trains block_000 and block_002, rank 1 block_001, each once
    assert trained_blocks(text) == {"block_000": [0], "block_001": [1], "block_002": [0]}, text
    m = read_manifest(out)
    assert m["complete"] and [b["status"] for b in m["blocks"]] == ["done"] * 3
    assert [b["rank"] for b in m["blocks"]] == [0, 1, 0] and all(b["step"] == 10 for b in m["blocks"])
    for b in m["blocks"]:
        assert load_checkpoint(out / b["folder"])["step"] == 10
        assert json.loads((out / b["folder"] / BLOCK_DONE).read_text())["frames"] == b["frames"]
    summary = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summary) == 1 and json.loads(summary[0])["num_blocks"] == 3  # rank 0 prints it alone
    assert all(line.startswith("[rank ") for line in text.splitlines()
               if "block_" in line and "instants" in line)
    assert main(["render", str(out), "--split", "all", "--out", str(tmp_path / "frames"), "--quiet"]) == 0
    assert len(list((tmp_path / "frames").glob("*.png"))) == 12

    # A rank died while training block_001: its marker and step checkpoints are missing and
    # the manifest is the one written at the start (nothing complete). The same command
    # again trains block_001 alone, on whichever rank the new deal gives it.
    first = {b["name"]: latest_checkpoint(out / b["folder"] / "checkpoints") for b in m["blocks"]}
    stamps = {n: p.stat().st_mtime_ns for n, p in first.items()}
    (out / "blocks" / "block_001" / BLOCK_DONE).unlink()
    for p in (out / "blocks" / "block_001" / "checkpoints").glob("step_*.pt"):
        p.unlink()
    start = read_manifest(out)
    start.pop("complete")
    for b in start["blocks"]:
        for key in [k for k in b if k not in ("name", "folder", "first_instant", "last_instant", "frames")]:
            b.pop(key)
        b["status"] = "pending"
    (out / "manifest.json").write_text(json.dumps(start))
    with pytest.raises(ValueError, match="not trained yet"):
        open_run(out)
    again = torchrun(scene, "--out", out, "--config", cfg, "--stages", "radiance")
    text = again.stdout + again.stderr
    assert trained_blocks(text) == {"block_001": [0]}, text  # one pending block: rank 0's
    assert "--resume implied" in text
    m2 = read_manifest(out)
    assert m2["complete"] and all(b["status"] == "done" and b["step"] == 10 for b in m2["blocks"])
    for name in ("block_000", "block_002"):  # kept, not trained again
        assert first[name].stat().st_mtime_ns == stamps[name]
        assert "done earlier" in text and f"[{name}] done earlier" in text


def test_torchrun_data_parallel_matches_one_process_within_seed_noise(make_scene, tmp_path):
    """One block, 2 processes (data-parallel, 256 + 256 rays a step) against one process with
    512 rays: the loss curves differ by no more than those of two single-process seeds, and
    both ranks end with bit-identical parameters (checksums), equal to the saved model's."""
    root = make_scene("wall", frames=5)
    values = dict(steps=40, seed=0, **SMALL)
    cfg = toml(tmp_path / "dp.toml", **values)
    out = tmp_path / "dp"
    proc = torchrun(root, "--out", out, "--config", cfg, "--stages", "radiance")
    text = proc.stdout + proc.stderr
    assert "data-parallel over 2 processes: 256 of 512 rays" in text
    metrics = json.loads((out / "metrics.json").read_text())
    sums = metrics["rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    ckpt = load_checkpoint(out)
    assert ckpt["step"] == 40 and state_checksum(renderer_from_checkpoint(ckpt)) == sums[0]
    scene = load_scene(root)
    curves = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1); faster on busy cores
    try:
        for seed in (0, 1):
            res = train(scene, tmp_path / f"one{seed}", TrainConfig(**{**values, "seed": seed}),
                        stages=("radiance",), progress=False, log=lambda *a: None)
            curves[seed] = torch.tensor([v for _, v in res["loss_curve"]])
    finally:
        torch.set_num_threads(threads)
    dp = torch.tensor([v for _, v in metrics["loss_curve"]])
    assert dp.shape == curves[0].shape == (8,)
    assert dp[-1] < 0.5 * dp[0]  # it learns
    # mean relative gap of the curves; the seed-to-seed gap measured 4% (0 vs 1), the
    # 2-process gap 5% (README, "Several processes"); a broken sync (ranks diverging,
    # gradients not summed) is caught above or by tests of GradientSync
    gap = lambda a, b: float(((a - b).abs() / b).mean())
    seed_gap = gap(curves[1], curves[0])
    assert gap(dp, curves[0]) <= max(3 * seed_gap, 0.05), (gap(dp, curves[0]), seed_gap)
