"""Readable errors (TypeError / ValueError) for bad arguments, from the public
functions and from direct torch.ops.dnmp callers."""

from __future__ import annotations

import pytest
import torch

from dnmp.ops import interpolate, interpolate_reference, rasterize, rasterize_reference

from .scenes import camera, random_soup

V, F = random_soup(0)
K, M = camera(8, 8)
GOOD = dict(verts=V, faces=F, intrinsics=K, world_to_cam=M, image_size=(8, 8))


def call(fn, **over):
    kw = dict(GOOD)
    kw.update(over)
    return fn(**kw)


BAD = [
    (dict(verts=V.numpy()), TypeError, "verts must be a torch.Tensor"),
    (dict(verts=V.half()), TypeError, "verts must be float32 or float64"),
    (dict(verts=V[:, :2]), ValueError, r"verts must have shape \[V, 3\]"),
    (dict(faces=F.float()), TypeError, "faces must be int32 or int64"),
    (dict(faces=F[:, :2]), ValueError, r"faces must have shape \[F, 3\]"),
    (dict(faces=F + 1000), ValueError, "faces index vert"),
    (dict(faces=F - 100), ValueError, "faces index vert"),
    (dict(intrinsics=K[:2]), ValueError, "intrinsics must have shape"),
    (dict(intrinsics=K.long()), TypeError, "intrinsics must be a floating point"),
    (dict(world_to_cam=M[:3]), ValueError, "world_to_cam must have shape"),
    (dict(intrinsics=K.expand(2, 3, 3), world_to_cam=M.expand(3, 4, 4)), ValueError, "batch sizes"),
    (dict(image_size=(0, 8)), ValueError, "image_size must be positive"),
    (dict(image_size=(8, -1)), ValueError, "image_size must be positive"),
    (dict(image_size=8), TypeError, "image_size must be a pair"),
    (dict(image_size=(8.0, 8)), TypeError, "image_size must be a pair"),
    (dict(faces_per_pixel=0), ValueError, "faces_per_pixel must be >= 1"),
    (dict(faces_per_pixel=2.0), TypeError, "faces_per_pixel must be an int"),
    (dict(near=1.0, far=1.0), ValueError, "near must be < far"),
    (dict(near=5.0, far=1.0), ValueError, "near must be < far"),
    (dict(near=-1.0), ValueError, "near must be >= 0"),
    (dict(near=float("nan")), ValueError, "NaN"),
    (dict(faces=F.to("meta")), ValueError, "faces is on meta but verts is on cpu"),
]


@pytest.mark.parametrize("fn", [rasterize, rasterize_reference])
@pytest.mark.parametrize("over,exc,msg", BAD)
def test_rasterize_errors(fn, over, exc, msg):
    with pytest.raises(exc, match=msg):
        call(fn, **over)


def _frags():
    return rasterize(V, F, K, M, (8, 8), 2)


@pytest.mark.parametrize("fn", [interpolate, interpolate_reference])
def test_interpolate_errors(fn):
    fr = _frags()
    attr = torch.randn(V.shape[0], 3)
    with pytest.raises(TypeError, match="attributes must be a torch.Tensor"):
        fn(attr.numpy(), F, fr)
    with pytest.raises(TypeError, match="attributes must be float32 or float64"):
        fn(attr.long(), F, fr)
    with pytest.raises(ValueError, match=r"attributes must have shape \[V, C\]"):
        fn(attr[:, 0], F, fr)
    with pytest.raises(ValueError, match="attributes has only"):
        fn(attr[:5], F, fr)
    with pytest.raises(TypeError, match="fragments must be a Fragments tuple"):
        fn(attr, F, fr.pix_to_face)
    with pytest.raises(ValueError, match="bary_coords must have shape"):
        fn(attr, F, (fr.pix_to_face, None, fr.bary_coords[..., :2]))
    with pytest.raises(TypeError, match="pix_to_face must be int32 or int64"):
        fn(attr, F, (fr.pix_to_face.float(), None, fr.bary_coords))
    with pytest.raises(ValueError, match="pix_to_face refers to face"):
        fn(attr, F[:3], fr)


def test_direct_op_errors(cpp):
    with pytest.raises(ValueError, match="faces_per_pixel must be >= 1"):
        torch.ops.dnmp.rasterize_fwd(V, F, K[None], M[None], 8, 8, 0, 0.05, 1e4)
    with pytest.raises(ValueError, match="need 0 <= near < far"):
        torch.ops.dnmp.rasterize_fwd(V, F, K[None], M[None], 8, 8, 1, 2.0, 1.0)
    with pytest.raises(ValueError, match="intrinsics must have shape"):
        torch.ops.dnmp.rasterize_fwd(V, F, K, M, 8, 8, 1, 0.05, 1e4)
    with pytest.raises(TypeError, match="verts must be float32 or float64"):
        torch.ops.dnmp.rasterize_fwd(V.half(), F, K[None], M[None], 8, 8, 1, 0.05, 1e4)
    with pytest.raises(ValueError, match="faces index vert"):
        torch.ops.dnmp.rasterize_fwd(V, F + 100, K[None], M[None], 8, 8, 1, 0.05, 1e4)
    # the CPU kernel checks indices in its face pass: the whole range is reported, and
    # a face whose vertex is out of range is never read (no crash, one line)
    bad = F.clone()
    bad[-1, 1] = -3
    with pytest.raises(ValueError, match=rf"faces index vertices in \[-3, {int(F.max())}\] but verts has only"):
        torch.ops.dnmp.rasterize_fwd(V, bad, K[None], M[None], 8, 8, 1, 0.05, 1e4)
    bad[-1, 1] = V.shape[0]
    with pytest.raises(ValueError, match=rf"\[0, {V.shape[0]}\]"):
        torch.ops.dnmp.rasterize_fwd(V, bad, K[None], M[None], 8, 8, 1, 0.05, 1e4)
