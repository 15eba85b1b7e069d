"""Gradients of rasterize and interpolate.

* torch.autograd.gradcheck in float64 (finite differences, default tolerances)
  on tiny meshes whose pixel centres stay >= 0.02 px from every edge, so the
  perturbation never changes coverage (coverage is not differentiated).
* The C++ analytic backward (3D triple-product formula) against torch autograd
  through the reference's screen-space formula: two independent derivations.
  float64: rtol 1e-7 (both exact up to rounding); float32: rtol 1e-3 / atol
  1e-3 * max|grad| (float32 forward values feed the reference's autograd,
  the C++ backward recomputes in double).
* Determinism: bit-identical gradients across runs and thread counts.
"""

from __future__ import annotations

import pytest
import torch

from dnmp.ops import interpolate, interpolate_reference, rasterize, rasterize_reference

from .scenes import camera, random_soup, spheres


def _edge_margin(verts, faces, intr, H, W):
    """Smallest screen distance (px) from any pixel centre to any face edge line."""
    u = intr[0, 0] * verts[:, 0] / verts[:, 2] + intr[0, 2]
    v = intr[1, 1] * verts[:, 1] / verts[:, 2] + intr[1, 2]
    p = torch.stack([u, v], -1)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=p.dtype), torch.arange(W, dtype=p.dtype), indexing="ij")
    q = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)
    m = float("inf")
    for f in faces:
        for i in range(3):
            a, b = p[f[i]], p[f[(i + 1) % 3]]
            d = b - a
            dist = ((q - a)[:, 0] * d[1] - (q - a)[:, 1] * d[0]).abs() / d.norm()
            m = min(m, float(dist.min()))
    return m


def _tiny_mesh(seed, H=6, W=7):
    intr, w2c = camera(H, W, f=4.0, dtype=torch.float64)
    for s in range(seed, seed + 200):
        g = torch.Generator().manual_seed(s)
        verts = (torch.rand(5, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([5.0, 4.0, 1.0])
        verts[:, 2] += 2.5
        faces = torch.tensor([[0, 1, 2], [2, 3, 4], [0, 3, 1]])
        if _edge_margin(verts, faces, intr, H, W) > 0.02:
            return verts, faces, intr, w2c
    raise RuntimeError("no mesh with enough margin")


@pytest.mark.parametrize("seed", [0, 1000])
def test_gradcheck_rasterize(seed):
    verts, faces, intr, w2c = _tiny_mesh(seed)
    H, W = 6, 7
    fr = rasterize(verts, faces, intr, w2c, (H, W), 3)
    assert (fr.pix_to_face >= 0).sum() >= 4, "degenerate test scene"
    v = verts.clone().requires_grad_()

    def f(x):
        out = rasterize(x, faces, intr, w2c, (H, W), 3)
        return out.zbuf, out.bary_coords

    assert torch.autograd.gradcheck(f, (v,))


def test_gradcheck_rasterize_direct_op(cpp):
    # the autograd formula is attached to the custom op itself
    verts, faces, intr, w2c = _tiny_mesh(7)
    v = verts.clone().requires_grad_()

    def f(x):
        _, z, b = torch.ops.dnmp.rasterize_fwd(x, faces, intr[None], w2c[None], 6, 7, 2, 0.05, 1e4)
        return z, b

    assert torch.autograd.gradcheck(f, (v,))


def test_gradcheck_interpolate():
    g = torch.Generator().manual_seed(0)
    attr = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    faces = torch.randint(0, 9, (6, 3), generator=g)
    p2f = torch.randint(-1, 6, (2, 3, 4, 2), generator=g)
    bary = torch.rand(2, 3, 4, 2, 3, generator=g, dtype=torch.float64).requires_grad_()

    def f(a, b):
        return interpolate(a, faces, (p2f, None, b))

    assert torch.autograd.gradcheck(f, (attr, bary))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rasterize_backward_matches_reference_autograd(cpp, dtype):
    verts, faces = random_soup(3, n_faces=70, dtype=dtype)
    intr, w2c = camera(20, 24, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    va = verts.clone().requires_grad_()
    vb = verts.clone().requires_grad_()
    a = rasterize(va, faces, intr, w2c, (20, 24), 4)
    b = rasterize_reference(vb, faces, intr, w2c, (20, 24), 4)
    wz = torch.randn(a.zbuf.shape, generator=g, dtype=dtype)
    wb = torch.randn(a.bary_coords.shape, generator=g, dtype=dtype)
    ((a.zbuf * wz).sum() + (a.bary_coords * wb).sum()).backward()
    ((b.zbuf * wz).sum() + (b.bary_coords * wb).sum()).backward()
    assert va.grad.abs().max() > 0
    if dtype == torch.float64:
        torch.testing.assert_close(va.grad, vb.grad, rtol=1e-7, atol=1e-9)
    else:
        torch.testing.assert_close(va.grad, vb.grad, rtol=1e-3, atol=1e-3 * float(vb.grad.abs().max()))


def test_interpolate_backward_matches_reference(cpp):
    verts, faces = spheres(4, seed=2)
    intr, w2c = camera(30, 40, f=25.0)
    fr = rasterize(verts, faces, intr, w2c, (30, 40), 3)
    g = torch.Generator().manual_seed(0)
    attr = torch.randn(verts.shape[0], 5, generator=g, dtype=torch.float64)
    bary = fr.bary_coords.double()
    w = torch.randn(*fr.pix_to_face.shape, 5, generator=g, dtype=torch.float64)
    grads = []
    for fn in (interpolate, interpolate_reference):
        a = attr.clone().requires_grad_()
        b = bary.clone().requires_grad_()
        (fn(a, faces, (fr.pix_to_face, None, b)) * w).sum().backward()
        grads.append((a.grad, b.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-12, atol=1e-12)


def _scene_grads(verts, faces, intr, w2c, attr, wz):
    v = verts.clone().requires_grad_()
    a = attr.clone().requires_grad_()
    fr = rasterize(v, faces, intr, w2c, (48, 64), 4)
    loss = (interpolate(a, faces, fr) ** 2).sum() + (fr.zbuf * wz).sum()
    loss.backward()
    return v.grad, a.grad


def test_backward_deterministic_across_runs_and_threads(cpp):
    verts, faces = spheres(40, seed=9)
    intr, w2c = camera(48, 64, f=30.0)
    g = torch.Generator().manual_seed(0)
    attr = torch.randn(verts.shape[0], 16, generator=g)
    wz = torch.randn(1, 48, 64, 4, generator=g)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(max(2, n))
        r1 = _scene_grads(verts, faces, intr, w2c, attr, wz)
        r2 = _scene_grads(verts, faces, intr, w2c, attr, wz)
        torch.set_num_threads(1)
        r3 = _scene_grads(verts, faces, intr, w2c, attr, wz)
    finally:
        torch.set_num_threads(n)
    assert r1[0].abs().max() > 0 and r1[1].abs().max() > 0
    for other in (r2, r3):
        assert torch.equal(r1[0], other[0]), "verts grad not bit-identical"
        assert torch.equal(r1[1], other[1]), "attributes grad not bit-identical"


def test_interpolate_backward_many_vertices_threads_and_reference(cpp):
    """Enough vertex rows (20k) for the backward's row ranges to split across threads, with
    repeated vertices, shared faces and empty fragments: the same bits on 1 and several
    threads, and the reference's sums (float64)."""
    g = torch.Generator().manual_seed(4)
    V, F, C = 20_000, 9_000, 32
    faces = torch.randint(0, V, (F, 3), generator=g)
    p2f = torch.randint(-1, F, (1, 60, 70, 4), generator=g)
    bary = torch.rand(1, 60, 70, 4, 3, generator=g, dtype=torch.float64)
    attr = torch.randn(V, C, generator=g, dtype=torch.float64)
    w = torch.randn(1, 60, 70, 4, C, generator=g, dtype=torch.float64)

    def grads(fn, dtype):
        a = attr.to(dtype).requires_grad_()
        b = bary.to(dtype).requires_grad_()
        (fn(a, faces, (p2f, None, b)) * w.to(dtype)).sum().backward()
        return a.grad, b.grad

    n = torch.get_num_threads()
    try:
        torch.set_num_threads(max(4, n))
        many = grads(interpolate, torch.float32)
        torch.set_num_threads(1)
        one = grads(interpolate, torch.float32)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(many[0], one[0]) and torch.equal(many[1], one[1])
    assert (many[0] != 0).any(dim=1).float().mean() > 0.5  # most rows receive a gradient
    ref, new = grads(interpolate_reference, torch.float64), grads(interpolate, torch.float64)
    torch.testing.assert_close(new[0], ref[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new[1], ref[1], rtol=1e-12, atol=1e-12)


def test_interpolate_backward_without_bary_gradient(cpp):
    """bary_grad=False (what autograd asks for when the barycentrics need no gradient, as in
    a training step on cached fragments): the same attribute gradient, bit for bit, and zeros
    for bary; through autograd the bary input gets no gradient."""
    verts, faces = spheres(6, seed=5)
    intr, w2c = camera(30, 40, f=25.0)
    fr = rasterize(verts, faces, intr, w2c, (30, 40), 3)
    g = torch.Generator().manual_seed(1)
    attr = torch.randn(verts.shape[0], 7, generator=g)
    go = torch.randn(*fr.pix_to_face.shape, 7, generator=g)
    op = torch.ops.dnmp.interpolate_bwd
    ga, gb = op(attr, faces, fr.pix_to_face, fr.bary_coords, go)
    ga2, gb2 = op(attr, faces, fr.pix_to_face, fr.bary_coords, go, False)
    assert gb.abs().max() > 0 and torch.equal(ga, ga2)
    assert gb2.shape == gb.shape and not gb2.any()
    a = attr.clone().requires_grad_()
    (interpolate(a, faces, fr) * go).sum().backward()
    assert torch.equal(a.grad, ga)
    a2, b2 = attr.clone().requires_grad_(), fr.bary_coords.clone().requires_grad_()
    (interpolate(a2, faces, (fr.pix_to_face, None, b2)) * go).sum().backward()
    assert torch.equal(a2.grad, ga) and torch.equal(b2.grad, gb)
