"""scene.json mistakes that used to give misleading errors: a non-numeric world_offset,
a misspelled point_clouds key."""

from __future__ import annotations

import json

import pytest

from dnmp.data import load_scene
from dnmp.data.scene import SceneError
from dnmp.train.config import TrainConfig
from dnmp.train.factory import scene_centres


def _edit(scene, **changes):
    meta = json.loads((scene / "scene.json").read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    (scene / "scene.json").write_text(json.dumps(meta))
    return meta


def test_non_numeric_world_offset_names_the_file(tiny_scene):
    for bad in ("abc", ["a", 1, 2], [1, 2], {"x": 1}):
        _edit(tiny_scene, world_offset=bad)
        with pytest.raises(SceneError, match=r"scene\.json: world_offset must be 3 finite numbers") as e:
            load_scene(tiny_scene)
        assert str(e.value).startswith(str(tiny_scene / "scene.json"))


def test_misspelled_point_clouds_key(tiny_scene):
    meta = json.loads((tiny_scene / "scene.json").read_text())
    _edit(tiny_scene, point_clouds=None, point_cloud=meta["point_clouds"])
    with pytest.raises(SceneError, match=r"scene\.json: unknown key 'point_cloud'; did you mean 'point_clouds'\?"):
        load_scene(tiny_scene)
    _edit(tiny_scene, point_cloud=None, notes="extra keys that resemble nothing are allowed")
    scene = load_scene(tiny_scene)
    with pytest.raises(ValueError, match=r"scene\.json: lists no point_clouds"):
        scene_centres(scene, TrainConfig())
