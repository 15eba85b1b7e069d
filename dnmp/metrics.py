"""Image quality metrics: PSNR, SSIM and (where weights exist offline) LPIPS.

All take float32 images [H, W, 3] in [0, 1] (data_range = 1.0).
SSIM is torchmetrics' `structural_similarity_index_measure` (Wang et al. 2004:
Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, data_range 1.0),
computed per image on RGB and averaged over channels.
"""

from __future__ import annotations

import math

import torch


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"expected two [H, W, 3] images of equal shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB, data range 1: -10 log10(MSE). inf for identical images."""
    _check(pred, target)
    mse = torch.mean((pred.double() - target.double()) ** 2).item()
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """(sum of squared errors over the pixels where mask is true, averaged over their RGB
    values, number of those pixels): the parts of a PSNR pooled over several images.

    pred, target: float [H, W, 3] in [0, 1]; mask: bool [H, W]. An empty mask gives (0.0, 0).
    """
    _check(pred, target)
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask must be [H, W] = {tuple(pred.shape[:2])}, got {tuple(mask.shape)}")
    err = ((pred.double() - target.double()) ** 2).mean(-1)[mask]
    return float(err.sum()), int(err.numel())


def psnr_of_mse(sse: float, count: int) -> float | None:
    """PSNR in dB (data range 1) of a pooled squared error `sse` over `count` pixels; None
    when count is 0, inf when sse is 0."""
    if count == 0:
        return None
    return math.inf if sse == 0 else -10.0 * math.log10(sse / count)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Structural similarity (torchmetrics, Gaussian 11x11 window, sigma 1.5, data_range 1.0)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check(pred, target)
    p = pred.permute(2, 0, 1).unsqueeze(0).float()
    t = target.permute(2, 0, 1).unsqueeze(0).float()
    return float(structural_similarity_index_measure(p, t, data_range=1.0))


class LPIPSUnavailable(RuntimeError):
    """LPIPS cannot be computed here (its pretrained network weights are not available offline)."""


_LPIPS_MODEL = None


def lpips(pred: torch.Tensor, target: torch.Tensor) -> float:
    """LPIPS (AlexNet) via torchmetrics, if its backbone and weights load without a download.

    Raises:
        LPIPSUnavailable: with a one-line reason when they do not.
    """
    global _LPIPS_MODEL
    _check(pred, target)
    if _LPIPS_MODEL is None:
        try:
            import torchvision  # noqa: F401  (LPIPS backbones come from torchvision)
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            _LPIPS_MODEL = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
        except Exception as exc:  # ImportError, download failure, operator mismatch...
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LPIPSUnavailable(
                "LPIPS needs torchvision's pretrained AlexNet weights, not available offline "
                f"here ({type(exc).__name__}: {reason})") from None
    p = pred.permute(2, 0, 1).unsqueeze(0).float()
    t = target.permute(2, 0, 1).unsqueeze(0).float()
    _LPIPS_MODEL.to(p.device)  # the images' device (a no-op once there)
    return float(_LPIPS_MODEL(p, t))
