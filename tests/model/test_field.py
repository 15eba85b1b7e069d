"""The radiance field's positional encoding against its plain-torch reference.

Tolerances: the fast encoding takes cos t as sin(t + pi/2); the float32 sum rounds t by up
to half an ulp of |t| + pi/2 (6e-8 relative), so values may differ by ~1e-7 |t| (|t| <=
2^(L-1) pi |x|). Its backward sums the same terms in another order (a GEMM): float32
rounding of a sum of 2L terms scaled by up to 2^(L-1) pi. Hence atol 1e-6 on values and
rtol 1e-5 / atol 1e-5 on gradients at the frequencies of the default config.
"""

import pytest
import torch

from dnmp.model.field import positional_encoding, positional_encoding_reference


@pytest.mark.parametrize("shape,freqs,scale", [((1000, 32), 2, 0.3), ((257, 3), 4, 1.0),
                                               ((5, 7, 3), 6, 1.0), ((40, 8), 1, 2.0)])
def test_positional_encoding_equals_the_reference_in_value_and_gradient(shape, freqs, scale):
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


def test_positional_encoding_zero_frequencies_and_no_grad():
    x = torch.randn(4, 3)
    assert positional_encoding(x, 0) is x
    torch.testing.assert_close(positional_encoding(x, 3), positional_encoding_reference(x, 3), rtol=0, atol=1e-6)
    assert not positional_encoding(x, 3).requires_grad
    assert positional_encoding(torch.zeros(0, 5), 2).shape == (0, 25)


def test_positional_encoding_keeps_float32_under_autocast():
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
