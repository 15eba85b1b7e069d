"""Training data and loop of the mesh auto-encoder (paper Sec. 3.1).

Data: local surface patches cut from real point clouds. Every occupied voxel (edge
0.5 m, the fine scale, and 1.0 m, the coarse scale) with at least ``min_points``
points gives a patch: its points relative to the voxel centre divided by the
primitive radius r = s * sqrt(3) / 2 (the *unit frame*: the patch lies in the
unit ball), subsampled (or padded by repeating points) to ``n_points``. Patches
are split spatially into training and held-out sets (whole 4 m cells are held
out, so a held-out patch has no overlapping neighbour in training). Training
patches are augmented by random rotations (uniform on SO(3)); a small share of
patches are samples of the unit sphere itself, so that the template shape stays
in the learned shape space (``template_latent`` needs it).

Fitting: as the issue asks, each patch first gets a level-1 ico-sphere fitted to it
by batched gradient descent on its 42 vertices, starting from the template:
Chamfer(mesh surface samples, patch) + Laplacian + normal-consistency regularisers.

Auto-encoder: PointNet encoder -> unit latent -> ShapeDecoder, trained with the
same objective (Chamfer to the patch + the two regularisers) plus an auxiliary
per-vertex L2 term to the patch's fitted mesh. Why the auxiliary term: Chamfer is
blind to *which* vertex goes where, and the decoder's vertices carry per-vertex
features in the radiance stage, so neighbouring latents should move vertices
coherently; the fitted meshes (all grown from the same template, rotated copies
fitted separately so that they stay consistent) give that correspondence and
speed training up. Its weight is small next to the Chamfer term, which stays the
objective.

Units: all losses are computed in the unit frame; reported Chamfer figures are
also given in m^2 (unit-frame value * r^2 at each voxel size).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..model.autoencoder import MeshAutoEncoder, mesh_surface_samples, save_autoencoder_weights
from ..model.icosphere import ico_sphere
from ..model.mesh_losses import chamfer_distance, mesh_laplacian_smoothing, mesh_normal_consistency


@dataclass
class AutoencoderConfig:
    """Settings of `dnmp train-autoencoder` (defaults produce the shipped weights)."""

    seed: int = 0
    steps: int = 3000                 # auto-encoder training steps
    batch_size: int = 64
    lr: float = 2e-3
    latent_dim: int = 8
    hidden: int = 128                 # ShapeDecoder hidden width
    voxel_sizes: tuple = (0.5, 1.0)   # fine and coarse scale, metres
    n_points: int = 128               # points per patch (subsampled / padded)
    min_points: int = 48              # voxels with fewer points give no patch
    max_patches: int = 1500           # cap on source patches (before augmentation)
    rotations: int = 2                # rotated copies of each training patch
    sphere_fraction: float = 0.03     # share of unit-sphere patches in the training set
    heldout_fraction: float = 0.1     # share of 4 m cells held out
    heldout_cell: float = 4.0         # metres
    fit_steps: int = 100              # per-patch ico-sphere fitting steps
    fit_lr: float = 0.02
    refine_steps: int = 100           # held-out evaluation: latent refinement steps
    w_laplacian: float = 0.05         # regulariser weights (unit frame, Chamfer in unit^2)
    w_normal: float = 0.005
    w_fitted: float = 0.1             # auxiliary per-vertex term to the fitted meshes
    sources: list = field(default_factory=list)


class AutoencoderDataError(ValueError):
    """Bad training input: a missing source, an empty cloud, no usable patch."""


# ----------------------------------------------------------------------------- data

def load_source_points(source) -> np.ndarray:
    """Points of one source: a dnmp scene folder (all its point clouds) or a .ply file.

    Returns float32 [N, 3], scene/world frame, metres (finite points only).
    Raises AutoencoderDataError for a missing path or an empty cloud, SceneError for
    an unreadable scene/ply."""
    from ..data import load_scene, read_ply_points

    p = Path(source)
    if p.is_dir():
        pts = load_scene(p).load_points()
    elif p.is_file():
        if p.suffix.lower() != ".ply":
            raise AutoencoderDataError(f"{p}: not a .ply file or a dnmp scene folder")
        pts = read_ply_points(p)[0]
    else:
        raise AutoencoderDataError(f"{p}: no such scene folder or .ply file")
    pts = np.asarray(pts, np.float32)
    pts = pts[np.isfinite(pts).all(1)]
    if len(pts) == 0:
        raise AutoencoderDataError(f"{p}: the point cloud is empty")
    return pts


def cut_patches(points: np.ndarray, voxel_size: float, n_points: int, min_points: int,
                rng: np.random.Generator):
    """Voxel crops of a cloud in the unit frame.

    Args:
        points: float [N, 3] metres. voxel_size: s, metres.
        n_points: points per patch; voxels with more are subsampled without
            replacement, voxels with fewer (but >= min_points) are padded by
            repeating random points (which does not change a Chamfer distance much).

    Returns:
        patches float32 [P, n_points, 3] in the unit frame ((p - centre) / r, inside
        the unit ball), centres float64 [P, 3] metres.
    """
    r = voxel_size * math.sqrt(3.0) / 2.0
    idx = np.floor(points.astype(np.float64) / voxel_size).astype(np.int64)
    _, inv, counts = np.unique(idx, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    patches, centres = [], []
    for v in np.nonzero(counts >= min_points)[0]:
        members = order[starts[v]: starts[v] + counts[v]]
        if len(members) >= n_points:
            pick = rng.choice(members, n_points, replace=False)
        else:
            pick = np.concatenate([members, rng.choice(members, n_points - len(members))])
        c = (idx[members[0]] + 0.5) * voxel_size
        patches.append((points[pick].astype(np.float64) - c) / r)
        centres.append(c)
    if not patches:
        return np.zeros((0, n_points, 3), np.float32), np.zeros((0, 3))
    return np.stack(patches).astype(np.float32), np.stack(centres)


def heldout_mask(centres: np.ndarray, fraction: float, cell: float, seed: int) -> np.ndarray:
    """bool [P]: patches whose `cell`-metre cell is held out (a fixed pseudo-random
    `fraction` of the cells), so held-out patches are spatially apart from training."""
    cells = np.floor(centres / cell).astype(np.int64)
    # A hash of the cell index, mixed with the seed: deterministic, no global state.
    h = (cells[:, 0] * 73856093) ^ (cells[:, 1] * 19349663) ^ (cells[:, 2] * 83492791) ^ (seed * 2654435761)
    return (np.abs(h) % 1000) < int(round(fraction * 1000))


def random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    """float32 [n, 3, 3] rotations uniform on SO(3) (normalised Gaussian quaternions)."""
    q = torch.randn(n, 4, generator=generator)
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], 1).view(n, 3, 3)


def sphere_patches(n: int, n_points: int, generator: torch.Generator) -> torch.Tensor:
    """float32 [n, n_points, 3] points uniform on the unit sphere (the template's surface)."""
    p = torch.randn(n, n_points, 3, generator=generator)
    return p / p.norm(dim=-1, keepdim=True)


def mesh_objective(verts: torch.Tensor, faces: torch.Tensor, patches: torch.Tensor,
                   w_laplacian: float, w_normal: float):
    """Per-patch fitting objective [B]: Chamfer(mesh surface samples, patch) +
    w_laplacian * Laplacian + w_normal * normal consistency (unit frame). Also returns
    the Chamfer term [B] alone."""
    cd = chamfer_distance(mesh_surface_samples(verts, faces), patches)
    reg = w_laplacian * mesh_laplacian_smoothing(verts, faces) + w_normal * mesh_normal_consistency(verts, faces)
    return cd + reg, cd


def fit_icospheres(patches: torch.Tensor, steps: int = 100, lr: float = 0.02, w_laplacian: float = 0.05,
                   w_normal: float = 0.005, chunk: int = 2048, progress=None) -> torch.Tensor:
    """Fit a level-1 ico-sphere to each patch (batched gradient descent on the vertices).

    Args:
        patches: float32 [B, N, 3] unit frame.
        steps, lr: Adam steps and learning rate per chunk of patches.
        w_laplacian, w_normal: regulariser weights (see ``mesh_objective``).
        progress: optional tqdm bar, advanced by the number of patches fitted.

    Returns:
        float32 [B, 42, 3] fitted vertices (unit frame), detached; the faces are
        ``ico_sphere(1)[1]``.
    """
    tv, tf = ico_sphere(1)
    out = []
    for part in patches.split(chunk):
        v = tv.expand(part.shape[0], -1, -1).clone().requires_grad_(True)
        opt = torch.optim.Adam([v], lr=lr)
        for _ in range(steps):
            # Mean, not sum, over the chunk: each patch's own problem is independent, so
            # the mean only rescales them all alike; Adam is scale invariant anyway.
            loss = mesh_objective(v, tf, part, w_laplacian, w_normal)[0].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        out.append(v.detach())
        if progress is not None:
            progress.update(part.shape[0])
    return torch.cat(out) if out else torch.zeros(0, 42, 3)


@dataclass
class PatchSet:
    """Patches of one split, unit frame: points [P, N, 3] float32, voxel size of each
    patch [P] (metres; 0 for the synthetic sphere patches), fitted vertices [P, 42, 3]."""

    points: torch.Tensor
    voxel_size: torch.Tensor
    fitted: torch.Tensor | None = None


def build_patch_sets(sources, cfg: AutoencoderConfig, log=print):
    """Cut, split and augment the patches of all sources: (train PatchSet, held-out PatchSet)
    (not yet fitted). Raises AutoencoderDataError when no source yields a patch."""
    rng = np.random.default_rng(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    train_p, train_s, held_p, held_s = [], [], [], []
    for src in sources:
        pts = load_source_points(src)
        for s in cfg.voxel_sizes:
            patches, centres = cut_patches(pts, s, cfg.n_points, cfg.min_points, rng)
            held = heldout_mask(centres, cfg.heldout_fraction, cfg.heldout_cell, cfg.seed)
            log(f"{src}: {len(pts)} points, voxel {s} m: {len(patches)} patches "
                f"({int(held.sum())} held out)")
            train_p.append(torch.from_numpy(patches[~held]))
            train_s.append(torch.full((int((~held).sum()),), float(s)))
            held_p.append(torch.from_numpy(patches[held]))
            held_s.append(torch.full((int(held.sum()),), float(s)))
    tp, ts = torch.cat(train_p), torch.cat(train_s)
    if tp.shape[0] == 0:
        raise AutoencoderDataError(f"no voxel of {', '.join(map(str, sources))} has >= {cfg.min_points} "
                                   f"points at voxel sizes {list(cfg.voxel_sizes)} m: nothing to train on")
    if tp.shape[0] > cfg.max_patches:
        keep = torch.randperm(tp.shape[0], generator=g)[: cfg.max_patches].sort().values
        tp, ts = tp[keep], ts[keep]
    # Augmentation: rotated copies (the first copy keeps the world orientation, in which
    # the ground is horizontal, the most common case in a street scene).
    copies, sizes = [tp], [ts]
    for _ in range(cfg.rotations - 1):
        rot = random_rotations(tp.shape[0], g)
        copies.append(torch.einsum("pij,pnj->pni", rot, tp))
        sizes.append(ts)
    n_sphere = int(round(cfg.sphere_fraction * tp.shape[0] * max(1, cfg.rotations)))
    copies.append(sphere_patches(n_sphere, cfg.n_points, g))
    sizes.append(torch.zeros(n_sphere))
    train = PatchSet(torch.cat(copies), torch.cat(sizes))
    held = PatchSet(torch.cat(held_p), torch.cat(held_s))
    return train, held


# ----------------------------------------------------------------------------- evaluation

def optimise_latents(decoder, patches: torch.Tensor, init: torch.Tensor, steps: int = 100,
                     lr: float = 0.05, w_laplacian: float = 0.05, w_normal: float = 0.005) -> torch.Tensor:
    """Refine latents [B, D] so the decoded meshes fit the patches (what the geometry stage
    does with the decoder frozen); returns unit latents [B, D]."""
    faces = decoder.template_faces
    z = init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        v = decoder(torch.nn.functional.normalize(z, dim=-1))
        loss = mesh_objective(v, faces, patches, w_laplacian, w_normal)[0].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return torch.nn.functional.normalize(z.detach(), dim=-1)


def chamfer_report(meshes: dict, held: PatchSet, faces: torch.Tensor) -> dict:
    """Mean held-out Chamfer (mesh surface samples vs patch points) per method and voxel
    size, in unit-frame units^2 and in m^2 (unit value * r^2 for that voxel size)."""
    out = {}
    for name, verts in meshes.items():
        with torch.no_grad():
            cd = torch.cat([chamfer_distance(mesh_surface_samples(v, faces), p)
                            for v, p in zip(verts.split(1024), held.points.split(1024))])
        row = {}
        for s in sorted(set(held.voxel_size.tolist())):
            m = held.voxel_size == s
            r = s * math.sqrt(3.0) / 2.0
            unit = float(cd[m].mean())
            row[f"voxel_{s:g}m"] = {"patches": int(m.sum()), "chamfer_unit2": unit, "chamfer_m2": unit * r * r}
        out[name] = row
    return out


# ----------------------------------------------------------------------------- training

def train_autoencoder(sources, out, cfg: AutoencoderConfig | None = None, progress: bool = True,
                      log=print) -> dict:
    """Cut patches from `sources`, fit ico-spheres, train the auto-encoder, write `out`.

    Args:
        sources: dnmp scene folders and/or .ply files (metres).
        out: weights file to write (atomically), readable by load_shape_decoder().
        cfg: AutoencoderConfig (defaults: the shipped weights' settings).
        progress: tqdm progress bars.

    Returns:
        dict with the held-out Chamfer figures ("heldout_chamfer": template, fitted,
        autoencoder, autoencoder+latent refinement), patch counts, timings; also
        stored in the weights file under "info".

    Raises:
        AutoencoderDataError (a ValueError): missing source, empty cloud, no patch.
    """
    from tqdm import tqdm

    cfg = cfg or AutoencoderConfig()
    sources = [str(s) for s in sources]
    cfg.sources = sources
    for s in sources:  # fail before any work on a typo
        if not Path(s).exists():
            raise AutoencoderDataError(f"{s}: no such scene folder or .ply file")
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    train, held = build_patch_sets(sources, cfg, log=log if progress else (lambda *_: None))
    if held.points.shape[0] == 0:
        log("warning: no held-out patch (scene too small for a spatial split); figures use none")
    faces = ico_sphere(1)[1]
    total = train.points.shape[0] + held.points.shape[0]
    with tqdm(total=total, desc="fit ico-spheres", unit="patch", disable=not progress) as bar:
        fit_kw = dict(steps=cfg.fit_steps, lr=cfg.fit_lr, w_laplacian=cfg.w_laplacian, w_normal=cfg.w_normal)
        train.fitted = fit_icospheres(train.points, progress=bar, **fit_kw)
        held.fitted = fit_icospheres(held.points, progress=bar, **fit_kw)
    t_fit = time.time() - t0

    model = MeshAutoEncoder(cfg.latent_dim, cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.steps), eta_min=cfg.lr * 0.05)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    n = train.points.shape[0]
    history = []
    t1 = time.time()
    model.train()
    for step in tqdm(range(cfg.steps), desc="train auto-encoder", disable=not progress):
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=g)
        pts, fit = train.points[idx], train.fitted[idx]
        _, verts = model(pts)
        obj, cd = mesh_objective(verts, faces, pts, cfg.w_laplacian, cfg.w_normal)
        aux = ((verts - fit) ** 2).sum(-1).mean(-1)
        loss = (obj + cfg.w_fitted * aux).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            history.append({"step": step, "loss": loss.item(), "chamfer_unit2": cd.mean().item()})
    t_train = time.time() - t1
    model.eval()

    figures = {}
    if held.points.shape[0]:
        with torch.no_grad():
            z, ae = model(held.points)
        refined = model.decoder(optimise_latents(model.decoder, held.points, z, steps=cfg.refine_steps,
                                                 w_laplacian=cfg.w_laplacian, w_normal=cfg.w_normal)).detach()
        template = ico_sphere(1)[0].expand(held.points.shape[0], -1, -1)
        figures = chamfer_report({"template": template, "fitted": held.fitted, "autoencoder": ae,
                                  "autoencoder_refined_latent": refined}, held, faces)
    info = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "train_patches": int(n), "heldout_patches": int(held.points.shape[0]),
            "heldout_chamfer": figures, "history": history,
            "seconds": {"fit": round(t_fit, 1), "train": round(t_train, 1)},
            "threads": torch.get_num_threads()}
    save_autoencoder_weights(model, out, info)
    return info
