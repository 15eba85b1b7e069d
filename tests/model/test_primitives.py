"""Primitives: template mesh, voxelization, latent -> vertices path, compositing."""

import math

import pytest
import torch

from dnmp.model import Primitives, ico_sphere, voxelize
from dnmp.model.renderer import camera_rays, composite


def test_ico_sphere_level1_is_a_closed_outward_mesh():
    v, f = ico_sphere(1)
    assert v.shape == (42, 3) and f.shape == (80, 3)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(42))
    edges = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    und = torch.sort(edges, dim=1).values
    uniq, counts = torch.unique(und, dim=0, return_counts=True)
    assert (counts == 2).all()  # closed 2-manifold
    assert 42 - uniq.shape[0] + 80 == 2  # Euler characteristic of a sphere
    n = torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=1)
    assert ((n * v[f].mean(1)).sum(1) > 0).all()  # counter-clockwise seen from outside
    # every directed edge appears once: consistent orientation
    assert torch.unique(edges, dim=0).shape[0] == 240


def test_ico_sphere_levels_and_error():
    assert ico_sphere(0)[0].shape == (12, 3)
    assert ico_sphere(2)[1].shape == (320, 3)
    with pytest.raises(ValueError, match="level"):
        ico_sphere(-1)


def test_voxelize_known_points():
    pts = torch.tensor([[0.1, 0.1, 0.1], [0.2, 0.4, 0.3], [0.6, 0.1, 0.1], [-0.1, 0.0, 0.0],
                        [float("nan"), 0, 0]])
    c = voxelize(pts, 0.5)
    expected = torch.tensor([[-0.25, 0.25, 0.25], [0.25, 0.25, 0.25], [0.75, 0.25, 0.25]])
    torch.testing.assert_close(c, expected)


def test_voxelize_errors():
    with pytest.raises(ValueError, match="no finite point"):
        voxelize(torch.zeros(0, 3), 0.5)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        voxelize(torch.zeros(4, 2), 0.5)
    with pytest.raises(ValueError, match="voxel_size"):
        voxelize(torch.zeros(4, 3), 0.0)


def test_untrained_decoder_returns_template_and_latent_path_is_live():
    centres = torch.tensor([[0.0, 0.0, 5.0], [1.0, 2.0, 3.0]])
    prims = Primitives(centres, voxel_size=0.5, feature_dim=4)
    tv, _ = ico_sphere(1)
    r = 0.5 * math.sqrt(3) / 2
    v = prims.vertices().view(2, 42, 3)
    torch.testing.assert_close(v, centres[:, None] + tv[None] * r)
    assert prims.faces.shape == (160, 3) and int(prims.faces.max()) == 83
    # make the decoder non-trivial: vertices must now depend on the latent
    torch.nn.init.normal_(prims.decoder.mlp[-1].weight, std=0.1)
    v1 = prims.vertices()
    v1.sum().backward()
    assert prims.latents.grad is not None and prims.latents.grad.abs().sum() > 0
    assert prims.offsets.grad is not None
    torch.testing.assert_close(prims.offsets.grad, torch.full((2, 3), 42.0))


def test_empty_primitives_error():
    with pytest.raises(ValueError, match="empty scene"):
        Primitives(torch.zeros(0, 3), 0.5)


def test_composite_hand_computed():
    alpha = torch.tensor([[0.5, 0.5, 0.0]])
    rgb = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]])
    bg = torch.tensor([[0.0, 0.0, 1.0]])
    colour, w, t = composite(alpha, rgb, bg)
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.25, 0.0]]))
    torch.testing.assert_close(t, torch.tensor([0.25]))
    torch.testing.assert_close(colour, torch.tensor([[0.5, 0.25, 0.25]]))


def test_camera_rays_principal_point_and_rotation():
    K = torch.tensor([[100.0, 0, 2.0], [0, 100.0, 1.0], [0, 0, 1]])
    c2w = torch.eye(4)
    c2w[:3, :3] = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # camera z -> world x
    d = camera_rays(K, c2w, 3, 5).view(3, 5, 3)
    torch.testing.assert_close(d[1, 2], torch.tensor([1.0, 0, 0]))
    assert d[1, 4, 2] < 0  # pixel right of centre: camera +x -> world -z
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(3, 5))
