"""dnmp profile: the stage breakdown of a render and of a training step comes from the
named ranges of the code that runs them, and the fused / reference renders are compared."""

import pytest
import torch

from dnmp.data.scene import load_scene
from dnmp.ops import backend
from dnmp.profile import RENDER_STAGES, TRAIN_STAGES, profile_renderer, profile_training, stage_times
from dnmp.train.config import TrainConfig
from dnmp.train.factory import build_renderer, scene_centres


def _setup(tiny_scene):
    scene = load_scene(tiny_scene)
    cfg = TrainConfig(voxel_size=0.5, batch_size=256, feature_dim=8, hidden=16)
    torch.manual_seed(0)
    return scene, cfg, build_renderer(scene_centres(scene, cfg), cfg)


def test_render_breakdown_names_the_stages_and_sums_to_the_wall_time(tiny_scene):
    scene, cfg, r = _setup(tiny_scene)
    frame = scene.frames_by_split("test")[0]
    cam = scene.camera_of(frame)
    res = profile_renderer(r, cam.intrinsics(as_tensor=True), torch.from_numpy(frame.cam_to_world),
                           cam.height, cam.width, repeats=2, memory=False, breakdown=True)
    b = res["render_breakdown_ms"]
    assert set(b) <= set(RENDER_STAGES) | {"total", "other"}
    bg = "shade.background_fused" if backend() == "cpp" else "shade.background"
    assert b["render.rasterize.scale0"] > 0 and b[bg] > 0
    parts = sum(v for k, v in b.items() if k != "total")
    assert parts == pytest.approx(b["total"], rel=1e-6) or b["other"] == 0.0
    assert res["device"] == "cpu" and res["render_ms_per_kpx"] > 0
    if backend() == "cpp":  # fused shading timed against its torch reference, same image
        assert res["shading"] == "fused" and b["shade.fused"] > 0 and "shade.mlp_trunk" not in b
        ref = res["render_reference_breakdown_ms"]
        assert ref["shade.mlp_trunk"] > 0 and ref["shade.encoding"] > 0 and "shade.fused" not in ref
        assert ref["shade.background"] > 0 and "shade.background_fused" not in ref
        assert res["render_reference_ms_per_kpx"] > 0 and res["fused_vs_reference_psnr_db"] > 60


def test_training_breakdown_runs_the_loops_step_on_a_copy(tiny_scene):
    scene, cfg, r = _setup(tiny_scene)
    before = {k: v.clone() for k, v in r.state_dict().items()}
    rng = torch.get_rng_state()
    res = profile_training(r, scene, cfg, repeats=2, warmup=1, breakdown=True)
    b = res["train_breakdown_ms"]
    for stage in ("train.batch", "shade.feature_lookup", "shade.mlp_trunk", "train.backward", "train.optimizer"):
        assert b[stage] > 0, stage
    assert set(b) <= set(TRAIN_STAGES) | {"total", "other"}
    assert res["train_steps_per_s"] == pytest.approx(1e3 / res["train_step_ms"])
    assert res["train_batch_size"] == 256
    for k, v in r.state_dict().items():  # the model passed in is not trained
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.get_rng_state(), rng)


def test_stage_times_of_nothing_named_is_all_other():
    out = stage_times(lambda: torch.ones(10).sum(), ("shade.encoding",), repeats=2)
    assert "shade.encoding" not in out and out["other"] == pytest.approx(out["total"])
