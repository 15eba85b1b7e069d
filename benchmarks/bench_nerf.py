"""Time a vanilla NeRF of the paper's configuration on this machine, for the README's
side-by-side row (DNMP's Table: NeRF renders the same frame far slower).

Vanilla NeRF (Mildenhall et al. 2020): per ray 64 stratified coarse samples and 128
importance samples (the fine network evaluates all 64 + 128), each network 8 layers of
256 with a skip connection at the 5th, positional encoding of 10 frequencies for
positions and 4 for directions, a 128-wide colour branch; volume rendering of both
passes. Random weights (the cost does not depend on them), rays of a KITTI-like camera,
no autograd. Prints the median over --runs of --rays rays, in ms per 1000 pixels, and
optionally the dnmp render of the same size from `dnmp profile --json` output (--dnmp).

    python benchmarks/bench_nerf.py [--rays 2048] [--runs 3] [--threads N] [--dnmp prof.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn


def encode(x: torch.Tensor, freqs: int) -> torch.Tensor:
    f = (2.0 ** torch.arange(freqs, dtype=x.dtype)) * torch.pi
    xf = (x.unsqueeze(-1) * f).flatten(-2)
    return torch.cat([x, torch.sin(xf), torch.cos(xf)], -1)


class NeRF(nn.Module):
    """8 x 256 MLP, skip at layer 5, density head, 128-wide view-dependent colour head."""

    def __init__(self, d_pos=63, d_dir=27, width=256, depth=8, skip=4):
        super().__init__()
        self.skip = skip
        self.layers = nn.ModuleList(
            [nn.Linear(d_pos if i == 0 else width + (d_pos if i == skip + 1 else 0), width) for i in range(depth)])
        self.sigma = nn.Linear(width, 1)
        self.feat = nn.Linear(width, width)
        self.rgb = nn.Sequential(nn.Linear(width + d_dir, width // 2), nn.ReLU(), nn.Linear(width // 2, 3))

    def forward(self, x, d):
        h = x
        for i, layer in enumerate(self.layers):
            h = torch.relu(layer(h))
            if i == self.skip:
                h = torch.cat([h, x], -1)
        return torch.relu(self.sigma(h)).squeeze(-1), torch.sigmoid(self.rgb(torch.cat([self.feat(h), d], -1)))


def volume_render(sigma, rgb, t):
    delta = torch.cat([t[:, 1:] - t[:, :-1], torch.full_like(t[:, :1], 1e10)], -1)
    alpha = 1.0 - torch.exp(-sigma * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], -1), -1)[:, :-1]
    w = alpha * trans
    return (w.unsqueeze(-1) * rgb).sum(1), w


def sample_pdf(bins, weights, n):
    pdf = (weights + 1e-5) / (weights + 1e-5).sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
    u = torch.rand(cdf.shape[0], n)
    idx = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[1] - 1)
    lo, hi = cdf.gather(1, idx - 1), cdf.gather(1, idx)
    blo, bhi = bins.gather(1, idx - 1), bins.gather(1, idx)
    return blo + (u - lo) / (hi - lo).clamp_min(1e-5) * (bhi - blo)


@torch.no_grad()
def render(coarse, fine, origins, dirs, near=0.5, far=80.0, n_coarse=64, n_fine=128):
    n = origins.shape[0]
    t = near + (far - near) * (torch.arange(n_coarse) + torch.rand(n, n_coarse)) / n_coarse
    enc_d = encode(dirs, 4)

    def run(net, t):
        pts = origins[:, None] + dirs[:, None] * t[..., None]
        s = t.shape[1]
        sigma, rgb = net(encode(pts, 10).reshape(n * s, -1), enc_d.repeat_interleave(s, 0))
        return volume_render(sigma.view(n, s), rgb.view(n, s, 3), t)

    _, w = run(coarse, t)
    t_fine = sample_pdf(torch.cat([t, t[:, -1:]], -1), w, n_fine)
    t_all, _ = torch.sort(torch.cat([t, t_fine], -1), -1)
    rgb, _ = run(fine, t_all)
    return rgb


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rays", type=int, default=2048, help="rays timed per run (the cost is linear in them)")
    ap.add_argument("--chunk", type=int, default=1024, help="rays per network call")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dnmp", help="`dnmp profile --json` output of the frame to compare with")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    coarse, fine = NeRF().eval(), NeRF().eval()
    dirs = nn.functional.normalize(torch.randn(args.rays, 3) * torch.tensor([0.5, 0.2, 1.0]), dim=-1)
    origins = torch.zeros(args.rays, 3)

    def frame():
        for s in range(0, args.rays, args.chunk):
            render(coarse, fine, origins[s:s + args.chunk], dirs[s:s + args.chunk])

    frame()  # warm-up
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        frame()
        times.append((time.perf_counter() - t) * 1e3)
    nerf = statistics.median(times) / (args.rays / 1000.0)
    print(f"vanilla NeRF (64+128 samples, 8x256): {nerf:.1f} ms / 1k px ({torch.get_num_threads()} threads, "
          f"runs {[round(x) for x in times]} ms for {args.rays} rays)")
    if args.dnmp:
        prof = json.loads(open(args.dnmp).read())
        d = prof["render_ms_per_kpx"]
        print(f"dnmp full render ({prof['shading']} shading): {d:.2f} ms / 1k px; NeRF / dnmp = {nerf / d:.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
