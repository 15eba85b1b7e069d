"""Far field (issue 13): cube-map lookup, shells with parallax, and its place in the renderer."""

import math

import numpy as np
import pytest
import torch

from dnmp.model import FarField, voxelize
from dnmp.model.field import cube_map_texel
from dnmp.model.renderer import composite
from dnmp.train.config import TrainConfig
from dnmp.train.factory import build_renderer


def _ref_cube(d, size):
    """Independent per-ray cube-map coordinates (plain Python)."""
    out = []
    for v in d.tolist():
        axis = max(range(3), key=lambda i: abs(v[i]))
        others = [i for i in range(3) if i != axis]
        m = abs(v[axis])
        face = 2 * axis + (1 if v[axis] < 0 else 0)
        x = (v[others[0]] / m + 1) * size / 2 - 0.5
        y = (v[others[1]] / m + 1) * size / 2 - 0.5
        out.append((face, x, y))
    return out


def test_cube_map_texel_matches_a_plain_reference():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(200, 3, generator=g, dtype=torch.float64)
    face, x, y, major = cube_map_texel(d, 16)
    for i, (f, rx, ry) in enumerate(_ref_cube(d, 16)):
        assert int(face[i]) == f
        assert math.isclose(float(x[i]), rx, abs_tol=1e-9) and math.isclose(float(y[i]), ry, abs_tol=1e-9)
    assert torch.allclose(major, d.abs().amax(1))
    assert set(face.tolist()) == set(range(6))


def _ref_far_field(ff, origins, dirs):
    """Ray-sphere intersection and bilinear texel reads, one ray and shell at a time (numpy)."""
    size, tex = ff.size, ff.texels.detach().double().numpy()
    rgb = np.zeros((len(origins), ff.num_shells, 3))
    alpha = np.zeros((len(origins), ff.num_shells))
    for n, (o, d) in enumerate(zip(origins.double().numpy(), dirs.double().numpy())):
        o = o - ff.centre.double().numpy()
        for s, r in enumerate(ff.radii.double().numpy()):
            if o @ o >= r * r:
                continue  # starts outside this shell
            b = o @ d
            t = -b + math.sqrt(b * b - (o @ o - r * r))
            p = o + t * d
            assert abs(np.linalg.norm(p) - r) < 1e-6 * r
            (face, x, y), = _ref_cube(torch.from_numpy(p[None]), size)
            x0, y0 = math.floor(x), math.floor(y)
            acc = np.zeros(4)
            for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
                w = (x - x0 if dx else 1 - (x - x0)) * (y - y0 if dy else 1 - (y - y0))
                xi, yi = min(max(x0 + dx, 0), size - 1), min(max(y0 + dy, 0), size - 1)
                acc += w * tex[(s * 6 + face) * size * size + yi * size + xi]
            rgb[n, s] = 1 / (1 + np.exp(-acc[:3]))
            alpha[n, s] = 1 / (1 + np.exp(-acc[3]))
    return rgb, alpha


def _far_field(num_shells=3, size=8):
    ff = FarField(num_shells, size, 2.0)
    ff.place(torch.tensor([[-4.0, -1.0, 2.0], [6.0, 1.0, 12.0]]))
    with torch.no_grad():
        ff.texels.copy_(torch.randn(ff.texels.shape, generator=torch.Generator().manual_seed(1)))
    return ff


def test_far_field_values_match_the_reference_and_gradcheck():
    ff = _far_field()
    g = torch.Generator().manual_seed(2)
    origins = torch.randn(40, 3, generator=g) * 3 + ff.centre
    origins[:5] = ff.centre + torch.tensor([0.0, 0.0, 1.0]) * float(ff.radii[0]) * 1.5  # outside shell 0
    dirs = torch.nn.functional.normalize(torch.randn(40, 3, generator=g), dim=1)
    rgb, alpha = ff(origins, dirs)
    ref_rgb, ref_alpha = _ref_far_field(ff, origins, dirs)
    inside = ref_alpha[..., None] > 0  # a shell the ray starts outside has no colour to compare
    np.testing.assert_allclose(rgb.detach().numpy() * inside, ref_rgb, atol=2e-5)
    np.testing.assert_allclose(alpha.detach().numpy(), ref_alpha, atol=2e-5)
    assert (alpha[:5, 0] == 0).all() and (alpha[:5, 1:] > 0).all()
    ff64 = _far_field(2, 4).double()
    o64, d64 = origins[5:12].double(), dirs[5:12].double()
    tex = ff64.texels.detach().clone().requires_grad_(True)

    def through(t):  # the far field as a function of its texels
        saved = ff64.texels
        del ff64.texels
        ff64.texels = t
        try:
            return ff64(o64, d64)
        finally:
            del ff64.texels
            ff64.texels = saved
    assert torch.autograd.gradcheck(through, (tex,))


def test_a_point_on_a_shell_looks_the_same_from_two_cameras():
    # parallax: a direction-only map would give one colour per direction; a shell gives one
    # colour per point of the shell, whichever camera sees it
    ff = _far_field(1, 16)
    r = float(ff.radii[0])
    point = ff.centre + r * torch.nn.functional.normalize(torch.tensor([0.3, -0.2, 1.0]), dim=0)
    cams = ff.centre + torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.5, -1.0]])
    dirs = torch.nn.functional.normalize(point - cams, dim=1)
    rgb, alpha = ff(cams, dirs)
    torch.testing.assert_close(rgb[0], rgb[1], atol=1e-4, rtol=0)
    torch.testing.assert_close(alpha[0], alpha[1], atol=1e-4, rtol=0)
    # ... while the same direction from the second camera meets another texel
    other, _ = ff(cams[1:], dirs[:1])
    assert (other[0] - rgb[0]).abs().max() > 1e-3


def test_place_encloses_the_primitives_and_rejects_bad_input():
    ff = FarField(2, 4, 3.0)
    pts = torch.tensor([[0.0, 0, 0], [10.0, 0, 0], [0, 4.0, 2.0]])
    ff.place(pts)
    assert ((pts - ff.centre).norm(dim=1) <= ff.radii[0] + 1e-5).all()
    torch.testing.assert_close(ff.radii[1], 3.0 * ff.radii[0])
    with pytest.raises(ValueError, match="finite"):
        ff.place(torch.tensor([[float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="num_shells"):
        FarField(0, 4)


def test_renderer_composites_shells_over_the_sky_and_needs_origins():
    torch.manual_seed(0)
    pts = torch.rand(100, 3) * 2 + torch.tensor([-1.0, -1.0, 4.0])
    r = build_renderer([voxelize(pts, 0.5)], TrainConfig(feature_dim=6, hidden=16, far_shells=2,
                                                           far_shell_texels=4))
    with torch.no_grad():
        r.far_field.texels.normal_()
    dirs = torch.nn.functional.normalize(torch.randn(30, 3), dim=1)
    origins = r.far_field.centre.expand(30, 3)  # inside every shell
    got = r.background_colour(dirs, origins)
    rgb, alpha = r.far_field(origins, dirs)
    want = composite(alpha, rgb, r.background(dirs))[0]
    torch.testing.assert_close(got, want)
    assert (got - r.background(dirs)).abs().max() > 1e-3  # the shells show
    with pytest.raises(ValueError, match="ray_origins"):
        r.background_colour(dirs)
    # no far field: the sky alone, origins or not
    r0 = build_renderer([voxelize(pts, 0.5)], TrainConfig(feature_dim=6, hidden=16, far_shells=0))
    assert r0.far_field is None
    torch.testing.assert_close(r0.background_colour(dirs, origins), r0.background(dirs))
