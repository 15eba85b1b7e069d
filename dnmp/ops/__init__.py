"""Rasterization and interpolation kernels for DNMP.

Public API::

    rasterize(verts, faces, intrinsics, world_to_cam, image_size,
              faces_per_pixel=1, near=0.05, far=1e4) -> Fragments
    interpolate(attributes, faces, fragments) -> Tensor [..., K, C]
    backend() -> "cpp" | "reference"

Fast path: C++ (and CUDA where built) kernels registered as ``torch.ops.dnmp.*``
custom ops, built ahead of time by ``setup.py`` or just in time on first use
(see ``_extension.py``). ``DNMP_FORCE_REFERENCE=1`` forces the pure-torch
reference (``rasterize_reference`` / ``interpolate_reference``).
"""

from ._common import Fragments
from ._extension import backend
from ._reference import interpolate_reference, rasterize_reference
from .functional import interpolate, rasterize

__all__ = [
    "Fragments",
    "backend",
    "interpolate",
    "interpolate_reference",
    "rasterize",
    "rasterize_reference",
]
