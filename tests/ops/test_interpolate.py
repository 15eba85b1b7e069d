"""interpolate (C++) vs interpolate_reference (pure torch).

Tolerance: both compute sum_i bary_i * attr[v_i] per channel in float32, but
the association order may differ (C++: (b0*a0 + b1*a1) + b2*a2; reference:
torch.sum over the vertex axis), so rtol = atol = 1e-6.
"""

from __future__ import annotations

import pytest
import torch

from dnmp.ops import Fragments, interpolate, interpolate_reference, rasterize

from .scenes import camera, spheres


@pytest.fixture(scope="module")
def frags():
    verts, faces = spheres(6, seed=5)
    intr, w2c = camera(32, 40, f=25.0)
    return verts, faces, rasterize(verts, faces, intr, w2c, (32, 40), 4)


@pytest.mark.parametrize("C", [1, 3, 32])
def test_matches_reference(cpp, frags, C):
    verts, faces, fr = frags
    attr = torch.randn(verts.shape[0], C, generator=torch.Generator().manual_seed(C))
    a = interpolate(attr, faces, fr)
    b = interpolate_reference(attr, faces, fr)
    assert a.shape == (1, 32, 40, 4, C)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert torch.all(a[fr.pix_to_face < 0] == 0)


def test_interpolates_positions(frags):
    verts, faces, fr = frags
    pos = interpolate(verts, faces, fr)
    hit = fr.pix_to_face >= 0
    # the interpolated world point lies at depth zbuf (camera = identity)
    torch.testing.assert_close(pos[..., 2][hit], fr.zbuf[hit], rtol=1e-5, atol=1e-5)


def test_arbitrary_leading_shape(frags):
    # a trainer caches sampled pixels as [1, 1, N, K] fragments: a batch of rays
    verts, faces, fr = frags
    attr = torch.randn(verts.shape[0], 8)
    full = interpolate(attr, faces, fr)
    idx = torch.randperm(32 * 40)[:100]
    p = fr.pix_to_face.reshape(-1, 4)[idx][None, None]
    b = fr.bary_coords.reshape(-1, 4, 3)[idx][None, None]
    out = interpolate(attr, faces, Fragments(p, None, b))
    assert out.shape == (1, 1, 100, 4, 8)
    torch.testing.assert_close(out[0, 0], full.reshape(-1, 4, 8)[idx], rtol=0, atol=0)
    # also a flat [N, K] layout and int32 indices
    out2 = interpolate(attr, faces.int(), (p[0, 0].int(), None, b[0, 0]))
    torch.testing.assert_close(out2, out[0, 0], rtol=0, atol=0)


def test_all_empty_and_no_faces():
    attr = torch.randn(4, 3)
    p2f = torch.full((2, 5, 1), -1)
    bary = torch.zeros(2, 5, 1, 3)
    out = interpolate(attr, torch.zeros(0, 3, dtype=torch.int64), (p2f, None, bary))
    assert out.shape == (2, 5, 1, 3) and torch.all(out == 0)
    out = interpolate_reference(attr, torch.zeros(0, 3, dtype=torch.int64), (p2f, None, bary))
    assert out.shape == (2, 5, 1, 3) and torch.all(out == 0)


def test_float64(cpp, frags):
    verts, faces, fr = frags
    attr = torch.randn(verts.shape[0], 2, dtype=torch.float64)
    a = interpolate(attr, faces, fr)
    assert a.dtype == torch.float64
    torch.testing.assert_close(a, interpolate_reference(attr, faces, fr), rtol=1e-12, atol=1e-12)
