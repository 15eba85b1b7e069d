"""rasterize (C++ kernels) vs rasterize_reference (pure torch, dnmp/ops/_reference.py).

Tolerances: both implementations evaluate the same formulas in the same
operation order and dtype, and the kernels are compiled without fused
multiply-add (-ffp-contract=off), so results are expected to be bit-identical.
pix_to_face is compared exactly (coverage and depth order must agree,
including exact ties). zbuf and bary_coords get rtol = atol = 1e-6 (float32:
a few ulps) only as slack against a compiler that rounds differently.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from dnmp.ops import Fragments, rasterize, rasterize_reference

from .scenes import camera, grid_mesh, huge_and_tiny_faces, icosphere, look_at, near_far_faces, random_soup, spheres


def assert_same(a: Fragments, b: Fragments):
    assert a.pix_to_face.dtype == torch.int64 and b.pix_to_face.dtype == torch.int64
    assert torch.equal(a.pix_to_face, b.pix_to_face), (a.pix_to_face != b.pix_to_face).sum()
    torch.testing.assert_close(a.zbuf, b.zbuf, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.bary_coords, b.bary_coords, rtol=1e-6, atol=1e-6)


def both(*args, **kw):
    return rasterize(*args, **kw), rasterize_reference(*args, **kw)


def check_invariants(fr: Fragments, H, W, K, B=1):
    p, z, b = fr
    assert p.shape == (B, H, W, K) and z.shape == (B, H, W, K) and b.shape == (B, H, W, K, 3)
    empty = p < 0
    assert torch.all(z[empty] == -1) and torch.all(b[empty] == 0)
    # hits are packed first and sorted near to far
    assert not torch.any(empty[..., :-1] & ~empty[..., 1:])
    zz = torch.where(empty, torch.full_like(z, float("inf")), z)
    assert torch.all(zz[..., 1:] >= zz[..., :-1])
    if (~empty).any():
        torch.testing.assert_close(b[~empty].sum(-1), torch.ones_like(z[~empty]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("K", [1, 3, 8])
def test_random_soup_matches_reference(cpp, seed, K):
    verts, faces = random_soup(seed, n_faces=80)
    intr, w2c = camera(24, 32)
    a, b = both(verts, faces, intr, w2c, (24, 32), K)
    check_invariants(a, 24, 32, K)
    assert_same(a, b)
    assert (a.pix_to_face >= 0).any()


@pytest.mark.parametrize("HW", [(1, 1), (1, 7), (9, 1), (13, 29), (40, 17)])
def test_image_shapes(cpp, HW):
    H, W = HW
    verts, faces = random_soup(7, n_faces=50, spread=0.5)
    intr, w2c = camera(H, W, f=max(H, W))
    a, b = both(verts, faces, intr, w2c, HW, 2)
    check_invariants(a, H, W, 2)
    assert_same(a, b)


def test_spheres_scene_and_tiles(cpp):
    # large enough to span several 16x16 tiles, many overlapping closed surfaces
    verts, faces = spheres(12, seed=3)
    intr, w2c = camera(45, 70, f=30.0)
    a, b = both(verts, faces, intr, w2c, (45, 70), 4)
    check_invariants(a, 45, 70, 4)
    assert_same(a, b)
    assert (a.pix_to_face[..., 1] >= 0).sum() > 50 and (a.pix_to_face[..., 3] >= 0).any()


@pytest.mark.parametrize("jitter,flip", [(0.0, False), (0.0, True), (0.7, True)])
def test_flat_grid_covers_each_pixel_exactly_once(cpp, jitter, flip):
    # Plane z = 1, f = 1, c = 0: grid vertices land exactly on pixel centres when
    # unjittered, so pixel centres lie on shared horizontal, vertical and
    # diagonal edges and on vertices. Each pixel inside the grid must be
    # claimed by exactly one face (top-left rule), windings mixed or not.
    H, W = 20, 24
    verts, faces = grid_mesh(10, 8, x0=1.0, y0=2.0, step=2.0, z=1.0, flip_alternate=flip, jitter=jitter)
    intr = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]])
    a, b = both(verts, faces, intr, torch.eye(4), (H, W), 2)
    assert_same(a, b)
    assert torch.all(a.pix_to_face[..., 1] == -1), "a pixel is covered twice"
    if jitter == 0.0:
        inside = torch.zeros(H, W, dtype=torch.bool)
        inside[3:18, 2:21] = True  # strictly inside the grid [1,21]x[2,18]
        assert torch.all(a.pix_to_face[0, ..., 0][inside] >= 0), "a pixel inside the mesh is missed"
        # boundary: the top-left rule keeps the top row and left column of the
        # grid [1, 21] x [2, 18] and drops the bottom row and right column
        covered = a.pix_to_face[0, ..., 0] >= 0
        expect = torch.zeros(H, W, dtype=torch.bool)
        expect[2:18, 1:21] = True
        assert torch.equal(covered, expect)


def test_flat_grid_tilted_perspective(cpp):
    verts, faces = grid_mesh(12, 9, x0=-1.2, y0=-0.9, step=0.2, z=0.0, flip_alternate=True, jitter=0.1, seed=5)
    w2c = look_at((0.3, -0.4, -2.5), (0.0, 0.0, 0.0))
    intr, _ = camera(40, 50, f=40.0)
    a, b = both(verts, faces, intr, w2c, (40, 50), 3)
    assert_same(a, b)
    assert torch.all(a.pix_to_face[..., 1] == -1)
    assert (a.pix_to_face[..., 0] >= 0).sum() > 400


def test_coplanar_overlap_ties_by_face_index(cpp):
    # the same triangle three times (and a larger coplanar one): equal depths,
    # order must be by face index
    verts = torch.tensor([[-1.0, -1, 2], [1, -1, 2], [0, 1, 2], [-2, -2, 2], [2, -2, 2], [0, 2, 2]])
    faces = torch.tensor([[3, 4, 5], [0, 1, 2], [0, 2, 1], [2, 0, 1]])
    intr, w2c = camera(16, 16, f=8.0)
    a, b = both(verts, faces, intr, w2c, (16, 16), 4)
    assert_same(a, b)
    centre = a.pix_to_face[0, 8, 8]
    assert centre.tolist() == [0, 1, 2, 3]


def test_many_layers_k8(cpp):
    # 12 stacked quads (24 faces) at increasing depth, listed in shuffled order
    layers = []
    for i in range(12):
        z = 2.0 + 0.25 * i
        layers.append(torch.tensor([[-30.0, -30, z], [30, -30, z], [30, 30, z], [-30, 30, z]]))
    verts = torch.cat(layers)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    faces = torch.cat([torch.tensor([[0, 1, 2], [0, 2, 3]]) + 4 * int(i) for i in perm])
    intr, w2c = camera(10, 12, f=5.0)
    a, b = both(verts, faces, intr, w2c, (10, 12), 8)
    assert_same(a, b)
    check_invariants(a, 10, 12, 8)
    assert torch.all(a.pix_to_face >= 0)
    torch.testing.assert_close(a.zbuf[0, 5, 5], 2.0 + 0.25 * torch.arange(8.0))


def test_near_far_and_behind_camera(cpp):
    # face 0 crosses the near plane (culled whole), face 1 behind the camera,
    # face 2 beyond far (dropped), face 3 straddles far (partly dropped), face 4 fine
    verts, faces = near_far_faces()
    intr, w2c = camera(24, 24, f=12.0)
    a, b = both(verts, faces, intr, w2c, (24, 24), 3, near=0.05, far=20.0)
    assert_same(a, b)
    used = set(a.pix_to_face.unique().tolist())
    assert 0 not in used and 1 not in used and 2 not in used and 4 in used and 3 in used
    assert torch.all(a.zbuf[a.pix_to_face >= 0] <= 20.0)
    # a large near value culls the close face too
    a2, b2 = both(verts, faces, intr, w2c, (24, 24), 3, near=3.5, far=20.0)
    assert_same(a2, b2)
    assert 4 not in set(a2.pix_to_face.unique().tolist())


def test_zero_area_and_degenerate_faces(cpp):
    verts = torch.tensor([[-1.0, -1, 2], [1, 1, 2], [0, 0, 2], [0.5, -1, 2], [-1, 1, 3], [1, -1, 3]])
    faces = torch.tensor([[0, 1, 2], [0, 0, 3], [3, 3, 3], [4, 5, 2]])  # collinear, repeated, point, valid
    intr, w2c = camera(12, 12, f=6.0)
    a, b = both(verts, faces, intr, w2c, (12, 12), 2)
    assert_same(a, b)
    assert set(a.pix_to_face.unique().tolist()) <= {-1, 3}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_vertices_warn_and_never_cover(cpp, bad):
    verts, faces = random_soup(11, n_faces=60)
    verts[3, 1] = bad
    verts[17] = bad
    touched = ((faces == 3) | (faces == 17)).any(1)
    intr, w2c = camera(20, 20)
    with pytest.warns(RuntimeWarning, match=r"2 of 50 vertices are non-finite"):
        a = rasterize(verts, faces, intr, w2c, (20, 20), 4)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        b = rasterize_reference(verts, faces, intr, w2c, (20, 20), 4)
    assert_same(a, b)
    hit = a.pix_to_face[a.pix_to_face >= 0]
    assert not touched[hit].any()
    assert torch.isfinite(a.zbuf).all() and torch.isfinite(a.bary_coords).all()


def test_finite_vertices_do_not_warn(cpp):
    verts, faces = random_soup(1)
    intr, w2c = camera(8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rasterize(verts, faces, intr, w2c, (8, 8))


def test_huge_and_tiny_triangles(cpp):
    verts, faces = huge_and_tiny_faces()
    intr, w2c = camera(31, 37, f=15.0)
    a, b = both(verts, faces, intr, w2c, (31, 37), 3)
    assert_same(a, b)
    assert torch.all(a.pix_to_face[..., 0] >= 0)  # huge faces cover everything
    assert (a.pix_to_face[..., 0] >= 2).any()  # some tiny faces hit a pixel centre


def test_batched_cameras_equal_single(cpp):
    verts, faces = spheres(5, seed=1)
    intr, _ = camera(20, 30, f=20.0)
    poses = [look_at((0, 0, 0), (0, 0, 5)), look_at((1.0, -0.5, 0.5), (0, 0, 5)), look_at((-1, 0.3, 1), (0.2, 0, 5))]
    w2c = torch.stack(poses)
    intrs = torch.stack([intr, intr * torch.tensor([[1.1], [0.9], [1.0]]), intr])
    a, b = both(verts, faces, intrs, w2c, (20, 30), 2)
    assert_same(a, b)
    for i in range(3):
        s = rasterize(verts, faces, intrs[i], w2c[i], (20, 30), 2)
        assert torch.equal(s.pix_to_face[0], a.pix_to_face[i])
        assert torch.equal(s.zbuf[0], a.zbuf[i])
    # one intrinsics broadcast against several poses
    c = rasterize(verts, faces, intr, w2c, (20, 30), 2)
    assert c.pix_to_face.shape[0] == 3
    assert torch.equal(c.pix_to_face[0], a.pix_to_face[0])


@pytest.mark.parametrize("fdtype", [torch.int32, torch.int64])
def test_face_index_dtypes(cpp, fdtype):
    verts, faces = random_soup(4)
    intr, w2c = camera(16, 16)
    a = rasterize(verts, faces.to(fdtype), intr, w2c, (16, 16), 2)
    b = rasterize_reference(verts, faces, intr, w2c, (16, 16), 2)
    assert_same(a, b)


def test_float64(cpp):
    verts, faces = random_soup(5, dtype=torch.float64)
    intr, w2c = camera(16, 20, dtype=torch.float64)
    a, b = both(verts, faces, intr, w2c, (16, 20), 3)
    assert a.zbuf.dtype == torch.float64 and a.bary_coords.dtype == torch.float64
    assert_same(a, b)


def test_bary_reproduces_surface_point(cpp):
    # perspective-correct: interpolating camera-space positions with bary gives
    # a point on the pixel ray at depth zbuf
    verts, faces = icosphere((0.1, -0.2, 3.0), 1.0)
    intr, w2c = camera(21, 23, f=12.0)
    fr = rasterize(verts.double(), faces, intr.double(), w2c.double(), (21, 23), 2)
    hit = fr.pix_to_face >= 0
    P = verts.double()[faces[fr.pix_to_face[hit]]]  # [n,3,3]
    X = (fr.bary_coords[hit][..., None] * P).sum(-2)
    torch.testing.assert_close(X[:, 2], fr.zbuf[hit], rtol=1e-12, atol=1e-12)
    _, y, x, _ = torch.nonzero(hit, as_tuple=True)
    u = intr[0, 0].double() * X[:, 0] / X[:, 2] + intr[0, 2]
    v = intr[1, 1].double() * X[:, 1] / X[:, 2] + intr[1, 2]
    torch.testing.assert_close(u, x.double(), rtol=0, atol=1e-9)
    torch.testing.assert_close(v, y.double(), rtol=0, atol=1e-9)


def test_forward_deterministic_across_threads(cpp):
    verts, faces = spheres(30, seed=4)
    intr, w2c = camera(60, 80, f=40.0)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = rasterize(verts, faces, intr, w2c, (60, 80), 4)
        torch.set_num_threads(max(2, n))
        b = rasterize(verts, faces, intr, w2c, (60, 80), 4)
    finally:
        torch.set_num_threads(n)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_more_faces_than_one_sort_block(cpp):
    """Over 65,536 kept faces the CPU kernel's depth sort splits its passes into blocks,
    one per thread. A grid of one-pixel cells at random depths: every pixel must be
    covered once, by a face of its own cell (a face lost or doubled by the sort shows),
    with any thread count."""
    H, W = 160, 256  # 2 * H * W = 81,920 faces
    verts, faces = grid_mesh(W, H, x0=-0.5, y0=-0.5, step=1.0, z=1.0, diagonal_mix=False)
    z = 1.0 + 2.0 * torch.rand(verts.shape[0], generator=torch.Generator().manual_seed(5))
    verts = torch.stack([verts[:, 0] * z, verts[:, 1] * z, z], 1)  # same pixels, f = 1, c = 0
    intr = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]])
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = rasterize(verts, faces, intr, torch.eye(4), (H, W), 2)
        torch.set_num_threads(1)
        b = rasterize(verts, faces, intr, torch.eye(4), (H, W), 2)
    finally:
        torch.set_num_threads(n)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    cell = torch.arange(H * W).view(H, W)
    assert torch.equal(a.pix_to_face[0, ..., 0] // 2, cell)
    assert torch.all(a.pix_to_face[..., 1] == -1)


def test_top_left_rule_single_triangle(cpp):
    # vertices on pixel centres (1,1), (3,1), (1,3): the top edge, the left edge
    # and the top-left vertex are inside; the hypotenuse (bottom-right) is not
    verts = torch.tensor([[0.0, 0, 2], [1, 0, 2], [0, 1, 2]])
    intr = torch.tensor([[4.0, 0, 1], [0, 4.0, 1], [0, 0, 1]])
    for faces in (torch.tensor([[0, 1, 2]]), torch.tensor([[0, 2, 1]])):
        a, b = both(verts, faces, intr, torch.eye(4), (5, 5))
        assert_same(a, b)
        got = {(int(y), int(x)) for y, x in zip(*torch.nonzero(a.pix_to_face[0, ..., 0] >= 0, as_tuple=True))}
        assert got == {(1, 1), (1, 2), (2, 1)}


def test_empty_mesh():
    verts = torch.zeros(0, 3)
    faces = torch.zeros(0, 3, dtype=torch.int64)
    intr, w2c = camera(4, 5)
    fr = rasterize(verts, faces, intr, w2c, (4, 5), 2)
    assert torch.all(fr.pix_to_face == -1) and torch.all(fr.zbuf == -1) and torch.all(fr.bary_coords == 0)
    fr2 = rasterize_reference(verts, faces, intr, w2c, (4, 5), 2)
    assert_same(fr, fr2)
