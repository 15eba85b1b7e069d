"""The geometry stage draws its windows from a bounded pool of frames that cycles
through the drive, so its memory and refresh time do not grow with the frames."""

import torch

from dnmp.data import load_scene
from dnmp.train.config import TrainConfig
from dnmp.train.geometry import GeometryFitter
from dnmp.train.factory import build_renderer, scene_centres

from ..conftest import make_tiny_scene

CFG = dict(hidden=16, feature_dim=4, geometry_window=16, geometry_windows=4)


def test_pool_is_bounded_and_cycles_through_every_frame(tmp_path):
    scene = load_scene(make_tiny_scene(tmp_path / "s", frames=7, depth=True))
    cfg = TrainConfig(geometry_pool_frames=2, **CFG)
    fitter = GeometryFitter(build_renderer(scene_centres(scene, cfg), cfg), scene, cfg)
    train = scene.frames_by_split("train")
    assert len(fitter.frames) == len(train) == 6 and fitter.pool_size == 2
    seen = []
    for _ in range(3):
        fitter.refresh()
        assert len(fitter.data) == 2
        assert all(len(per_frame) == 2 and all(v.dtype == torch.int32 for v in per_frame)
                   for per_frame in fitter.visible)
        seen += [d.frame.name for d in fitter.data]
        assert fitter.step() is not None
    assert sorted(seen) == sorted(f.name for f in train)  # each frame once per cycle
    # a drive that fits is pooled whole, in the scene's order
    whole = GeometryFitter(build_renderer(scene_centres(scene, TrainConfig(**CFG)), TrainConfig(**CFG)),
                           scene, TrainConfig(**CFG))
    whole.refresh()
    assert [d.frame.name for d in whole.data] == [f.name for f in train]
