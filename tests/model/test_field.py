"""The radiance field's positional encoding against its plain-torch reference.

Two fast paths, each tested (`path` fixture): the compiled op `encode_fwd` (float32 on the
CPU: sin(pi 2^k x) by its own polynomials, exact reduction) and the GEMM + sin path
(`_PositionalEncoding`: cos t taken as sin(t + pi/2)). The reference rounds its argument
t = x 2^k pi to float32 before the sine, the GEMM path also t + pi/2 (6e-8 relative), so values
may differ by ~1e-7 |t| (|t| <= 2^(L-1) pi |x|). The backwards sum the same terms in another
order: float32 rounding of a sum of 2L terms scaled by up to 2^(L-1) pi. Hence atol 1e-6 on
values and rtol 1e-5 / atol 1e-5 on gradients at the frequencies of the default config.
"""

import pytest
import torch

import dnmp.model.field as field
from dnmp.model.field import positional_encoding, positional_encoding_reference
from dnmp.ops import backend

needs_op = pytest.mark.skipif(backend() != "cpp", reason="compiled kernels not built")


@pytest.fixture(params=[pytest.param("op", marks=needs_op), "gemm"])
def path(request):
    """Which fast path positional_encoding takes for float32 CPU tensors."""
    with field.compiled_encoding(request.param == "op"):
        assert field._encode_op_for(torch.zeros(1)) == (request.param == "op")
        yield request.param


@pytest.mark.parametrize("shape,freqs,scale", [((1000, 32), 2, 0.3), ((257, 3), 4, 1.0),
                                               ((5, 7, 3), 6, 1.0), ((40, 8), 1, 2.0)])
def test_positional_encoding_equals_the_reference_in_value_and_gradient(path, shape, freqs, scale):
    g = torch.Generator().manual_seed(freqs)
    x = (torch.randn(*shape, generator=g) * scale).requires_grad_()
    if x.shape[-1] == 3:  # view directions: unit vectors
        x = torch.nn.functional.normalize(x.detach(), dim=-1).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out, ref = positional_encoding(x, freqs), positional_encoding_reference(x_ref, freqs)
    assert out.shape == (*shape[:-1], shape[-1] * (1 + 2 * freqs))
    top = 2 ** (freqs - 1) * torch.pi * x.detach().abs().max()  # the largest argument
    torch.testing.assert_close(out, ref, rtol=0, atol=max(1e-6, 2e-7 * float(top)))
    d = shape[-1]
    torch.testing.assert_close(out[..., :d], x)  # the identity part is exact
    w = torch.randn(out.shape, generator=g)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5 * max(1.0, float(top)))
    # float64, and a gradient reaching only part of the encoding
    x64 = x.detach().double().requires_grad_()
    r64 = x.detach().double().requires_grad_()
    positional_encoding(x64, freqs)[..., 1:].pow(2).sum().backward()
    positional_encoding_reference(r64, freqs)[..., 1:].pow(2).sum().backward()
    assert x64.grad.dtype == torch.float64
    torch.testing.assert_close(x64.grad, r64.grad, rtol=1e-10, atol=1e-10)


def test_positional_encoding_zero_frequencies_and_no_grad(path):
    x = torch.randn(4, 3)
    assert positional_encoding(x, 0) is x
    top = 4 * torch.pi * float(x.abs().max())  # the largest argument: ~1e-7 |t| apart (module docstring)
    torch.testing.assert_close(positional_encoding(x, 3), positional_encoding_reference(x, 3), rtol=0,
                               atol=max(1e-6, 2e-7 * top))
    assert not positional_encoding(x, 3).requires_grad
    assert positional_encoding(torch.zeros(0, 5), 2).shape == (0, 25)


def test_positional_encoding_keeps_float32_under_autocast(path):
    """Under CPU autocast (bf16) the reference's elementwise ops stay float32; so does the
    GEMM of the fast encoding, forward and backward."""
    x = (torch.randn(64, 8) * 0.5).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = positional_encoding(x, 2)
        ref = positional_encoding_reference(x_ref, 2)
    assert out.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


# --- the training MLPs' low-precision products (mlp_low_precision) -------------------------

def _chain_reference_rounded(seq, x, g):
    """float64 forward and backward of a Linear/ReLU chain on bf16-rounded operands, rounding
    where `_LowPrecisionChain` rounds (inputs, weights, biases, each layer's result, each
    layer's output gradient): the independent twin of the bf16 path."""
    r = lambda t: t.detach().to(torch.bfloat16).double()
    lin = list(seq)[0::2]
    acts, a = [], r(x)
    for i, m in enumerate(lin):
        acts.append(a)
        a = r(a @ r(m.weight).T + r(m.bias))
        if i + 1 < len(lin):
            a = a.clamp_min(0)
    grads, gz = [], r(g)
    for i in reversed(range(len(lin))):
        grads.append((gz.T @ acts[i], gz.sum(0)))
        ga = gz @ r(lin[i].weight)
        gz = r(ga) * (acts[i] > 0) if i > 0 else ga
    return a, gz, grads[::-1]


def test_mlp_low_precision_gradcheck_in_float64():
    from dnmp.model.field import _LowPrecisionChain, _mlp
    torch.manual_seed(0)
    seq = _mlp(12, 10, 3, 2).double()
    x = torch.randn(30, 12, dtype=torch.float64, requires_grad=True)
    wb = [t for m in list(seq)[0::2] for t in (m.weight, m.bias)]
    # with float64 "rounding" the chain is the exact MLP: its hand-written backward is checked
    assert torch.autograd.gradcheck(lambda x, *wb: _LowPrecisionChain.apply(x, torch.float64, *wb), (x, *wb))
    torch.testing.assert_close(_LowPrecisionChain.apply(x, torch.float64, *wb), seq(x))


@pytest.mark.parametrize("layers,d_in", [(1, 160), (2, 63)])
def test_mlp_low_precision_bf16_matches_its_rounded_twin_and_float32(layers, d_in):
    from dnmp.model.field import _mlp, mlp_low_precision
    torch.manual_seed(layers)
    seq = _mlp(d_in, 64, 3 if layers == 2 else 64, layers)
    x = torch.randn(3000, d_in, requires_grad=True)
    out = mlp_low_precision(seq, x)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *seq.parameters()], g)
    ref_out, ref_gx, ref_layers = _chain_reference_rounded(seq, x, g)
    rel = lambda a, b: float((a.detach().double() - b).norm() / b.norm())
    # the twin rounds the same operands: the only differences are summation orders inside the
    # bf16 products (one bf16 ulp where a result sits on a rounding boundary)
    assert rel(out, ref_out) < 1e-3
    assert rel(grads[0], ref_gx) < 1e-2
    for (gw, gb), (rw, rb) in zip(zip(grads[1::2], grads[2::2]), ref_layers):
        assert rel(gw, rw) < 1e-2 and rel(gb, rb) < 1e-2
    # and against float32: bf16's rounding, not a wrong formula (a missing ReLU mask or a
    # transposed weight is off by O(1))
    out32 = seq(x)
    grads32 = torch.autograd.grad(out32, [x, *seq.parameters()], g)
    assert rel(out, out32.double()) < 1e-2
    for a, b in zip(grads, grads32):
        assert rel(a, b.double()) < 0.1
    assert out.dtype == torch.float32 and all(t.dtype == torch.float32 for t in grads)


def test_mlp_low_precision_rejects_other_modules():
    from dnmp.model.field import mlp_low_precision
    with pytest.raises(ValueError, match="Linear layers"):
        mlp_low_precision(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)),
                          torch.randn(2, 3))


def test_training_step_with_bf16_products_follows_the_float32_one():
    """The radiance MLPs switch to bf16 products for training (TrainConfig.bf16_matmul) and
    back; one forward of a small model agrees with float32 to bf16's rounding."""
    from dnmp.model.field import RadianceField
    if not hasattr(torch, "bfloat16"):
        pytest.skip("no bfloat16")
    torch.manual_seed(3)
    f = RadianceField(feature_dim=8, hidden=32)
    feats, dirs = torch.randn(500, 8), torch.nn.functional.normalize(torch.randn(500, 3), dim=-1)
    normals = torch.nn.functional.normalize(torch.randn(500, 3), dim=-1)
    a32, c32 = f(feats, dirs, normals)
    f.bf16_matmul = True
    a16, c16 = f(feats, dirs, normals)
    assert (a16 - a32).abs().max() < 1e-2 and (c16 - c32).abs().max() < 1e-2
    assert not torch.equal(c16, c32)  # the switch took effect


@needs_op
def test_encode_op_large_odd_values_and_errors():
    """The op beyond |2^k x| = 2^21 takes torch's float32 sin / cos of x * f_k (the same bits as
    the reference), agrees with it at quadrant boundaries and large arguments, keeps NaN, and
    refuses what it does not handle with one-line errors."""
    x = torch.tensor([[3.0e6, -0.25, 0.5, 1.0, 2048.0 + 0.125, float("nan"), 0.0, -1.5]])
    out = torch.ops.dnmp.encode_fwd(x, 3)
    ref = positional_encoding_reference(x, 3)
    assert out.shape == (1, 56)
    torch.testing.assert_close(out[:, :8], x, rtol=0, atol=0, equal_nan=True)  # the identity part
    enc, renc = out[0, 8:].view(8, 6), ref[0, 8:].view(8, 6)  # per channel: 3 sines, 3 cosines
    assert torch.equal(enc[0], renc[0])  # 3e6 >= 2^21: the fallback, torch's bits
    assert torch.isnan(enc[5]).all() and not torch.isnan(enc[[0, 1, 2, 3, 4, 6, 7]]).any()
    # exact reduction against the reference's rounded arguments: equal up to ~1e-7 |t|
    torch.testing.assert_close(enc[[1, 2, 3, 6, 7]], renc[[1, 2, 3, 6, 7]], rtol=0, atol=2e-6)
    torch.testing.assert_close(enc[4], renc[4], rtol=0, atol=3e-3)  # |t| up to 4 * 2048 pi
    with pytest.raises(TypeError, match="float32"):
        torch.ops.dnmp.encode_fwd(x.double(), 2)
    with pytest.raises(ValueError, match=r"shape \[N, D\]"):
        torch.ops.dnmp.encode_fwd(x[0], 2)
    with pytest.raises(ValueError, match="num_freqs"):
        torch.ops.dnmp.encode_fwd(x, -1)
    with pytest.raises(ValueError, match="grad must have the encoding's shape"):
        torch.ops.dnmp.encode_bwd(out[:, :5].contiguous(), out, 3)
    with pytest.raises(ValueError, match="not a multiple"):
        torch.ops.dnmp.encode_bwd(out[:, :5].contiguous(), out[:, :5].contiguous(), 3)
    assert torch.ops.dnmp.encode_fwd(torch.zeros(0, 4), 2).shape == (0, 20)


def test_compiled_encoding_switch_is_scoped():
    """compiled_encoding(False) forces the GEMM + sin path inside its block only, and puts the
    setting back when the block raises."""
    x = torch.zeros(1)
    before = field._encode_op_for(x)
    with pytest.raises(RuntimeError, match="inside"):
        with field.compiled_encoding(False):
            assert not field._encode_op_for(x)
            raise RuntimeError("inside")
    assert field._encode_op_for(x) == before
