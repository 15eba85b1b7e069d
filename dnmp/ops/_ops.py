"""Fake (meta) implementations and autograd formulas for the ``torch.ops.dnmp`` custom ops.

The kernels themselves are registered from C++ (``csrc/bindings.cpp``,
``TORCH_LIBRARY(dnmp, m)``). Attaching autograd here, through
``torch.library.register_autograd``, makes the ops differentiable for every
caller: :func:`dnmp.ops.rasterize`, direct ``torch.ops.dnmp.*`` users and
``torch.compile`` graphs alike.

Gradients: ``rasterize_fwd`` differentiates zbuf and bary_coords w.r.t. verts
only (coverage, intrinsics and world_to_cam get no gradient);
``interpolate_fwd`` differentiates w.r.t. attributes and bary; ``encode_fwd`` w.r.t. x
(``encode_bwd``, once differentiable).
"""

from __future__ import annotations

import torch

_rf = torch.ops.dnmp.rasterize_fwd
_rb = torch.ops.dnmp.rasterize_bwd
_if = torch.ops.dnmp.interpolate_fwd
_ib = torch.ops.dnmp.interpolate_bwd


@torch.library.register_fake("dnmp::rasterize_fwd")
def _rasterize_fwd_fake(verts, faces, intrinsics, world_to_cam, height, width, faces_per_pixel, near, far):
    B = intrinsics.shape[0]
    shape = (B, height, width, faces_per_pixel)
    return (
        verts.new_empty(shape, dtype=torch.int64),
        verts.new_empty(shape),
        verts.new_empty(shape + (3,)),
    )


@torch.library.register_fake("dnmp::rasterize_bwd")
def _rasterize_bwd_fake(verts, faces, intrinsics, world_to_cam, pix_to_face, grad_zbuf, grad_bary):
    return torch.empty_like(verts)


@torch.library.register_fake("dnmp::interpolate_fwd")
def _interpolate_fwd_fake(attributes, faces, pix_to_face, bary):
    return attributes.new_empty(tuple(pix_to_face.shape) + (attributes.shape[1],))


@torch.library.register_fake("dnmp::interpolate_bwd")
def _interpolate_bwd_fake(attributes, faces, pix_to_face, bary, grad_out, bary_grad=True):
    return torch.empty_like(attributes), torch.empty_like(bary)


def _rasterize_setup(ctx, inputs, output):
    verts, faces, intrinsics, world_to_cam = inputs[:4]
    ctx.save_for_backward(verts, faces, intrinsics, world_to_cam, output[0])


def _rasterize_backward(ctx, grad_p2f, grad_zbuf, grad_bary):
    verts, faces, intrinsics, world_to_cam, p2f = ctx.saved_tensors
    if grad_zbuf is None:
        grad_zbuf = torch.zeros(p2f.shape, dtype=verts.dtype, device=verts.device)
    if grad_bary is None:
        grad_bary = torch.zeros(tuple(p2f.shape) + (3,), dtype=verts.dtype, device=verts.device)
    gv = _rb(verts, faces, intrinsics, world_to_cam, p2f,
             grad_zbuf.contiguous(), grad_bary.contiguous())
    return gv, None, None, None, None, None, None, None, None


torch.library.register_autograd("dnmp::rasterize_fwd", _rasterize_backward, setup_context=_rasterize_setup)


@torch.library.register_fake("dnmp::adam_rows_")
def _adam_rows_fake(param, exp_avg, exp_avg_sq, rows, grad, step_size, beta1, beta2, eps):
    return None


def _interpolate_setup(ctx, inputs, output):
    attributes, faces, pix_to_face, bary = inputs
    ctx.save_for_backward(attributes, faces, pix_to_face, bary)


def _interpolate_backward(ctx, grad_out):
    attributes, faces, pix_to_face, bary = ctx.saved_tensors
    need_bary = ctx.needs_input_grad[3]
    ga, gb = _ib(attributes, faces, pix_to_face, bary, grad_out.contiguous(), need_bary)
    return ga, None, None, (gb if need_bary else None)


torch.library.register_autograd("dnmp::interpolate_fwd", _interpolate_backward, setup_context=_interpolate_setup)


@torch.library.register_fake("dnmp::shade_fwd")
def _shade_fwd_fake(features, faces, normals, pix_to_face, bary, zbuf, view_dirs, trunk_w, trunk_b,
                    opacity_w, opacity_b, color_w, color_b, feature_freqs, dir_freqs,
                    min_transmittance, surface_opacity, bf16_matmul=False):
    n = pix_to_face.shape[0]
    return (features.new_empty((n, 3)), features.new_empty((n,)), features.new_empty((n,)),
            features.new_empty((n,)))


@torch.library.register_fake("dnmp::background_fwd")
def _background_fwd_fake(view_dirs, ray_origins, sky_w, sky_b, sky_freqs, texels, centre, radii,
                         bf16_matmul=False):
    return view_dirs.new_empty((view_dirs.shape[0], 3))


@torch.library.register_fake("dnmp::encode_fwd")
def _encode_fwd_fake(x, num_freqs):
    return x.new_empty((x.shape[0], x.shape[1] * (1 + 2 * num_freqs)))


@torch.library.register_fake("dnmp::encode_bwd")
def _encode_bwd_fake(grad, encoded, num_freqs):
    return encoded.new_empty((encoded.shape[0], encoded.shape[1] // (1 + 2 * num_freqs)))


def _encode_setup(ctx, inputs, output):
    ctx.num_freqs = inputs[1]
    ctx.save_for_backward(output)  # the backward reads sin and cos from the encoding itself


def _encode_backward(ctx, grad):
    (encoded,) = ctx.saved_tensors
    return torch.ops.dnmp.encode_bwd(grad.contiguous(), encoded, ctx.num_freqs), None


torch.library.register_autograd("dnmp::encode_fwd", _encode_backward, setup_context=_encode_setup)
