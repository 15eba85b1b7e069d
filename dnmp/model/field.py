"""Radiance field of DNMP (paper Sec. 3.3; DESIGN.md "Radiance").

Interpolated vertex features -> positional encoding -> MLP -> opacity (sigmoid);
its hidden state + encoded view direction + the cosine between view direction and
surface normal -> MLP -> RGB (sigmoid). Rays that hit no primitive take their
colour from a small direction-conditioned background MLP.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function


def positional_encoding(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """NeRF-style encoding [x, sin(2^k pi x), cos(2^k pi x)], k < num_freqs.

    Args:
        x: float [..., D].
        num_freqs: L >= 0 frequencies.
    Returns:
        [..., D * (1 + 2 L)]: x, then per input channel d the sin of its L frequencies
        and then their cos. Differentiable.

    float32 on a CPU with the compiled kernels: the op `torch.ops.dnmp.encode_fwd`
    (csrc/cpu/encoding_cpu.cpp; sin(pi 2^k x) by its own polynomials after an exact reduction,
    the backward from the encoding's own sines and cosines). Otherwise one GEMM and one sin
    (`_PositionalEncoding`), not the reference's broadcasts and concatenations over
    dimensions of size L (which run as millions of 2-element loops on the CPU). Both equal
    `positional_encoding_reference` up to float rounding: the reference rounds its arguments
    x 2^k pi before the sine and the GEMM path takes cos t as sin(t + pi/2) (about 1e-7 |t|
    either way), and the backwards sum their terms in another order
    (tests/model/test_field.py).
    """
    if num_freqs == 0:
        return x
    if _encode_op_for(x):
        out = torch.ops.dnmp.encode_fwd(x.reshape(-1, x.shape[-1]), num_freqs)
        return out.view(*x.shape[:-1], out.shape[-1])
    return _PositionalEncoding.apply(x, num_freqs)


def _encode_op_for(x: torch.Tensor) -> bool:
    """Whether `positional_encoding` takes the compiled op `torch.ops.dnmp.encode_fwd`
    (csrc/cpu/encoding_cpu.cpp: its own sin(pi 2^k x), no ATen sines; a fifth of a training
    step on CPUs whose MKL sines are slow): float32 on a CPU with the compiled kernels built,
    unless `compiled_encoding(False)` is in effect. The GEMM + sin path below and
    `positional_encoding_reference` stay its references (tests/model/test_field.py)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not _ENCODE_OP["on"]:
        return False
    if "ok" not in _ENCODE_OP:
        from ..ops._extension import kernels_for
        _ENCODE_OP["ok"] = kernels_for(x.device) and hasattr(torch.ops.dnmp, "encode_fwd")
    return _ENCODE_OP["ok"]


# "on": whether the compiled op may be taken (`compiled_encoding`); "ok": whether it is
# there, decided once
_ENCODE_OP: dict = {"on": True}


@contextlib.contextmanager
def compiled_encoding(enabled: bool):
    """Within the block, `positional_encoding` takes the compiled op where it can (True, the
    default outside any block) or always the GEMM + sin path (False), e.g. so that a torch
    reference shares no sine code with the fused ops, or to time the two paths. Restores the
    previous setting on exit, exceptions included. Not thread-local."""
    before = _ENCODE_OP["on"]
    _ENCODE_OP["on"] = bool(enabled)
    try:
        yield
    finally:
        _ENCODE_OP["on"] = before


def _frequencies(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    return (2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)) * torch.pi


def positional_encoding_reference(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """`positional_encoding` in plain torch ops (autograd's backward): the reference."""
    if num_freqs == 0:
        return x
    xf = x.unsqueeze(-1) * _frequencies(x, num_freqs)  # [..., D, L]
    enc = torch.cat([torch.sin(xf), torch.cos(xf)], dim=-1).flatten(-2)
    return torch.cat([x, enc], dim=-1)


def _encoding_map(x: torch.Tensor, num_freqs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B float [D, D(1+2L)], b float [D(1+2L)]) with x @ B + b = [x, t, t + pi/2] per
    channel, t = its L products x_d 2^k pi: each column of B has one non-zero entry, so
    the GEMM rounds each product once, as the reference's x * freqs does."""
    d = x.shape[-1]
    f = _frequencies(x, num_freqs)
    width = d * (1 + 2 * num_freqs)
    B = torch.zeros(d, width, dtype=x.dtype, device=x.device)
    B[:, :d] = torch.eye(d, dtype=x.dtype, device=x.device)
    per = B[:, d:].view(d, d, 2 * num_freqs)
    torch.diagonal(per, dim1=0, dim2=1).copy_(torch.cat([f, f]).unsqueeze(1).expand(-1, d))
    phase = torch.cat([torch.zeros(num_freqs, dtype=x.dtype, device=x.device),
                       torch.full((num_freqs,), torch.pi / 2, dtype=x.dtype, device=x.device)])
    b = torch.cat([torch.zeros(d, dtype=x.dtype, device=x.device), phase.repeat(d)])
    return B, b


class _PositionalEncoding(torch.autograd.Function):
    """out = x @ B + b, then sin on the encoded columns; the backward is
    d/dx = [g_x, g_enc * cos(arg)] @ B^T (cos of the encoded columns' arguments, kept
    from the forward: [N, 2 L D] floats). Every op works on long contiguous rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, num_freqs: int) -> torch.Tensor:
        d = x.shape[-1]
        B, b = _encoding_map(x, num_freqs)
        # x's precision even under autocast, as the reference's elementwise ops (an
        # addmm would run in bf16 there, and the arguments of sin need the bits)
        x2 = x.reshape(-1, d)
        with torch.autocast(x.device.type, enabled=False):
            # the encoded columns as a contiguous tensor of their own: sin / cos of a column
            # slice of `out` take ATen's scalar strided loop on the CPU (~9x slower on [44k, 128])
            enc = torch.addmm(b[d:], x2, B[:, d:])
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(torch.cos(enc), B)
        out = torch.empty(x2.shape[0], B.shape[1], dtype=enc.dtype, device=enc.device)
        out[:, :d] = x2
        out[:, d:] = enc.sin_()
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        cos_arg, B = ctx.saved_tensors
        d = B.shape[0]
        g = grad.reshape(-1, B.shape[1]).to(B.dtype)
        with torch.autocast(g.device.type, enabled=False):
            dx = torch.addmm(g[:, :d], g[:, d:] * cos_arg, B[:, d:].T)
        return dx.view(*grad.shape[:-1], d), None


def linear_chain(seq: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """(weights, biases) of an `nn.Sequential` Linear, ReLU, Linear, ..., Linear (ReLU between
    layers, none after the last) or of one Linear, as the module's own parameters (not
    detached), else None (then neither the fused shading nor `mlp_low_precision` applies)."""
    mods = list(seq) if isinstance(seq, nn.Sequential) else [seq]
    lin, act = mods[0::2], mods[1::2]
    if not all(isinstance(m, nn.Linear) and m.bias is not None for m in lin) or \
            not all(isinstance(m, nn.ReLU) for m in act) or len(act) != len(lin) - 1:
        return None
    return [m.weight for m in lin], [m.bias for m in lin]


class _LowPrecisionChain(torch.autograd.Function):
    """A Linear/ReLU chain whose matrix products take `dtype` operands (bfloat16 for speed;
    float64 in the gradient check), accumulated in float32 (or wider), results rounded to
    `dtype`; the output and the gradients are returned in the input's dtype.

    Forward, per layer i: a_0 = x rounded to dtype; z_i = a_i @ W_i^T + b_i in one product
    (torch.addmm; W_i and b_i rounded to dtype, the result rounded once to dtype);
    a_{i+1} = relu(z_i); the output z_last in x's dtype. Backward: g_last = dL/dz_last rounded
    to dtype, dL/dW_i = g_i^T a_i, dL/db_i = g_i^T 1, dL/da_i = g_i W_i (products accumulated
    in float32, results rounded to dtype),
    g_{i-1} = dL/da_i where a_i > 0 (`threshold_backward`), all in dtype. Saves the rounded
    a_i: the backward is that of the rounded forward. Staying in dtype between the layers
    avoids casts, which cost as much as the products on a CPU. Rows are padded with zeros to a
    multiple of _ROW_BUCKET (`_padded`) and the padding dropped from the outputs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dtype: torch.dtype, *wb: torch.Tensor) -> torch.Tensor:
        ws, bs = wb[0::2], wb[1::2]
        wl = [w.to(dtype) for w in ws]
        m = x.shape[0]
        a = _padded(x, dtype)
        acts = [a]
        for i, (w, b) in enumerate(zip(wl, bs)):
            a = torch.addmm(b.to(dtype), a, w.T)
            if i + 1 < len(wl):
                a = a.clamp_min_(0)
                acts.append(a)
        ctx.save_for_backward(*acts, *wl)
        ctx.layers, ctx.in_dtype = len(wl), x.dtype
        return a[:m].to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        n = ctx.layers
        saved = ctx.saved_tensors
        acts, wl = saved[:n], saved[n:]
        out: list[torch.Tensor | None] = [None] * (2 * n)
        m = grad.shape[0]
        g = _padded(grad, wl[0].dtype)  # zero rows: the padding adds nothing to the sums
        gx = None
        for i in reversed(range(n)):
            if ctx.needs_input_grad[2 + 2 * i]:
                out[2 * i] = (g.T @ acts[i]).to(ctx.in_dtype)
            if ctx.needs_input_grad[3 + 2 * i]:  # a product too: sum(.., dtype=) casts g first
                out[2 * i + 1] = (g.T @ g.new_ones(g.shape[0])).to(ctx.in_dtype)
            if i > 0:
                g = torch.ops.aten.threshold_backward(g @ wl[i], acts[i], 0)
            elif ctx.needs_input_grad[0]:
                gx = (g @ wl[0])[:m].to(ctx.in_dtype)
        return (gx, None, *out)


# `_LowPrecisionChain` pads its rows to a multiple of this: oneDNN (torch's bf16 CPU matmul)
# builds and caches a kernel per matrix shape, ~1 ms each, and the covered fragments of a
# training step differ in number from step to step
_ROW_BUCKET = 1024


def _padded(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x [M, D] cast to dtype, with zero rows up to a multiple of _ROW_BUCKET (one copy)."""
    m = x.shape[0]
    mp = -(-m // _ROW_BUCKET) * _ROW_BUCKET
    out = torch.empty(mp, x.shape[1], dtype=dtype, device=x.device)
    out[:m].copy_(x)
    out[m:].zero_()
    return out


def mlp_low_precision(seq: nn.Module, x: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """`seq(x)` for a Linear/ReLU chain (`linear_chain`) with `dtype` matrix operands
    (`_LowPrecisionChain`), differentiable in x and the chain's parameters.

    x: float [N, D_in] (any leading shape is flattened). Returns x's dtype [..., D_out].
    On this project's CPU (AMX) bfloat16 products run ~5x faster than float32 ones; the
    outputs differ from float32 by bf16's rounding (relative ~4e-3). The plain module call
    `seq(x)` is the reference (tests/model/test_field.py). Raises ValueError if `seq` is not
    such a chain."""
    chain = linear_chain(seq)
    if chain is None:
        raise ValueError("mlp_low_precision: needs Linear layers with biases and ReLU between them")
    ws, bs = chain
    flat = x.reshape(-1, x.shape[-1])
    wb = [t for pair in zip(ws, bs) for t in pair]
    out = _LowPrecisionChain.apply(flat, dtype, *wb)
    return out.view(*x.shape[:-1], out.shape[-1])


def _run_mlp(seq: nn.Module, x: torch.Tensor, bf16_matmul: bool) -> torch.Tensor:
    """seq(x), or with bf16 products (`mlp_low_precision`) when the module is told to."""
    return mlp_low_precision(seq, x) if bf16_matmul else seq(x)


def _mlp(d_in: int, hidden: int, d_out: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = d_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, d_out))
    return nn.Sequential(*mods)


class RadianceField(nn.Module):
    """Opacity and view-dependent colour from interpolated primitive features."""

    def __init__(self, feature_dim: int = 32, hidden: int = 64, feature_freqs: int = 2,
                 dir_freqs: int = 4):
        super().__init__()
        self.feature_freqs = feature_freqs
        self.dir_freqs = dir_freqs
        d_feat = feature_dim * (1 + 2 * feature_freqs)
        self.trunk = _mlp(d_feat, hidden, hidden, 1)
        self.opacity_head = nn.Linear(hidden, 1)
        d_dir = 3 * (1 + 2 * dir_freqs) + 1
        self.color_head = _mlp(hidden + d_dir, hidden, 3, 1)
        # differentiable forward with bf16 matrix operands (`mlp_low_precision`) for training
        # steps; set by the radiance stage (`TrainConfig.bf16_matmul`), not saved
        self.bf16_matmul = False

    def forward(self, features: torch.Tensor, view_dirs: torch.Tensor,
                normals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            features: float32 [N, C] interpolated features at N surface samples.
            view_dirs: float32 [N, 3] unit ray directions, world frame.
            normals: float32 [N, 3] unit face normals, world frame (any sign).
        Returns:
            opacity float32 [N] in (0, 1), rgb float32 [N, 3] in (0, 1).
        """
        # record_function ranges name the stages for `dnmp profile --breakdown`
        with record_function("shade.encoding"):
            x = positional_encoding(features, self.feature_freqs)
            cos = (view_dirs * normals).sum(-1, keepdim=True).abs()
            e_dir = positional_encoding(view_dirs, self.dir_freqs)
        with record_function("shade.mlp_trunk"):
            h = _run_mlp(self.trunk, x, self.bf16_matmul)
        with record_function("shade.mlp_heads"):
            # the opacity head has one output: a float32 matrix-vector product is cheap
            opacity = torch.sigmoid(self.opacity_head(h)).squeeze(-1)
            d = torch.cat([torch.relu(h), e_dir, cos], dim=-1)
            rgb = torch.sigmoid(_run_mlp(self.color_head, d, self.bf16_matmul))
        return opacity, rgb


class BackgroundField(nn.Module):
    """Colour of rays that leave the primitives (sky, beyond LiDAR range): MLP(PE(direction))."""

    def __init__(self, hidden: int = 64, dir_freqs: int = 6):
        super().__init__()
        self.dir_freqs = dir_freqs
        self.mlp = _mlp(3 * (1 + 2 * dir_freqs), hidden, 3, 2)
        self.bf16_matmul = False  # as RadianceField.bf16_matmul

    def forward(self, view_dirs: torch.Tensor) -> torch.Tensor:
        """view_dirs float32 [N, 3] unit, world frame -> rgb float32 [N, 3] in (0, 1)."""
        with record_function("shade.background"):
            x = positional_encoding(view_dirs, self.dir_freqs)
            return torch.sigmoid(_run_mlp(self.mlp, x, self.bf16_matmul))


def cube_map_texel(d: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cube-map coordinates of directions (no pole, unlike an equirectangular map).

    d: float [M, 3], any non-zero length. Returns (face int64 [M] in 0..5: 2 * axis + (d[axis] < 0),
    x, y float [M] continuous texel coordinates in [-0.5, size - 0.5] (texel centres at
    integers), and the face's major-axis magnitude |d[axis]| float [M]). The in-face axes are
    the other two world axes in increasing order; a learned texture needs no other orientation.
    """
    a = d.abs()
    axis = a.argmax(dim=1)
    major = a.gather(1, axis.unsqueeze(1)).squeeze(1)
    # the two in-face axes: axis 0 -> (1, 2), 1 -> (0, 2), 2 -> (0, 1)
    other = (axis.unsqueeze(1) <= torch.arange(2, device=d.device)).long() + torch.arange(2, device=d.device)
    uv = d.gather(1, other) / major.clamp_min(1e-12).unsqueeze(1)  # [-1, 1]
    neg = d.gather(1, axis.unsqueeze(1)).squeeze(1) < 0
    face = 2 * axis + neg.long()
    xy = (uv + 1.0) * (0.5 * size) - 0.5
    return face, xy[:, 0], xy[:, 1], major


class FarField(nn.Module):
    """Distant structure with parallax (issue 13): S concentric spheres ("shells") around the
    primitives, each an RGBA cube-map texture, composited near to far behind the primitives
    and in front of the direction-only sky (`BackgroundField`).

    Follows multi-sphere images (Attal et al., ECCV 2020, "MatryODShka") and NeRF++'s idea that
    the outside of a bounded scene is best parametrised around it: a ray from a camera inside
    the shells meets each shell once, so a shell's texel is one spot at a known distance
    and seen from a moving camera it moves with parallax, unlike a direction-only map.
    Radii: `radius * ratio ** i`, i < S, around `centre` (set by `place` from the primitives,
    so the innermost shell encloses them). Rays that start outside a shell skip it.

    Texels are stored as logits float32 [S * 6 * size * size, 4] (RGB, opacity) and read with
    bilinear interpolation within a cube face (clamped at face edges).
    """

    def __init__(self, num_shells: int = 4, size: int = 64, ratio: float = 2.0):
        super().__init__()
        if num_shells < 1 or size < 2 or ratio <= 1.0:
            raise ValueError(f"FarField: need num_shells >= 1, size >= 2, ratio > 1 "
                             f"(got {num_shells}, {size}, {ratio})")
        self.num_shells, self.size, self.ratio = num_shells, size, float(ratio)
        self.register_buffer("centre", torch.zeros(3))
        self.register_buffer("radii", torch.ones(num_shells))
        init = torch.zeros(num_shells * 6 * size * size, 4)
        init[:, 3] = -4.0  # nearly transparent: the sky shows until a shell learns content
        self.texels = nn.Parameter(init)

    @torch.no_grad()
    def place(self, centres: torch.Tensor) -> None:
        """Centre the shells on primitive centres float [P, 3] (world, metres) and make the
        innermost one enclose them all (at least 1 m)."""
        c = centres.float()
        if c.numel() == 0 or not torch.isfinite(c).all():
            raise ValueError("FarField.place: needs finite primitive centres")
        mid = (c.amin(0) + c.amax(0)) / 2
        r0 = max(1.0, float((c - mid).norm(dim=1).max()))
        self.centre.copy_(mid)
        self.radii.copy_(r0 * self.ratio ** torch.arange(self.num_shells, dtype=torch.float32))

    def forward(self, origins: torch.Tensor, view_dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            origins: float32 [N, 3] ray origins (camera centres), world frame, metres.
            view_dirs: float32 [N, 3] unit ray directions, world frame.
        Returns:
            rgb float32 [N, S, 3] in (0, 1) and opacity float32 [N, S] in [0, 1) of each
            shell, near to far (0 where the ray starts outside the shell).
        """
        n, s, size = view_dirs.shape[0], self.num_shells, self.size
        with record_function("shade.far_field"):
            o = origins - self.centre
            b = (o * view_dirs).sum(-1, keepdim=True)                     # [N, 1]
            c = (o * o).sum(-1, keepdim=True) - self.radii ** 2             # [N, S]
            inside = c < 0
            t = -b + torch.sqrt((b * b - c).clamp_min(0.0))                 # far root: > 0 inside
            p = o.unsqueeze(1) + t.unsqueeze(-1) * view_dirs.unsqueeze(1)  # [N, S, 3] on the shell
            face, x, y, _ = cube_map_texel(p.reshape(-1, 3), size)
            x0f, y0f = torch.floor(x), torch.floor(y)
            fx, fy = (x - x0f).unsqueeze(1), (y - y0f).unsqueeze(1)
            x0 = x0f.long().clamp(0, size - 1)
            y0 = y0f.long().clamp(0, size - 1)
            x1 = (x0f.long() + 1).clamp(0, size - 1)
            y1 = (y0f.long() + 1).clamp(0, size - 1)
            shell = torch.arange(s, device=o.device).repeat(n)
            base = (shell * 6 + face) * (size * size)
            idx = torch.stack([base + y0 * size + x0, base + y0 * size + x1,
                               base + y1 * size + x0, base + y1 * size + x1], dim=1)  # [N*S, 4]
            w = torch.cat([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=1)
            # index_select, not F.embedding: its CPU backward (index_add_) is ~3x faster than
            # embedding's sort-based one, and gives the same sums
            corners = self.texels.index_select(0, idx.reshape(-1)).view(*idx.shape, 4)
            logits = (corners * w.unsqueeze(-1)).sum(1).view(n, s, 4)
            rgb = torch.sigmoid(logits[..., :3])
            alpha = torch.sigmoid(logits[..., 3]) * inside.to(logits.dtype)
        return rgb, alpha
