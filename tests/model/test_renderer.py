"""Renderer: sparse feature gathering equals dense; coverage and background behave."""

import torch

from dnmp.model import voxelize
from dnmp.model.renderer import SURFACE_OPACITY, camera_rays
from dnmp.train.config import TrainConfig
from dnmp.train.factory import build_renderer


def _small_renderer():
    torch.manual_seed(0)
    pts = torch.rand(300, 3) * torch.tensor([3.0, 2.0, 1.0]) + torch.tensor([-1.5, -1.0, 4.0])
    cfg = TrainConfig(feature_dim=6, hidden=16)
    return build_renderer([voxelize(pts, 0.5)], cfg)


def _frags(r, h=16, w=20):
    K = torch.tensor([[15.0, 0, (w - 1) / 2], [0, 15.0, (h - 1) / 2], [0, 0, 1]])
    fr = r.rasterize(K, torch.eye(4), (h, w))
    k = fr.pix_to_face.shape[-1]
    return K, fr.pix_to_face.view(-1, k), fr.bary_coords.view(-1, k, 3), camera_rays(K, torch.eye(4), h, w)


def test_sparse_and_dense_shading_agree_in_value_and_gradient():
    r = _small_renderer()
    _, p2f, bary, dirs = _frags(r)
    assert (p2f[:, 0] >= 0).any() and (p2f[:, 0] < 0).any()  # some hits, some background
    out_d = r.shade_rays(p2f, bary, dirs, sparse_features=False)
    out_d["rgb"].pow(2).sum().backward()
    g_dense = r.primitives.features.grad.clone()
    r.zero_grad(set_to_none=True)
    out_s = r.shade_rays(p2f, bary, dirs, sparse_features=True)
    out_s["rgb"].pow(2).sum().backward()
    g_sparse = r.primitives.features.grad
    assert g_sparse.is_sparse
    torch.testing.assert_close(out_s["rgb"], out_d["rgb"])
    torch.testing.assert_close(g_sparse.to_dense(), g_dense)
    assert g_dense.abs().sum() > 0


def test_pixels_without_faces_take_background_colour():
    r = _small_renderer()
    _, p2f, bary, dirs = _frags(r)
    out = r.shade_rays(p2f, bary, dirs)
    miss = p2f[:, 0] < 0
    torch.testing.assert_close(out["rgb"][miss], r.background(dirs[miss]))
    torch.testing.assert_close(out["background_transmittance"][miss], torch.ones(int(miss.sum())))
    hit = ~miss
    assert (out["background_transmittance"][hit] < 1).all()
    torch.testing.assert_close(out["weights"].sum(1) + out["background_transmittance"],
                               torch.ones(p2f.shape[0]))


def test_render_matches_shading_of_its_fragments():
    r = _small_renderer()
    K, p2f, bary, dirs = _frags(r)
    img = r.render(K, torch.eye(4), 16, 20)
    ref = r.shade_rays(p2f, bary, dirs)["rgb"].view(16, 20, 3)
    # early ray termination drops contributions below 1e-4 transmittance per ray
    torch.testing.assert_close(img["rgb"], ref.clamp(0, 1), atol=2e-4, rtol=0)
    assert img["depth"][img["coverage"] > 0.5].min() > 3.0  # the block starts ~4 m away


def test_layered_shading_equals_full_compositing_without_termination():
    r = _small_renderer()
    torch.nn.init.normal_(r.field.opacity_head.bias, std=2.0)  # a spread of opacities
    K, p2f, bary, dirs = _frags(r)
    zbuf = torch.where(p2f >= 0, torch.rand(p2f.shape) + 4.0, torch.full(p2f.shape, -1.0))
    full = r.shade_rays(p2f, bary, dirs)
    lay = r.shade_rays_early_exit(p2f, bary, zbuf, dirs, min_transmittance=0.0)
    torch.testing.assert_close(lay["rgb"], full["rgb"])
    torch.testing.assert_close(lay["background_transmittance"], full["background_transmittance"])
    w = full["weights"]
    expect = torch.where(w.sum(1) > 0, (w * zbuf).sum(1) / w.sum(1).clamp_min(1e-12), 0.0)
    torch.testing.assert_close(lay["mean_depth"], expect)
    # surface depth: the first layer whose accumulated opacity reaches SURFACE_OPACITY
    acc = torch.cumsum(w, 1)
    reached = acc >= SURFACE_OPACITY
    first = reached.float().argmax(1, keepdim=True)
    surface = torch.where(reached.any(1), zbuf.gather(1, first)[:, 0], expect)
    assert reached.any(1).sum() > 10 and (surface != expect).sum() > 10  # the case is exercised
    torch.testing.assert_close(lay["depth"], surface)


def test_unique_inverse_equals_torch_unique():
    from dnmp.model.renderer import unique_inverse

    g = torch.Generator().manual_seed(3)
    for n, size in ((0, 10), (1, 1), (500, 50), (500, 100000)):
        ids = torch.randint(0, size, (n,), generator=g)
        u, inv = unique_inverse(ids, size)
        u_ref, inv_ref = torch.unique(ids, return_inverse=True)
        assert torch.equal(u, u_ref) and torch.equal(inv, inv_ref)
        assert inv.dtype == torch.int64


def test_sparse_lookup_remap_equals_unique_bit_for_bit():
    r = _small_renderer()
    _, p2f, bary, dirs = _frags(r)
    outs, grads = [], []
    for how in ("unique", "remap"):
        r.sparse_lookup = how
        r.zero_grad(set_to_none=True)
        out = r.shade_rays(p2f, bary, dirs, sparse_features=True)["rgb"]
        out.pow(2).sum().backward()
        outs.append(out.detach())
        grads.append(r.primitives.features.grad.coalesce())
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0].indices(), grads[1].indices()) and torch.equal(grads[0].values(), grads[1].values())
    assert grads[1].values().abs().sum() > 0
