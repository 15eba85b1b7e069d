"""Interrupts and reproducibility of `dnmp train`: SIGINT/SIGTERM save the step they land
on, a second signal aborts, --resume after a stop before the first step checkpoint
starts from geometry.pt, the geometry stage exits cleanly, an explicit time limit is
reported, train_seconds adds up over resumed runs, one thread is bit-reproducible."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from dnmp.cli import main
from dnmp.data import load_scene
from dnmp.model import DNMPRenderer
from dnmp.train import load_checkpoint
from dnmp.train.checkpoint import GEOMETRY_NAME
from dnmp.train.config import TrainConfig
from dnmp.train.geometry import GeometryFitter
from dnmp.train.pipeline import train
from dnmp.train.radiance import train_radiance

FAST = dict(batch_size=256, checkpoint_every=10, log_every=5, hidden=16, feature_dim=8,
            geometry_steps=6, geometry_window=16, geometry_windows=4)


def _signal_on_step(monkeypatch, step: int, *signums):
    """Send `signums` to this process while the radiance loop computes step `step`
    (1-based: its forward pass)."""
    real = DNMPRenderer.shade_rays
    calls = {"n": 0}

    def shade_rays(self, *a, **k):
        if k.get("sparse_features"):
            calls["n"] += 1
            if calls["n"] == step:
                for s in signums:
                    os.kill(os.getpid(), s)
        return real(self, *a, **k)

    monkeypatch.setattr(DNMPRenderer, "shade_rays", shade_rays)


def _assert_identical(x, y, where):
    if isinstance(x, torch.Tensor):
        assert torch.equal(x, y), where
    elif isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for k in x:
            _assert_identical(x[k], y[k], f"{where}/{k}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            _assert_identical(u, v, f"{where}[{i}]")
    else:
        assert x == y, where


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_the_step_it_landed_on(tiny_scene, tmp_path, monkeypatch, signum):
    scene = load_scene(tiny_scene)
    out, lines = tmp_path / "run", []
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started as a background job
    _signal_on_step(monkeypatch, 15, signum)
    with pytest.raises(SystemExit) as exc:
        train_radiance(scene, out, TrainConfig(steps=40, **FAST), progress=False, log=lines.append)
    assert exc.value.code == 128 + signum
    name = signal.Signals(signum).name
    assert any(ln.startswith(f"stopped by {name} at step 15; saved ") for ln in lines), lines
    assert load_checkpoint(out)["step"] == 15  # step 15 completed, then saved (not 10)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    monkeypatch.undo()
    res = train_radiance(scene, out, None, resume=True, progress=False, log=lines.append)
    assert res["step"] == 40 and "resuming from" in "\n".join(lines)


def test_second_signal_aborts_at_once(tiny_scene, tmp_path, monkeypatch):
    scene = load_scene(tiny_scene)
    out, lines = tmp_path / "run", []
    _signal_on_step(monkeypatch, 15, signal.SIGINT, signal.SIGINT)
    with pytest.raises(SystemExit) as exc:
        train_radiance(scene, out, TrainConfig(steps=40, **FAST), progress=False, log=lines.append)
    assert exc.value.code == 130
    assert any("aborted by a second SIGINT at step 14" in ln for ln in lines), lines
    assert load_checkpoint(out)["step"] == 10  # nothing saved after the abort
    assert not list((out / "checkpoints").glob(".tmp_*"))


def test_second_signal_during_a_save_aborts_that_save(tiny_scene, tmp_path, monkeypatch,
                                                      hook_checkpoint_writes):
    # torch.save turns an exception raised inside its writes into RuntimeError "unexpected
    # pos": the abort must not be reported as a failed write
    scene = load_scene(tiny_scene)
    out, lines = tmp_path / "run", []
    _signal_on_step(monkeypatch, 15, signal.SIGINT)  # first: stop after step 15 and save it

    def second_signal(save, write, nbytes):
        if save == 2 and write == 3:  # inside the save of step 15 (step 10's was the first)
            os.kill(os.getpid(), signal.SIGINT)

    hook_checkpoint_writes(second_signal)
    with pytest.raises(SystemExit) as exc:
        train_radiance(scene, out, TrainConfig(steps=40, **FAST), progress=False, log=lines.append)
    assert exc.value.code == 130
    text = "\n".join(lines)
    assert "aborted by a second SIGINT while saving step 15" in text, lines
    assert "cannot write" not in text and "unexpected pos" not in text
    assert load_checkpoint(out)["step"] == 10  # the abandoned save left the previous one
    assert not list((out / "checkpoints").glob(".tmp_*"))


def test_resume_before_the_first_step_checkpoint_starts_from_geometry(make_scene, tmp_path):
    scene = load_scene(make_scene("d", depth=True))
    out, lines = tmp_path / "run", []
    cfg = TrainConfig(steps=12, **FAST)
    train(scene, out, cfg, stages=("geometry",), progress=False, log=lines.append)
    ckpts = out / "checkpoints"
    assert [p.name for p in ckpts.iterdir()] == [GEOMETRY_NAME]
    (ckpts / ".tmp_killed.pt").write_bytes(b"\0" * 100)  # a save killed by SIGKILL
    res = train(scene, out, None, resume=True, progress=False, log=lines.append)
    assert f"removed .tmp_killed.pt, left by a save that was killed" in lines
    assert any("starting the radiance stage from geometry.pt" in ln for ln in lines), lines
    assert res["step"] == 12 and not list(ckpts.glob(".tmp_*"))
    geo, last = load_checkpoint(ckpts / GEOMETRY_NAME), load_checkpoint(out)
    assert torch.equal(geo["model"]["primitives.latents"], last["model"]["primitives.latents"])
    assert "geometry" in res  # the geometry stage's figures are carried over


def test_signal_in_the_geometry_stage_exits_cleanly(make_scene, tmp_path, monkeypatch, capsys):
    scene = make_scene("d", depth=True)
    cfg = tmp_path / "c.toml"
    cfg.write_text("steps = 5\nbatch_size = 64\nhidden = 8\nfeature_dim = 4\ngeometry_steps = 6\n"
                   "geometry_window = 16\ngeometry_windows = 2\n")
    real, calls = GeometryFitter.step, {"n": 0}

    def step(self):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self)

    monkeypatch.setattr(GeometryFitter, "step", step)
    run = tmp_path / "run"
    rc = main(["train", str(scene), "--out", str(run), "--config", str(cfg), "--quiet"])
    io = capsys.readouterr()
    assert rc == 143 and io.err.strip().splitlines()[-1] == "dnmp: interrupted by SIGTERM"
    assert "the geometry stage was interrupted; it saves geometry.pt only when it completes" in io.out
    assert not (run / "checkpoints").exists() or not list((run / "checkpoints").iterdir())


def test_defaults_are_steps_not_wall_time():
    cfg = TrainConfig()
    assert cfg.time_budget_minutes == 0 and cfg.steps == 3000


def test_explicit_time_limit_is_reported_on_its_own_line_and_in_metrics(tiny_scene, tmp_path):
    scene = load_scene(tiny_scene)
    lines = []
    res = train_radiance(scene, tmp_path / "run", TrainConfig(steps=30, time_budget_minutes=1e-12, **FAST),
                         progress=False, log=lines.append)
    assert "stopped by the time limit (time_budget_minutes = 1e-12) at step 0 of 30" in lines
    assert res["stopped_by_time_limit"] is True and res["step"] == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stopped_by_time_limit"] is True
    res = train_radiance(scene, tmp_path / "run2", TrainConfig(steps=3, **FAST), progress=False,
                         log=lines.append)
    assert res["stopped_by_time_limit"] is False and res["step"] == 3


def test_train_seconds_add_up_over_resumed_runs(tiny_scene, tmp_path):
    scene = load_scene(tiny_scene)
    out = tmp_path / "run"
    train_radiance(scene, out, TrainConfig(steps=10, **FAST), progress=False, log=lambda *a: None)
    path = out / "checkpoints" / "step_0000010.pt"
    ck = torch.load(path, weights_only=True)
    assert 0 < ck["train_seconds"] < 1000
    ck["train_seconds"] = 1000.0  # as if the first run had taken 1000 s
    torch.save(ck, path)
    res = train_radiance(scene, out, None, resume=True, steps=20, progress=False, log=lambda *a: None)
    assert 1000.0 <= res["train_seconds"] < 2000.0
    assert 1000.0 <= load_checkpoint(out)["train_seconds"] < 2000.0
    assert json.loads((out / "metrics.json").read_text())["train_seconds"] == res["train_seconds"]


def test_two_runs_at_one_thread_are_bit_identical(make_scene, tmp_path):
    scene = load_scene(make_scene("d", depth=True))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = [train(scene, tmp_path / f"run{i}", TrainConfig(steps=25, **FAST), progress=False,
                         log=lambda *a: None) for i in range(2)]
    finally:
        torch.set_num_threads(threads)
    a, b = (load_checkpoint(tmp_path / f"run{i}") for i in range(2))
    assert a["step"] == b["step"] == 25
    for part in ("model", "optimizer", "rng", "config"):
        _assert_identical(a[part], b[part], part)
    timing = {"train_seconds", "time_to_first_step_s", "geometry"}
    assert {k: v for k, v in results[0].items() if k not in timing} == \
        {k: v for k, v in results[1].items() if k not in timing}
    ga, gb = results[0]["geometry"], results[1]["geometry"]
    assert ga["loss_depth_l1_m"] == gb["loss_depth_l1_m"] and ga["test_depth_optimized"] == gb["test_depth_optimized"]
