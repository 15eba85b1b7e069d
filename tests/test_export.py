"""dnmp export-mesh: decoded primitives written as one mesh and read back."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest
import torch

from dnmp.data import load_scene
from dnmp.export import export_mesh, vertex_colours
from dnmp.train.config import TrainConfig
from dnmp.train.factory import build_renderer, scene_centres

from .conftest import make_tiny_scene


@pytest.fixture
def renderer(tmp_path):
    scene = load_scene(make_tiny_scene(tmp_path / "s"))
    cfg = TrainConfig(shape_decoder="template", voxel_size=0.5, coarse_voxel_size=1.0,
                      hidden=8, feature_dim=4)
    r = build_renderer(scene_centres(scene, cfg), cfg)
    with torch.no_grad():
        r.primitives.offsets.normal_(0, 0.05)
    return r


def test_export_round_trip(renderer, tmp_path):
    prims = renderer.primitives
    info = export_mesh(renderer, tmp_path / "m.ply", colour=True)
    mesh = o3d.io.read_triangle_mesh(str(tmp_path / "m.ply"))
    v = np.asarray(mesh.vertices)
    f = np.asarray(mesh.triangles)
    assert info["primitives"] == prims.num_primitives
    assert v.shape == (prims.num_primitives * 42, 3) and f.shape == (prims.num_faces, 3)
    np.testing.assert_allclose(v, prims.vertices().detach().double().numpy(), atol=1e-5)
    np.testing.assert_array_equal(f, prims.faces.numpy())
    c = np.asarray(mesh.vertex_colors)
    assert c.shape == v.shape and c.min() >= 0 and c.max() <= 1
    # the colours are the field's RGB averaged over view directions, for the same vertex normals
    mesh.compute_vertex_normals()
    n = torch.from_numpy(np.asarray(mesh.vertex_normals)).float()
    expect = vertex_colours(renderer.field, prims.features.detach()[:50], n[:50]).numpy()
    np.testing.assert_allclose(c[:50], expect, atol=2e-3)  # PLY stores colours as uint8


def test_export_one_scale_and_errors(renderer, tmp_path):
    prims = renderer.primitives
    fine, coarse = prims.scale_counts.tolist()
    info = export_mesh(renderer, tmp_path / "c.off", scales=[1])
    assert info["primitives"] == coarse and info["faces"] == coarse * 80
    v = np.asarray(o3d.io.read_triangle_mesh(str(tmp_path / "c.off")).vertices)
    np.testing.assert_allclose(v, prims.decode(torch.arange(fine, fine + coarse)).detach().reshape(-1, 3),
                               atol=1e-4)
    with pytest.raises(ValueError, match="unsupported mesh format"):
        export_mesh(renderer, tmp_path / "m.xyz")
    with pytest.raises(ValueError, match="do not exist"):
        export_mesh(renderer, tmp_path / "m.ply", scales=[2])
    assert not list(tmp_path.glob(".*tmp*"))


def test_glb_export_reads_back_in_open3d(renderer, tmp_path):
    prims = renderer.primitives
    info = export_mesh(renderer, tmp_path / "m.glb", colour=True)
    mesh = o3d.io.read_triangle_mesh(str(tmp_path / "m.glb"))
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    assert v.shape == (info["vertices"], 3) == (prims.num_primitives * 42, 3)
    assert f.shape == (info["faces"], 3) == (prims.num_faces, 3)
    # the reader may reorder vertices: compare the triangles' corner coordinates as sets
    ref_v = prims.vertices().detach().double().numpy()
    corners = lambda verts, tris: np.sort(np.round(verts[tris].reshape(len(tris), 9), 4), axis=0)
    np.testing.assert_allclose(corners(v, f), corners(ref_v, prims.faces.numpy()), atol=2e-4)
    assert mesh.has_vertex_colors() and np.asarray(mesh.vertex_colors).max() <= 1
