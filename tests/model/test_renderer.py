"""Renderer: sparse feature gathering equals dense; coverage and background behave."""

import torch

from dnmp.model import voxelize
from dnmp.model.renderer import SURFACE_OPACITY, camera_rays
from dnmp.train.config import TrainConfig
from dnmp.train.factory import build_renderer


def _small_renderer():
    torch.manual_seed(0)
    pts = torch.rand(300, 3) * torch.tensor([3.0, 2.0, 1.0]) + torch.tensor([-1.5, -1.0, 4.0])
    cfg = TrainConfig(feature_dim=6, hidden=16, far_shells=0)  # primitives and sky (far field: test_far_field.py)
    r = build_renderer([voxelize(pts, 0.5)], cfg)
    r.config.bf16_matmul = False  # renders in float32: compared with shade_rays to 2e-4
    return r


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


def test_shade_rays_takes_non_contiguous_fragments():
    """Fragments in any memory layout (a transposed pix_to_face, strided barycentrics and
    directions) shade as their contiguous copies, values and gradients, bit for bit."""
    r = _small_renderer()
    _, p2f, bary, dirs = _frags(r)
    outs, grads = [], []
    for layout in ("contiguous", "strided"):
        p, b, d = p2f, bary, dirs
        if layout == "strided":
            p = p2f.t().contiguous().t()
            b = bary.permute(2, 0, 1).contiguous().permute(1, 2, 0)
            d = torch.stack([dirs, dirs], 2)[:, :, 0]
            assert not (p.is_contiguous() or b.is_contiguous() or d.is_contiguous())
        r.zero_grad(set_to_none=True)
        out = r.shade_rays(p, b, d, sparse_features=False)
        out["rgb"].pow(2).sum().backward()
        outs.append(out["rgb"])
        grads.append(r.primitives.features.grad.clone())
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])


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


def _unculled(r, K, w2c, size):
    """Fragments of every face of every scale (no frustum culling), as `rasterize`
    concatenates them: fine scale first, global face indices."""
    from dnmp import ops

    verts, _ = r.geometry()
    per_face = r.primitives.faces_per_primitive
    out = []
    for s, (a, b) in enumerate(r.primitives.scale_ranges()):
        fr = ops.rasterize(verts, r.primitives.faces[a * per_face: b * per_face], K, w2c, size,
                           faces_per_pixel=r.faces_per_pixel_by_scale()[s], near=r.config.near,
                           far=r.config.far)
        p2f = fr.pix_to_face
        out.append(fr._replace(pix_to_face=torch.where(p2f >= 0, p2f + a * per_face, p2f)))
    return [torch.cat(t, dim=-1 if i < 2 else -2) for i, t in enumerate(zip(*out))]


def _street_renderer():
    """Two scales of primitives all around the origin (behind, beside, through the near
    plane, beyond the image borders), deformed by random latents."""
    torch.manual_seed(3)
    pts = (torch.rand(4000, 3) - 0.5) * torch.tensor([16.0, 6.0, 16.0])
    cfg = TrainConfig(feature_dim=4, hidden=8)
    r = build_renderer([voxelize(pts, 0.5), voxelize(pts, 1.0)], cfg)
    with torch.no_grad():
        r.primitives.latents.normal_()
        r.primitives.offsets.uniform_(-0.1, 0.1)
    r.refresh_geometry()
    return r


def test_frustum_culling_keeps_the_fragments_of_all_faces():
    r = _street_renderer()
    h, w = 24, 40
    K = torch.tensor([[20.0, 0, (w - 1) / 2], [0, 20.0, (h - 1) / 2], [0, 0, 1]])
    poses = []
    for yaw in (0.0, 0.7, 2.5, -1.9):  # looking along, across and back through the scene
        c, s = torch.cos(torch.tensor(yaw)), torch.sin(torch.tensor(yaw))
        w2c = torch.eye(4)
        w2c[:3, :3] = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
        w2c[:3, 3] = torch.tensor([0.3, -0.2, 0.1])
        poses.append(w2c)
    culled_some = False
    for w2c in poses:
        got = r.rasterize(K, w2c, (h, w))
        ref = _unculled(r, K, w2c, (h, w))
        assert (ref[0] >= 0).any()
        assert torch.equal(got.pix_to_face, ref[0])
        assert torch.equal(got.zbuf, ref[1]) and torch.equal(got.bary_coords, ref[2])
        from dnmp.model.renderer import CULL_MIN_SHARE, visible_primitives

        c, rad = r.bounds()
        vis = visible_primitives(c, rad, K, w2c, (h, w), r.config.near, r.config.far)
        # the gathered path runs when at most CULL_MIN_SHARE of the primitives are visible
        culled_some |= bool(vis.float().mean() < CULL_MIN_SHARE)
    assert culled_some  # the test exercises culling, not an all-visible scene
    # nothing in view (the scene is behind a camera 100 m away): empty fragments, no error
    away = torch.eye(4)
    away[2, 3] = -100.0
    got = r.rasterize(K, away, (h, w))
    assert (got.pix_to_face == -1).all() and torch.equal(got.pix_to_face, _unculled(r, K, away, (h, w))[0])
    # a batch of cameras: the union of their frusta, same fragments as unculled
    got = r.rasterize(K, torch.stack(poses), (h, w))
    ref = _unculled(r, K, torch.stack(poses), (h, w))
    assert torch.equal(got.pix_to_face, ref[0]) and torch.equal(got.zbuf, ref[1])


def test_visible_primitives_against_sampled_sphere_points():
    """A sphere is kept whenever any of many points sampled in it projects inside the
    image at depth in (near, far); spheres far outside every border are dropped."""
    from dnmp.model.renderer import visible_primitives

    torch.manual_seed(1)
    h, w = 30, 50
    K = torch.tensor([[25.0, 0, 24.5], [0, 25.0, 14.5], [0, 0, 1]], dtype=torch.float64)
    centres = (torch.rand(3000, 3, dtype=torch.float64) - 0.5) * torch.tensor([20.0, 20.0, 20.0], dtype=torch.float64)
    radii = torch.rand(3000, dtype=torch.float64) * 0.8 + 0.05
    vis = visible_primitives(centres, radii, K, torch.eye(4, dtype=torch.float64), (h, w), 0.05, 8.0)
    d = torch.randn(3000, 200, 3, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True) * torch.rand(3000, 200, 1, dtype=torch.float64) ** (1 / 3)
    p = centres[:, None] + d * radii[:, None, None]
    z = p[..., 2]
    u = 25.0 * p[..., 0] / z + 24.5
    v = 25.0 * p[..., 1] / z + 14.5
    inside = ((z > 0.05) & (z < 8.0) & (u > -0.5) & (u < w - 0.5) & (v > -0.5) & (v < h - 0.5)).any(1)
    assert inside.any() and (~vis).any()
    assert not (inside & ~vis).any()  # never drops a visible sphere
    # and culls most of the invisible ones (the test is not "keep everything")
    assert (~vis & ~inside).sum() > 0.8 * (~inside).sum()


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
