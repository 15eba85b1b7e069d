"""Radiance stage on the tiny synthetic scene: it learns, resumes, survives Ctrl-C."""

import json

import pytest
import torch

from dnmp.data import load_scene
from dnmp.train import CheckpointError, load_checkpoint
from dnmp.train.config import TrainConfig
from dnmp.train.radiance import train_radiance

FAST = dict(batch_size=512, checkpoint_every=10, log_every=5, lr_features=0.05, lr_mlp=0.01,
            hidden=32, feature_dim=8, time_budget_minutes=0)


def test_training_fits_the_scene_and_writes_outputs(tiny_scene, tmp_path):
    scene = load_scene(tiny_scene)
    out = tmp_path / "run"
    res0 = train_radiance(scene, tmp_path / "run0", TrainConfig(steps=0, **FAST), progress=False,
                          log=lambda *a: None)
    res = train_radiance(scene, out, TrainConfig(steps=150, **FAST), progress=False,
                         log=lambda *a: None)
    # 150 steps must beat the untrained model on the held-out frame by a wide margin
    assert res["test_psnr"] > res0["test_psnr"] + 5.0
    assert res["test_psnr"] > 18.0
    assert 0 < res["test_ssim"] <= 1
    m = json.loads((out / "metrics.json").read_text())
    assert set(["test_psnr", "test_ssim", "test_lpips", "num_test_frames"]) <= set(m)
    assert m["num_test_frames"] == 1
    assert (out / "renders" / "test" / "000002_pred.png").is_file()
    assert (out / "renders" / "test" / "000002_gt.png").is_file()
    assert load_checkpoint(out)["step"] == 150


def test_resume_continues_and_refuses_fresh_overwrite(tiny_scene, tmp_path):
    scene = load_scene(tiny_scene)
    out = tmp_path / "run"
    train_radiance(scene, out, TrainConfig(steps=20, **FAST), progress=False, log=lambda *a: None)
    with pytest.raises(FileExistsError, match="--resume"):
        train_radiance(scene, out, TrainConfig(steps=20, **FAST), progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match="drop --config"):
        train_radiance(scene, out, TrainConfig(), resume=True, progress=False, log=lambda *a: None)
    # extend the run: resume keeps the checkpoint's settings, only steps may change
    res = train_radiance(scene, out, None, resume=True, steps=30, progress=False, log=lambda *a: None)
    assert res["step"] == 30
    assert load_checkpoint(out)["config"]["steps"] == 30


def test_ctrl_c_keeps_last_checkpoint_and_resume_works(tiny_scene, tmp_path, monkeypatch):
    from dnmp.model import DNMPRenderer

    scene = load_scene(tiny_scene)
    out = tmp_path / "run"
    calls = {"n": 0}
    real_shade = DNMPRenderer.shade_rays

    def flaky(self, *a, **k):
        if k.get("sparse_features"):
            calls["n"] += 1
            if calls["n"] == 15:
                raise KeyboardInterrupt
        return real_shade(self, *a, **k)

    monkeypatch.setattr(DNMPRenderer, "shade_rays", flaky)
    with pytest.raises(SystemExit) as exc:
        train_radiance(scene, out, TrainConfig(steps=40, **FAST), progress=False, log=lambda *a: None)
    assert exc.value.code == 130
    # interrupted while shading step 15: the state after 14 complete steps is saved
    assert load_checkpoint(out)["step"] == 14
    monkeypatch.undo()
    res = train_radiance(scene, out, None, resume=True, progress=False, log=lambda *a: None)
    assert res["step"] == 40


def test_resume_refuses_checkpoint_of_another_scene(tiny_scene, make_scene, tmp_path):
    scene = load_scene(tiny_scene)
    out = tmp_path / "run"
    train_radiance(scene, out, TrainConfig(steps=10, **FAST), progress=False, log=lambda *a: None)
    other = load_scene(make_scene("other", width=32, height=24))
    with pytest.raises(CheckpointError, match="belongs to scene"):
        train_radiance(other, out, None, resume=True, progress=False, log=lambda *a: None)


def test_learning_rate_decay_follows_steps_only():
    from dnmp.train.radiance import _set_lr

    cfg = TrainConfig(steps=100, lr_features=1.0, lr_mlp=0.5, lr_final_factor=0.01)
    p = torch.nn.Parameter(torch.zeros(2))
    opts = {"features": torch.optim.SGD([p], lr=1.0), "mlp": torch.optim.SGD([p], lr=1.0)}
    lr = lambda: (opts["features"].param_groups[0]["lr"], opts["mlp"].param_groups[0]["lr"])
    _set_lr(opts, cfg, 0)
    assert lr() == pytest.approx((1.0, 0.5))
    _set_lr(opts, cfg, 50)
    assert lr() == pytest.approx((0.1, 0.05))  # 0.01 ** 0.5
    _set_lr(opts, cfg, 100)
    assert lr() == pytest.approx((0.01, 0.005))
    _set_lr(opts, cfg, 150)  # --resume --steps may shorten a run past its step: stays at the end
    assert lr() == pytest.approx((0.01, 0.005))
    with pytest.raises(TypeError):  # no clock input: the decay cannot depend on machine load
        _set_lr(opts, cfg, 10, time_fraction=1.0)


def test_far_field_trains_saves_resumes_and_old_checkpoints_load_without_it(tiny_scene, tmp_path):
    from dnmp.train.checkpoint import write_checkpoint_file
    from dnmp.train.run import open_run

    scene = load_scene(tiny_scene)
    out = tmp_path / "far"
    cfg = TrainConfig(steps=20, far_shells=2, far_shell_texels=8, **FAST)
    train_radiance(scene, out, cfg, progress=False, log=lambda *a: None)
    ckpt = load_checkpoint(out)
    texels = ckpt["model"]["far_field.texels"]
    assert texels.shape == (2 * 6 * 8 * 8, 4)
    assert torch.isfinite(texels).all() and "far_field" in ckpt["optimizer"]
    # (the wall fills every view: that the texels learn is checked in tests/model/test_far_field.py)
    res = train_radiance(scene, out, None, resume=True, steps=25, progress=False, log=lambda *a: None)
    assert res["step"] == 25 and load_checkpoint(out)["config"]["far_shells"] == 2
    # a checkpoint written before the far field existed: no setting, no state, no optimizer
    old = dict(load_checkpoint(out))
    old["config"] = {k: v for k, v in old["config"].items() if not k.startswith(("far_", "lr_far", "average_"))}
    old.pop("parameter_average")  # nor the parameter average of later versions
    old["model"] = {k: v for k, v in old["model"].items() if not k.startswith("far_field.")}
    old["optimizer"] = {k: v for k, v in old["optimizer"].items() if k != "far_field"}
    old.pop("path")
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    write_checkpoint_file(tmp_path / "old" / "checkpoints" / "step_0000025.pt", 25,
                          {k: v for k, v in old.items() if k not in ("format", "version", "step")})
    run = open_run(tmp_path / "old")
    assert run.renderer.far_field is None  # renders with the sky alone, as it was trained
    assert load_checkpoint(tmp_path / "old")["config"]["far_shells"] == 0
    assert load_checkpoint(tmp_path / "old")["config"]["average_from"] == 1.0  # nor averaged
    res = train_radiance(scene, tmp_path / "old", None, resume=True, steps=30, progress=False,
                         log=lambda *a: None)
    assert res["step"] == 30
