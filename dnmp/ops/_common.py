"""Shared pieces of the ops API: the Fragments tuple and input validation.

Validation lives here so that the fast path and the pure-torch reference raise
the same readable errors for the same mistakes.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Sequence

import torch

__all__ = ["Fragments", "RasterInputs", "check_rasterize_inputs", "check_interpolate_inputs"]


class Fragments(NamedTuple):
    """Output of :func:`dnmp.ops.rasterize` (see DESIGN.md, "fragments").

    pix_to_face: int64 [B, H, W, K], index of the face covering the pixel centre,
        the K nearest sorted near to far, -1 where fewer than K faces cover it.
    zbuf: float [B, H, W, K], camera-space depth z (metres) of the surface point,
        -1 where empty.
    bary_coords: float [B, H, W, K, 3], perspective-correct barycentric
        coordinates w.r.t. the face's vertices in face order, 0 where empty.

    The leading "image" dims may be any shape for :func:`dnmp.ops.interpolate`
    (e.g. [1, 1, N, K] built from sampled pixels); only the trailing K (and 3 for
    bary_coords) are fixed.
    """

    pix_to_face: torch.Tensor
    zbuf: torch.Tensor
    bary_coords: torch.Tensor


class RasterInputs(NamedTuple):
    verts: torch.Tensor  # [V,3] float32/float64
    faces: torch.Tensor  # [F,3] int64
    intrinsics: torch.Tensor  # [B,3,3] same dtype as verts
    world_to_cam: torch.Tensor  # [B,4,4] same dtype as verts
    height: int
    width: int
    faces_per_pixel: int
    near: float
    far: float


_FLOATS = (torch.float32, torch.float64)
_INTS = (torch.int32, torch.int64)


def _need_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_faces(faces) -> None:
    if faces.dtype not in _INTS:
        raise TypeError(f"faces must be int32 or int64, got {faces.dtype}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must have shape [F, 3], got {list(faces.shape)}")


def check_rasterize_inputs(
    verts, faces, intrinsics, world_to_cam, image_size, faces_per_pixel, near, far,
    *, warn_non_finite: bool = True, check_indices: bool = True,
) -> RasterInputs:
    """Validate and normalise rasterize() arguments; raise TypeError/ValueError.

    check_indices=False skips the face index range check (the compiled kernels
    do it themselves, raising the same ValueError)."""
    _need_tensor("verts", verts)
    _need_tensor("faces", faces)
    _need_tensor("intrinsics", intrinsics)
    _need_tensor("world_to_cam", world_to_cam)
    if verts.dtype not in _FLOATS:
        raise TypeError(f"verts must be float32 or float64, got {verts.dtype}")
    if verts.dim() != 2 or verts.shape[1] != 3:
        raise ValueError(f"verts must have shape [V, 3], got {list(verts.shape)}")
    _check_faces(faces)
    if not intrinsics.is_floating_point():
        raise TypeError(f"intrinsics must be a floating point tensor, got {intrinsics.dtype}")
    if not world_to_cam.is_floating_point():
        raise TypeError(f"world_to_cam must be a floating point tensor, got {world_to_cam.dtype}")
    for name, t in (("faces", faces), ("intrinsics", intrinsics), ("world_to_cam", world_to_cam)):
        if t.device != verts.device:
            raise ValueError(
                f"{name} is on {t.device} but verts is on {verts.device}; all inputs must be on one device"
            )
    if intrinsics.shape[-2:] != (3, 3) or intrinsics.dim() not in (2, 3):
        raise ValueError(f"intrinsics must have shape [3, 3] or [B, 3, 3], got {list(intrinsics.shape)}")
    if world_to_cam.shape[-2:] != (4, 4) or world_to_cam.dim() not in (2, 3):
        raise ValueError(f"world_to_cam must have shape [4, 4] or [B, 4, 4], got {list(world_to_cam.shape)}")
    K3 = intrinsics if intrinsics.dim() == 3 else intrinsics.unsqueeze(0)
    M4 = world_to_cam if world_to_cam.dim() == 3 else world_to_cam.unsqueeze(0)
    B = max(K3.shape[0], M4.shape[0])
    if K3.shape[0] not in (1, B) or M4.shape[0] not in (1, B):
        raise ValueError(
            f"batch sizes of intrinsics ({K3.shape[0]}) and world_to_cam ({M4.shape[0]}) do not match"
        )
    if B == 0:
        raise ValueError("need at least one camera (batch size 0)")
    K3 = K3.to(verts.dtype).expand(B, 3, 3).contiguous()
    M4 = M4.to(verts.dtype).expand(B, 4, 4).contiguous()

    if isinstance(image_size, torch.Size):
        image_size = tuple(image_size)
    if not isinstance(image_size, Sequence) or len(image_size) != 2 or not all(_is_int(s) for s in image_size):
        raise TypeError(f"image_size must be a pair of ints (H, W), got {image_size!r}")
    H, W = int(image_size[0]), int(image_size[1])
    if H <= 0 or W <= 0:
        raise ValueError(f"image_size must be positive, got (H, W) = ({H}, {W})")
    if not _is_int(faces_per_pixel):
        raise TypeError(f"faces_per_pixel must be an int, got {type(faces_per_pixel).__name__}")
    if faces_per_pixel < 1:
        raise ValueError(f"faces_per_pixel must be >= 1, got {faces_per_pixel}")
    near = float(near)
    far = float(far)
    if math.isnan(near) or math.isnan(far) or near < 0.0:
        raise ValueError(f"near must be >= 0 and near/far not NaN, got near={near}, far={far}")
    if not near < far:
        raise ValueError(f"near must be < far, got near={near}, far={far}")

    faces64 = faces.to(torch.int64).contiguous()
    V = verts.shape[0]
    if check_indices and faces64.numel() > 0 and not torch.compiler.is_compiling():
        lo, hi = (int(x) for x in torch.aminmax(faces64))
        if lo < 0 or hi >= V:
            # the kernels' wording (csrc/cpu/rasterize_cpu.cpp): one message on every path
            raise ValueError(f"faces index vertices in [{lo}, {hi}] but verts has only {V} rows")
    if torch.compiler.is_compiling():
        # data-dependent checks would break the graph; the kernels still check indices
        # and never cover with non-finite vertices, only the warning is skipped.
        warn_non_finite = False
    # a finite sum (one pass) means every vertex is finite; otherwise count them (a
    # non-finite sum of finite values is an overflow: the count is then 0)
    if warn_non_finite and V > 0 and not bool(torch.isfinite(verts.detach().sum())):
        bad = int((~torch.isfinite(verts.detach())).any(dim=1).sum())
        if bad:
            warnings.warn(
                f"dnmp.ops.rasterize: {bad} of {V} vertices are non-finite (NaN/Inf); "
                "faces touching them are not rasterized",
                RuntimeWarning,
                stacklevel=3,
            )
    return RasterInputs(verts.contiguous(), faces64, K3, M4, H, W, int(faces_per_pixel), near, far)


def check_interpolate_inputs(attributes, faces, fragments, *, check_indices: bool = True):
    """Validate interpolate() arguments; returns (attributes, faces64, pix_to_face, bary)."""
    _need_tensor("attributes", attributes)
    _need_tensor("faces", faces)
    if not isinstance(fragments, tuple) or len(fragments) != 3:
        raise TypeError("fragments must be a Fragments tuple (pix_to_face, zbuf, bary_coords)")
    p2f, _, bary = fragments
    _need_tensor("fragments.pix_to_face", p2f)
    _need_tensor("fragments.bary_coords", bary)
    if attributes.dtype not in _FLOATS:
        raise TypeError(f"attributes must be float32 or float64, got {attributes.dtype}")
    if attributes.dim() != 2:
        raise ValueError(f"attributes must have shape [V, C], got {list(attributes.shape)}")
    _check_faces(faces)
    if p2f.dtype not in _INTS:
        raise TypeError(f"pix_to_face must be int32 or int64, got {p2f.dtype}")
    if bary.dtype not in _FLOATS:
        raise TypeError(f"bary_coords must be float32 or float64, got {bary.dtype}")
    if p2f.dim() < 1 or bary.shape != p2f.shape + (3,):
        raise ValueError(
            f"bary_coords must have shape pix_to_face.shape + (3,) = {list(p2f.shape) + [3]}, "
            f"got {list(bary.shape)}"
        )
    for name, t in (("faces", faces), ("pix_to_face", p2f), ("bary_coords", bary)):
        if t.device != attributes.device:
            raise ValueError(
                f"{name} is on {t.device} but attributes is on {attributes.device}; "
                "all inputs must be on one device"
            )
    faces64 = faces.to(torch.int64).contiguous()
    V = attributes.shape[0]
    if check_indices and faces64.numel() > 0:
        lo, hi = (int(x) for x in torch.aminmax(faces64))
        if lo < 0 or hi >= V:
            raise ValueError(f"faces index vertices in [{lo}, {hi}] but attributes has only {V} rows")
    p2f64 = p2f.to(torch.int64).contiguous()
    if check_indices and p2f64.numel() > 0 and int(p2f64.max()) >= faces64.shape[0]:
        raise ValueError(
            f"pix_to_face refers to face {int(p2f64.max())} but faces has only {faces64.shape[0]} rows"
        )
    return attributes.contiguous(), faces64, p2f64, bary.to(attributes.dtype).contiguous()
