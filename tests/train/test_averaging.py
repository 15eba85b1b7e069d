"""Tail averaging of the radiance parameters: the mean it keeps, its checkpoint state, and a
run's saved model against the mean of the raw parameters of a run without it."""

import shutil

import pytest
import torch

from dnmp.data import load_scene
from dnmp.train import CheckpointError, load_checkpoint
from dnmp.train.averaging import ParameterAverage
from dnmp.train.config import TrainConfig
from dnmp.train.radiance import train_radiance

FAST = dict(batch_size=256, log_every=2, lr_features=0.05, lr_mlp=0.01, hidden=16, feature_dim=4,
            time_budget_minutes=0, far_shells=1, far_shell_texels=4)


def _trajectory(params, steps, average):
    """Sets each parameter to a value of the step and updates the average; returns the values."""
    seen = []
    for step in range(1, steps + 1):
        with torch.no_grad():
            for i, p in enumerate(params.values()):
                p.copy_(torch.randn_like(p) + step * (i + 1))
        seen.append({n: p.detach().clone() for n, p in params.items()})
        average.update(step)
    return seen


def test_mean_of_the_sampled_steps_only():
    torch.manual_seed(0)
    params = {"a": torch.nn.Parameter(torch.zeros(5, 3)), "b": torch.nn.Parameter(torch.zeros(7))}
    avg = ParameterAverage(params, start=3, every=2)
    assert avg.state_dict() is None  # before a sample: nothing to resume, the live values
    assert torch.equal(avg.averaged()["a"], params["a"].detach())
    seen = _trajectory(params, 10, avg)
    assert avg.count == 3 and avg.first == 5  # steps 5, 7, 9
    for n in params:
        want = torch.stack([seen[s - 1][n] for s in (5, 7, 9)]).mean(0)
        torch.testing.assert_close(avg.averaged()[n], want, rtol=1e-6, atol=1e-6)
        assert torch.equal(params[n].detach(), seen[-1][n])  # the live parameters stay raw
    avg.apply()
    torch.testing.assert_close(params["b"].detach(), torch.stack([seen[s - 1]["b"] for s in (5, 7, 9)]).mean(0))


def test_state_resumes_the_same_average():
    torch.manual_seed(1)
    make = lambda: {"w": torch.nn.Parameter(torch.zeros(4, 4))}  # noqa: E731
    straight_p = make()
    straight = ParameterAverage(straight_p, start=2, every=1)
    seen = _trajectory(straight_p, 8, straight)
    # the same run stopped after step 5: a checkpoint holds model = mean, plus the state
    part_p = make()
    part = ParameterAverage(part_p, start=2, every=1)
    with torch.no_grad():
        for step in range(1, 6):
            part_p["w"].copy_(seen[step - 1]["w"])
            part.update(step)
    model, state = part.averaged()["w"].clone(), part.state_dict()
    state = {**state, "raw": {n: t.clone() for n, t in state["raw"].items()}}  # as a save would keep them
    assert torch.equal(state["raw"]["w"], seen[4]["w"])
    # resume: the parameters hold the saved model; load_state_dict puts the raw ones back
    res_p = {"w": torch.nn.Parameter(model.clone())}
    res = ParameterAverage(res_p, start=0, every=7)  # the saved start / every win
    res.load_state_dict(state)
    assert torch.equal(res_p["w"].detach(), seen[4]["w"]) and (res.start, res.every, res.count) == (2, 1, 3)
    with torch.no_grad():
        for step in range(6, 9):
            res_p["w"].copy_(seen[step - 1]["w"])
            res.update(step)
    torch.testing.assert_close(res.averaged()["w"], straight.averaged()["w"], rtol=1e-6, atol=1e-6)
    assert res.first == straight.first == 3


def test_bad_arguments_and_states():
    p = {"w": torch.nn.Parameter(torch.zeros(3))}
    with pytest.raises(ValueError, match="every >= 1"):
        ParameterAverage(p, start=0, every=0)
    avg = ParameterAverage(p, start=0, every=1)
    avg.load_state_dict(None)  # a checkpoint from before the first sample: nothing to do
    assert avg.count == 0
    good = {"count": 2, "start": 4, "every": 3, "first": 7, "raw": {"w": torch.ones(3)}}
    bad = [({"raw": {"v": torch.zeros(3)}}, "does not match"), ({"raw": {"w": torch.zeros(4)}}, "shape"),
           ({"raw": {"w": "hello"}}, "does not match"), ({"raw": {"w": torch.zeros(3, dtype=torch.int64)}}, "float32"),
           ({"raw": []}, "does not match"), ({"every": 0}, "describe samples"), ({"count": 0}, "describe samples"),
           ({"count": -1}, "describe samples"), ({"first": 8}, "describe samples"), ({"first": 4}, "describe samples"),
           ({"count": 2.7}, "integers"), ({"start": "abc"}, "integers"), ({"every": True}, "integers")]
    for change, match in bad:
        with pytest.raises(ValueError, match=match):
            avg.load_state_dict({**good, **change})
        assert avg.count == 0 and torch.equal(p["w"].detach(), torch.zeros(3))  # nothing changed
    with pytest.raises(ValueError, match="not a dict"):
        avg.load_state_dict("x")
    avg.load_state_dict(good)
    assert (avg.count, avg.start, avg.every, avg.first) == (2, 4, 3, 7) and torch.equal(p["w"].detach(), torch.ones(3))
    with pytest.raises(ValueError, match=r"average_from must be in \[0, 1\], got 1.5"):
        TrainConfig(average_from=1.5).validate()
    with pytest.raises(ValueError, match="average_every must be >= 1, got 0"):
        TrainConfig(average_every=0).validate()


def _stepped(state):
    return {k: v for k, v in state.items() if k.startswith(("primitives.features", "field.", "background.",
                                                             "far_field.texels"))}


def test_run_saves_the_mean_of_its_raw_parameters_and_resumes_it(tiny_scene, tmp_path):
    """A run with averaging takes the same raw steps as one without; its saved model is the
    mean of the raw parameters after steps 5 to 8 (start 4 of 8 steps, every step), and the
    run resumed from its step-6 checkpoint ends with the same model."""
    scene = load_scene(tiny_scene)
    quiet = dict(progress=False, log=lambda *a: None)
    plain = tmp_path / "plain"
    train_radiance(scene, plain, TrainConfig(steps=8, checkpoint_every=1, keep_checkpoints=4,
                                             average_from=1.0, **FAST), **quiet)
    raw = {s: _stepped(load_checkpoint(plain / "checkpoints" / f"step_{s:07d}.pt")["model"]) for s in range(5, 9)}
    assert load_checkpoint(plain)["parameter_average"] is None
    cfg = dict(steps=8, checkpoint_every=2, keep_checkpoints=4, average_from=0.5, average_every=1, **FAST)
    avg_run = tmp_path / "avg"
    res = train_radiance(scene, avg_run, TrainConfig(**cfg), **quiet)
    assert res["parameter_average_samples"] == 4
    ck = load_checkpoint(avg_run)
    assert ck["parameter_average"]["count"] == 4
    model = _stepped(ck["model"])
    assert set(model) == set(raw[8]) and set(ck["parameter_average"]["raw"]) == set(raw[8])
    for k in raw[8]:
        torch.testing.assert_close(ck["parameter_average"]["raw"][k], raw[8][k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model[k], sum(raw[s][k] for s in range(5, 9)) / 4, rtol=1e-5, atol=1e-6)
    # step 4's checkpoint precedes the first sample: raw parameters, no average state
    early = load_checkpoint(avg_run / "checkpoints" / "step_0000004.pt")
    assert early["parameter_average"] is None
    # the run stopped after step 6 (its step-8 checkpoint removed), resumed: the same model
    part = tmp_path / "part"
    shutil.copytree(avg_run, part)
    (part / "checkpoints" / "step_0000008.pt").unlink()
    assert load_checkpoint(part)["parameter_average"]["count"] == 2
    train_radiance(scene, part, None, resume=True, **quiet)
    resumed = load_checkpoint(part)
    assert resumed["step"] == 8 and resumed["parameter_average"]["count"] == 4
    for k, v in _stepped(resumed["model"]).items():
        torch.testing.assert_close(v, model[k], rtol=1e-5, atol=1e-6)


def test_no_sample_is_said_and_resume_below_the_step_is_refused(tiny_scene, tmp_path):
    scene = load_scene(tiny_scene)
    said = []
    out = tmp_path / "run"
    res = train_radiance(scene, out, TrainConfig(steps=4, checkpoint_every=4, average_from=0.5, average_every=5,
                                                 **FAST), progress=False, log=said.append)
    assert res["parameter_average_samples"] == 0
    assert any("no parameter sample was taken" in line for line in said), said
    with pytest.raises(ValueError, match="at step 4, past --steps 3"):
        train_radiance(scene, out, None, resume=True, steps=3, progress=False, log=said.append)


def test_corrupt_average_state_is_a_checkpoint_error(tiny_scene, tmp_path):
    scene = load_scene(tiny_scene)
    quiet = dict(progress=False, log=lambda *a: None)
    out = tmp_path / "run"
    train_radiance(scene, out, TrainConfig(steps=4, checkpoint_every=4, average_from=0.5, average_every=1,
                                           **FAST), **quiet)
    path = out / "checkpoints" / "step_0000004.pt"
    ck = torch.load(path, weights_only=True)
    ck["parameter_average"]["raw"].pop("primitives.features")
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match="parameter average"):
        train_radiance(scene, out, None, resume=True, steps=6, **quiet)
