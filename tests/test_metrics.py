"""Metrics: pooled (masked) PSNR against numpy, and the covered / uncovered split of `evaluate`."""

import math

import numpy as np
import pytest
import torch

from dnmp import metrics


def test_masked_mse_and_pooled_psnr_against_numpy():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 7, 9, 3, generator=g)
    mask = torch.rand(7, 9, generator=g) > 0.4
    sse, n = metrics.masked_mse(a, b, mask)
    an, bn, mn = a.numpy().astype(np.float64), b.numpy().astype(np.float64), mask.numpy()
    ref = ((an - bn) ** 2).mean(-1)[mn]
    assert n == int(mn.sum()) and sse == pytest.approx(ref.sum(), rel=1e-12)
    assert metrics.psnr_of_mse(sse, n) == pytest.approx(-10 * math.log10(ref.mean()), rel=1e-12)
    # all pixels: the ordinary PSNR of the image
    full = metrics.psnr_of_mse(*metrics.masked_mse(a, b, torch.ones(7, 9, dtype=torch.bool)))
    assert full == pytest.approx(metrics.psnr(a, b), rel=1e-12)
    assert metrics.masked_mse(a, b, torch.zeros(7, 9, dtype=torch.bool)) == (0.0, 0)
    assert metrics.psnr_of_mse(0.0, 0) is None and metrics.psnr_of_mse(0.0, 5) == math.inf
    with pytest.raises(ValueError, match="mask must be"):
        metrics.masked_mse(a, b, mask[:3])


def test_evaluate_splits_psnr_by_primitive_coverage(tiny_run):
    from dnmp.evaluate import COVERED_OPACITY, evaluate, render_frame
    from dnmp.train.run import open_run

    run = open_run(tiny_run)
    res = evaluate(run.renderer, run.scene, "test", progress=False)
    sse = {True: 0.0, False: 0.0}
    cnt = {True: 0, False: 0}
    for frame in run.scene.frames_by_split("test"):
        out = render_frame(run.renderer, run.scene, frame)
        err = ((out["rgb"].double().numpy() - run.scene.load_image(frame).astype(np.float64)) ** 2).mean(-1)
        cov = out["coverage"].numpy() >= COVERED_OPACITY
        for key in (True, False):
            sse[key] += err[cov == key].sum()
            cnt[key] += int((cov == key).sum())
    assert cnt[True] > 0 and cnt[False] > 0  # the wall scene has both
    assert res["test_psnr_covered"] == pytest.approx(-10 * math.log10(sse[True] / cnt[True]), rel=1e-9)
    assert res["test_psnr_uncovered"] == pytest.approx(-10 * math.log10(sse[False] / cnt[False]), rel=1e-9)
    assert res["test_covered_fraction"] == pytest.approx(cnt[True] / (cnt[True] + cnt[False]))
