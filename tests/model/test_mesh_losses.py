"""Mesh losses: hand-computed values on small meshes, padding, caching, gradients."""

import math

import pytest
import torch

from dnmp.model.icosphere import ico_sphere
from dnmp.model.mesh_losses import (chamfer_distance, mesh_edge_length, mesh_laplacian_smoothing,
                                    mesh_normal_consistency, mesh_topology)

# Regular tetrahedron: every vertex is adjacent to the three others.
TETRA_V = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
TETRA_F = torch.tensor([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
# Unit square split along the diagonal 1-2.
SQUARE_V = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
SQUARE_F = torch.tensor([[0, 1, 2], [1, 3, 2]])
# Two triangles hinged on the x axis: edge (0, 1), apexes 2 and 3.
HINGE_F = torch.tensor([[0, 1, 2], [1, 0, 3]])


def hinge(fold: float) -> torch.Tensor:
    """Second triangle rotated by `fold` radians about the shared edge (0 = flat)."""
    return torch.tensor([[0.0, 0, 0], [1, 0, 0], [0.5, 1, 0],
                         [0.5, -math.cos(fold), math.sin(fold)]], dtype=torch.float64)


# ---------------------------------------------------------------- chamfer

def test_chamfer_known_sets_and_identity():
    x = torch.tensor([[[0.0, 0, 0]]])
    y = torch.tensor([[[1.0, 0, 0], [0, 2, 0]]])
    # x->y: 1^2 ; y->x: (1^2 + 2^2) / 2
    torch.testing.assert_close(chamfer_distance(x, y), torch.tensor([1.0 + 2.5]))
    torch.testing.assert_close(chamfer_distance(y, x), torch.tensor([3.5]))
    p = torch.randn(3, 50, 3)
    assert (chamfer_distance(p, p) == 0).all()  # exact zero, not ~1e-7
    assert (chamfer_distance(p, p[:, torch.randperm(50)]) == 0).all()
    # a translated copy: every nearest neighbour is the partner when shifted by 1e-3
    q = p + torch.tensor([1e-3, 0, 0])
    torch.testing.assert_close(chamfer_distance(p, q), torch.full((3,), 2e-6), rtol=1e-3, atol=0)


def test_chamfer_padding_matches_unpadded():
    g = torch.Generator().manual_seed(0)
    a1, a2 = torch.randn(7, 3, generator=g), torch.randn(4, 3, generator=g)
    b1, b2 = torch.randn(5, 3, generator=g), torch.randn(9, 3, generator=g)
    junk = 100.0  # padding far away: it would dominate if it were not masked
    x = torch.full((2, 7, 3), junk)
    y = torch.full((2, 9, 3), -junk)
    x[0, :7], x[1, :4] = a1, a2
    y[0, :5], y[1, :9] = b1, b2
    got = chamfer_distance(x, y, torch.tensor([7, 4]), torch.tensor([5, 9]))
    want = torch.cat([chamfer_distance(a1[None], b1[None]), chamfer_distance(a2[None], b2[None])])
    torch.testing.assert_close(got, want)


def test_chamfer_errors():
    x = torch.zeros(2, 4, 3)
    with pytest.raises(ValueError, match=r"\[B, N, 3\]"):
        chamfer_distance(torch.zeros(4, 3), x)
    with pytest.raises(ValueError, match="batch size"):
        chamfer_distance(x, torch.zeros(3, 4, 3))
    with pytest.raises(ValueError, match="x_lengths"):
        chamfer_distance(x, x, x_lengths=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="y_lengths"):
        chamfer_distance(x, x, y_lengths=torch.tensor([5, 4]))
    with pytest.raises(TypeError, match="floating"):
        chamfer_distance(x.long(), x)


def test_chamfer_gradcheck():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(2, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: chamfer_distance(a, b, torch.tensor([6, 3]), torch.tensor([4, 5])), (x, y))


# ---------------------------------------------------------------- Laplacian

def test_laplacian_tetra_square_and_scale():
    # Tetra: mean of the 3 neighbours of v is -v/3, so |v - (-v/3)| = 4/3 |v| = 4/3 sqrt(3).
    val = mesh_laplacian_smoothing(TETRA_V[None], TETRA_F)
    torch.testing.assert_close(val, torch.tensor([4.0 / 3.0 * math.sqrt(3.0)]))
    # Square: corners 0, 3 have 2 neighbours -> |(-1/2, -1/2)| = sqrt(2)/2; corners 1, 2 have
    # 3 -> |(2/3, -2/3)| = 2 sqrt(2)/3. Mean = (sqrt(2)/2 + 2 sqrt(2)/3) / 2.
    want = (math.sqrt(2) / 2 + 2 * math.sqrt(2) / 3) / 2
    torch.testing.assert_close(mesh_laplacian_smoothing(SQUARE_V[None], SQUARE_F), torch.tensor([want]))
    # L2 norm (not squared): scales linearly; batched meshes are independent.
    batch = torch.stack([TETRA_V, 2.5 * TETRA_V, TETRA_V + 7.0])
    torch.testing.assert_close(mesh_laplacian_smoothing(batch, TETRA_F),
                               val.repeat(3) * torch.tensor([1.0, 2.5, 1.0]))


def test_laplacian_ignores_unused_vertices_and_flat_grid_is_zero_inside():
    v = torch.cat([TETRA_V, torch.tensor([[50.0, 50, 50]])])  # vertex 4 is in no face
    torch.testing.assert_close(mesh_laplacian_smoothing(v[None], TETRA_F),
                               mesh_laplacian_smoothing(TETRA_V[None], TETRA_F))
    # A symmetric fan: the centre's Laplacian is 0 and its gradient is finite.
    fan_v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]],
                         requires_grad=True)
    fan_f = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])
    loss = mesh_laplacian_smoothing(fan_v[None], fan_f)
    loss.sum().backward()
    assert torch.isfinite(fan_v.grad).all()
    # rim vertex 1: neighbours 0, 2, 4 have mean (0, 0, 0) -> |L| = 1; centre 0 -> 0. Mean 4/5.
    torch.testing.assert_close(loss, torch.tensor([0.8]))


# ---------------------------------------------------------------- normal consistency

def test_normal_consistency_hinge_values():
    for fold in (0.0, math.pi / 2, 0.7, 2.5):
        got = mesh_normal_consistency(hinge(fold)[None], HINGE_F)
        torch.testing.assert_close(got, torch.tensor([1 - math.cos(fold)], dtype=torch.float64))
    # flat square of 2 triangles: exactly 0; folded by 90 degrees about the diagonal: 1.
    assert mesh_normal_consistency(SQUARE_V[None], SQUARE_F).item() == pytest.approx(0.0, abs=1e-7)
    folded = SQUARE_V.clone()
    # Rotate vertex 3 by 90 degrees about the diagonal 1-2 (axis through (0.5, 0.5, 0)).
    folded[3] = torch.tensor([0.5, 0.5, math.sqrt(0.5)])
    torch.testing.assert_close(mesh_normal_consistency(folded[None], SQUARE_F), torch.tensor([1.0]))


def test_normal_consistency_is_winding_independent_and_tetra():
    flipped = HINGE_F.clone()
    flipped[1] = flipped[1].flip(0)  # inconsistent winding of the second face
    v = hinge(0.7)[None]
    torch.testing.assert_close(mesh_normal_consistency(v, flipped), mesh_normal_consistency(v, HINGE_F))
    # Regular tetra: outward normals of adjacent faces meet at pi - arccos(1/3): cos = -1/3.
    torch.testing.assert_close(mesh_normal_consistency(TETRA_V[None], TETRA_F), torch.tensor([4.0 / 3.0]))
    # Single triangle: no interior edge -> 0.
    tri = mesh_normal_consistency(SQUARE_V[None, :3], SQUARE_F[:1])
    assert tri.shape == (1,) and tri.item() == 0.0


def test_normal_consistency_icosphere_matches_closed_form():
    v, f = ico_sphere(1)
    got = mesh_normal_consistency(v[None].double(), f)
    # Brute force over face pairs sharing 2 vertices, with outward normals.
    vd = v.double()
    n = torch.cross(vd[f[:, 1]] - vd[f[:, 0]], vd[f[:, 2]] - vd[f[:, 0]], dim=1)
    n = n / n.norm(dim=1, keepdim=True)
    sets = [set(t.tolist()) for t in f]
    vals = [1 - float(n[i] @ n[j]) for i in range(80) for j in range(i + 1, 80)
            if len(sets[i] & sets[j]) == 2]
    assert len(vals) == 120
    torch.testing.assert_close(got, torch.tensor([sum(vals) / 120], dtype=torch.float64))


def test_mesh_regularisers_gradcheck():
    g = torch.Generator().manual_seed(2)
    v0, f = ico_sphere(0)
    v = (v0.double() + 0.1 * torch.randn(2, 12, 3, dtype=torch.float64, generator=g)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: mesh_laplacian_smoothing(x, f), (v,))
    assert torch.autograd.gradcheck(lambda x: mesh_normal_consistency(x, f), (v,))
    assert torch.autograd.gradcheck(lambda x: mesh_edge_length(x, f, 0.5), (v,))


# ---------------------------------------------------------------- edge length, topology, errors

def test_edge_length_tetra():
    # 6 edges of length 2 sqrt(2)
    torch.testing.assert_close(mesh_edge_length(TETRA_V[None], TETRA_F), torch.tensor([8.0]))
    torch.testing.assert_close(mesh_edge_length(TETRA_V[None], TETRA_F, target=2 * math.sqrt(2)),
                               torch.tensor([0.0]))


def test_topology_cached_and_invalidated():
    v, f = ico_sphere(1)
    t = mesh_topology(f)
    assert mesh_topology(f) is t
    assert t.edges.shape == (120, 2) and t.dihedral.shape == (120, 4)
    assert t.degree.sum() == 240 and set(t.degree.tolist()) == {5, 6}
    f[0] = torch.tensor([0, 1, 2])  # in-place edit: the cache must not return stale tables
    t2 = mesh_topology(f)
    assert t2 is not t
    assert torch.equal(t2.edges, mesh_topology(f.clone()).edges)
    assert not torch.equal(t2.edges, t.edges)


def test_mesh_loss_errors():
    with pytest.raises(ValueError, match=r"\[B, V, 3\]"):
        mesh_laplacian_smoothing(TETRA_V, TETRA_F)
    with pytest.raises(ValueError, match="only 3 vertices"):
        mesh_normal_consistency(TETRA_V[None, :3], TETRA_F)
    with pytest.raises(ValueError, match=r"\[F, 3\]"):
        mesh_edge_length(TETRA_V[None], TETRA_F[:, :2])
    with pytest.raises(TypeError, match="integer"):
        mesh_edge_length(TETRA_V[None], TETRA_F.float())
    with pytest.raises(ValueError, match="negative"):
        mesh_edge_length(TETRA_V[None], TETRA_F - 1)
