"""The same scenarios over every implementation (PyTorch3D style): the pure-torch
reference, the CPU kernels and the CUDA kernels. CUDA cases skip without a GPU.

For each scenario the CPU kernels are the yardstick:
* reference vs CPU: pix_to_face equal, zbuf / bary_coords within 1e-6 (same
  arithmetic, no fused multiply-add: bit-identical in practice);
* CUDA vs CPU: pix_to_face equal, zbuf / bary_coords within 1e-5 (both run the
  csrc/common math, nvcc with --fmad=false);
* gradients (float64) of a loss through zbuf, bary_coords and interpolate:
  CUDA vs CPU within 1e-4 relative (the same per-fragment formula and the
  same summation order, so equal in practice); reference autograd vs CPU
  within 1e-7 (two independent derivations);
* determinism: two backward runs give bit-identical gradients.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import dnmp.ops as ops
from dnmp.ops import Fragments, interpolate, interpolate_reference, rasterize, rasterize_reference

from .scenes import camera, grid_mesh, huge_and_tiny_faces, look_at, near_far_faces, random_soup, spheres

IMPLS = ["reference", "cpu", "cuda"]


def _need(impl: str) -> torch.device:
    """The device for an implementation, skipping when it cannot run here."""
    if impl == "reference":
        return torch.device("cpu")
    if ops.backend() != "cpp":
        pytest.skip("compiled kernels not available (backend() == 'reference')")
    if impl == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        from dnmp.ops._extension import kernels_for

        # a GPU with a CPU-only build would silently test the reference: fail instead
        assert kernels_for(torch.device("cuda")), "CUDA device present but dnmp._C was built without CUDA"
        return torch.device("cuda")
    return torch.device("cpu")


def _layers(n: int = 300, seed: int = 0):
    """n large quads at distinct depths in shuffled order: every tile sees far
    more faces than one shared-memory chunk, and most must be skipped by the
    nearest-first early exit."""
    g = torch.Generator().manual_seed(seed)
    z = 2.0 + 0.01 * torch.randperm(n, generator=g).double()
    off = (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * 0.5
    quad = torch.tensor([[-3.0, -3.0], [3.0, -3.0], [3.0, 3.0], [-3.0, 3.0]], dtype=torch.float64)
    xy = quad[None] * (1 + 0.1 * torch.rand(n, 1, 1, generator=g, dtype=torch.float64)) + off[:, None]
    verts = torch.cat([xy, z[:, None, None].expand(n, 4, 1)], -1).reshape(-1, 3).float()
    faces = (torch.tensor([[0, 1, 2], [0, 2, 3]]) + 4 * torch.arange(n)[:, None, None]).reshape(-1, 3)
    return verts, faces


def _scene(name: str):
    """(verts, faces, intrinsics, world_to_cam, (H, W), K, near, far) of a named scenario."""
    near, far = 0.05, 1e4
    if name.startswith("soup"):
        verts, faces = random_soup(int(name[-1]), n_faces=80)
        intr, w2c = camera(24, 32)
        return verts, faces, intr, w2c, (24, 32), 3, near, far
    if name == "spheres_tiles":
        verts, faces = spheres(12, seed=3)
        intr, w2c = camera(45, 70, f=30.0)
        return verts, faces, intr, w2c, (45, 70), 4, near, far
    if name in ("grid_exact", "grid_flip", "grid_jitter"):
        jitter, flip = {"grid_exact": (0.0, False), "grid_flip": (0.0, True), "grid_jitter": (0.7, True)}[name]
        verts, faces = grid_mesh(10, 8, x0=1.0, y0=2.0, step=2.0, z=1.0, flip_alternate=flip, jitter=jitter)
        intr = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]])
        return verts, faces, intr, torch.eye(4), (20, 24), 2, near, far
    if name == "grid_tilted":
        verts, faces = grid_mesh(12, 9, x0=-1.2, y0=-0.9, step=0.2, z=0.0, flip_alternate=True, jitter=0.1, seed=5)
        intr, _ = camera(40, 50, f=40.0)
        return verts, faces, intr, look_at((0.3, -0.4, -2.5), (0.0, 0.0, 0.0)), (40, 50), 3, near, far
    if name == "coplanar_ties":
        verts = torch.tensor([[-1.0, -1, 2], [1, -1, 2], [0, 1, 2], [-2, -2, 2], [2, -2, 2], [0, 2, 2]])
        faces = torch.tensor([[3, 4, 5], [0, 1, 2], [0, 2, 1], [2, 0, 1]])
        intr, w2c = camera(16, 16, f=8.0)
        return verts, faces, intr, w2c, (16, 16), 4, near, far
    if name == "near_far":
        verts, faces = near_far_faces()
        intr, w2c = camera(24, 24, f=12.0)
        return verts, faces, intr, w2c, (24, 24), 3, 0.05, 20.0
    if name == "huge_tiny":
        verts, faces = huge_and_tiny_faces()
        intr, w2c = camera(31, 37, f=15.0)
        return verts, faces, intr, w2c, (31, 37), 3, near, far
    if name.startswith("layers"):
        # K = 1 / 4: per-thread lists; K = 20: the global-scratch path of the CUDA kernel
        verts, faces = _layers()
        intr, w2c = camera(40, 70, f=12.0)
        return verts, faces, intr, w2c, (40, 70), int(name.split("_k")[1]), near, far
    if name == "nonfinite":
        verts, faces = random_soup(11, n_faces=60)
        verts[3, 1] = float("nan")
        verts[17] = float("inf")
        intr, w2c = camera(20, 20)
        return verts, faces, intr, w2c, (20, 20), 4, near, far
    if name == "odd_shape":
        verts, faces = random_soup(7, n_faces=50, spread=0.5)
        intr, w2c = camera(13, 29, f=29.0)
        return verts, faces, intr, w2c, (13, 29), 2, near, far
    if name == "batched":
        verts, faces = spheres(5, seed=1)
        intr, _ = camera(20, 30, f=20.0)
        w2c = torch.stack([look_at((0, 0, 0), (0, 0, 5)), look_at((1.0, -0.5, 0.5), (0, 0, 5))])
        intrs = torch.stack([intr, intr * torch.tensor([[1.1], [0.9], [1.0]])])
        return verts, faces, intrs, w2c, (20, 30), 3, near, far
    raise KeyError(name)


SCENES = ["soup0", "soup1", "spheres_tiles", "grid_exact", "grid_flip", "grid_jitter", "grid_tilted",
          "coplanar_ties", "near_far", "huge_tiny", "layers_k1", "layers_k4", "layers_k20", "nonfinite", "odd_shape", "batched"]


def _rasterize(impl: str, scene, dtype=torch.float32) -> Fragments:
    verts, faces, intr, w2c, hw, K, near, far = scene
    dev = _need(impl)
    args = (verts.to(dev, dtype), faces.to(dev), intr.to(dev, dtype), w2c.to(dev, dtype), hw, K)
    fn = rasterize_reference if impl == "reference" else rasterize
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-finite", category=RuntimeWarning)
        fr = fn(*args, near=near, far=far)
    return Fragments(*(t.cpu() for t in fr))


@pytest.mark.parametrize("impl", ["reference", "cuda"])
@pytest.mark.parametrize("name", SCENES)
def test_fragments_equal_cpu(impl, name):
    scene = _scene(name)
    got = _rasterize(impl, scene)
    want = _rasterize("cpu", scene)
    assert (want.pix_to_face >= 0).any(), "degenerate scenario"
    assert torch.equal(got.pix_to_face, want.pix_to_face), int((got.pix_to_face != want.pix_to_face).sum())
    tol = 1e-6 if impl == "reference" else 1e-5
    torch.testing.assert_close(got.zbuf, want.zbuf, rtol=tol, atol=tol)
    torch.testing.assert_close(got.bary_coords, want.bary_coords, rtol=tol, atol=tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_layers_keep_the_nearest(impl):
    # independent expectation: at the image centre every quad covers the pixel,
    # so the K nearest are the K smallest depths, nearest first
    verts, faces, intr, w2c, hw, _, near, far = _scene("layers_k4")
    fr = _rasterize(impl, (verts, faces, intr, w2c, hw, 20, near, far))
    z = verts.reshape(-1, 4, 3)[:, 0, 2]
    want = torch.sort(z).values[:20]
    torch.testing.assert_close(fr.zbuf[0, 20, 35], want, rtol=1e-6, atol=1e-6)
    # of the two faces of a quad, the covering one is at its quad's depth
    assert torch.equal(fr.pix_to_face[0, 20, 35] // 2, torch.argsort(z, stable=True)[:20])


def _grads(impl: str, name: str):
    verts, faces, intr, w2c, hw, K, near, far = _scene(name)
    dev = _need(impl)
    g = torch.Generator().manual_seed(0)
    attr = torch.randn(verts.shape[0], 5, generator=g, dtype=torch.float64)
    v = verts.to(dev, torch.float64).requires_grad_()
    a = attr.to(dev).requires_grad_()
    f, i, m = faces.to(dev), intr.to(dev, torch.float64), w2c.to(dev, torch.float64)
    if impl == "reference":
        fr = rasterize_reference(v, f, i, m, hw, K, near=near, far=far)
        feat = interpolate_reference(a, f, fr)
    else:
        fr = rasterize(v, f, i, m, hw, K, near=near, far=far)
        feat = interpolate(a, f, fr)
    wz = torch.randn(fr.zbuf.shape, generator=g, dtype=torch.float64).to(dev)
    wb = torch.randn(fr.bary_coords.shape, generator=g, dtype=torch.float64).to(dev)
    loss = (fr.zbuf * wz).sum() + (fr.bary_coords * wb).sum() + feat.square().sum()
    loss.backward()
    return v.grad.cpu(), a.grad.cpu()


GRAD_SCENES = ["soup0", "spheres_tiles", "grid_tilted", "layers_k4", "batched"]


@pytest.mark.parametrize("impl", ["reference", "cuda"])
@pytest.mark.parametrize("name", GRAD_SCENES)
def test_gradients_equal_cpu(impl, name):
    got = _grads(impl, name)
    want = _grads("cpu", name)
    assert want[0].abs().max() > 0 and want[1].abs().max() > 0
    rtol = 1e-7 if impl == "reference" else 1e-4
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=rtol, atol=rtol * float(y.abs().max()))


@pytest.mark.parametrize("impl", IMPLS)
def test_backward_bitwise_deterministic(impl):
    r1 = _grads(impl, "spheres_tiles")
    r2 = _grads(impl, "spheres_tiles")
    for x, y in zip(r1, r2):
        assert torch.equal(x, y)


@pytest.mark.parametrize("impl", ["cpu", "cuda"])
def test_interpolate_backward_grad_out_checked(impl):
    # one shared input check per op: a wrong grad_out shape is a ValueError on every device
    dev = _need(impl)
    attr = torch.randn(4, 2, dtype=torch.float64, device=dev)
    faces = torch.tensor([[0, 1, 2]], device=dev)
    p2f = torch.zeros(1, 2, 2, 1, dtype=torch.int64, device=dev)
    bary = torch.full((1, 2, 2, 1, 3), 1 / 3, dtype=torch.float64, device=dev)
    with pytest.raises(ValueError, match="grad_out must have shape"):
        torch.ops.dnmp.interpolate_bwd(attr, faces, p2f, bary, torch.zeros(1, 2, 2, 1, 3, dtype=torch.float64,
                                                                           device=dev))
    ga, gb = torch.ops.dnmp.interpolate_bwd(attr, faces, p2f, bary, torch.ones(1, 2, 2, 1, 2, dtype=torch.float64,
                                                                               device=dev))
    # 4 fragments of face 0, each with weight 1/3 per vertex and grad 1 per channel
    torch.testing.assert_close(ga.cpu(), torch.tensor([[4 / 3] * 2] * 3 + [[0.0, 0.0]], dtype=torch.float64))
