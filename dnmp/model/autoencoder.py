"""Mesh auto-encoder of DNMP (paper Sec. 3.1): point-set patch -> unit latent -> deformed ico-sphere.

The paper learns a low-dimensional shape space for the primitives: an encoder
maps a local surface patch to a latent code, a decoder maps the code to the 42
vertices of a deformed level-1 ico-sphere; after training only the decoder is
kept, and the scene's primitives optimise their latent codes in its space.

Frames and units: everything here lives in the primitive's *unit frame*, i.e.
points relative to the voxel centre divided by the primitive radius
r = voxel_size * sqrt(3) / 2, so a voxel's points lie in the unit ball; the
template is the unit ico-sphere. Scene coordinates are ``centre + r * unit``.

This module knows nothing of files of point clouds (``dnmp.train.autoencoder``
cuts and fits the training patches); it reads and writes only its own weights
file, a ``torch.save``d dict::

    {"format": "dnmp-shape-autoencoder", "version": 1, "latent_dim": D,
     "hidden": H, "encoder_widths": [...], "decoder": state_dict,
     "encoder": state_dict, "info": {...training record...}}
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from .primitives import ShapeDecoder

WEIGHTS_FORMAT = "dnmp-shape-autoencoder"
WEIGHTS_VERSION = 1
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "shape_autoencoder.pt"
DEFAULT_ENCODER_WIDTHS = (64, 64, 128)

__all__ = [
    "WEIGHTS_FORMAT", "WEIGHTS_VERSION", "DEFAULT_WEIGHTS", "ShapeWeightsError",
    "PointEncoder", "MeshAutoEncoder", "mesh_surface_samples", "load_autoencoder",
    "load_shape_decoder", "template_latent", "save_autoencoder_weights",
]


class ShapeWeightsError(ValueError):
    """A shape auto-encoder weights file that cannot be used (missing, corrupt, wrong
    format or version, or another latent size than asked); the message names the file."""

    def __init__(self, path, problem: str):
        self.path = Path(path)
        super().__init__(f"{path}: {problem}")


class PointEncoder(nn.Module):
    """PointNet-style encoder: shared per-point MLP, max-pool, MLP -> unit latent.

    Args:
        latent_dim: D, size of the latent code (8 in the paper).
        widths: per-point layer widths; the last one is the pooled feature size.
    """

    def __init__(self, latent_dim: int = 8, widths=DEFAULT_ENCODER_WIDTHS):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if latent_dim < 1 or not widths or min(widths) < 1:
            raise ValueError(f"bad encoder sizes: latent_dim={latent_dim}, widths={widths}")
        self.latent_dim = int(latent_dim)
        self.widths = widths
        layers, prev = [], 3
        for w in widths:
            layers += [nn.Linear(prev, w), nn.ReLU(inplace=True)]
            prev = w
        self.point_mlp = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(prev, prev), nn.ReLU(inplace=True), nn.Linear(prev, latent_dim))

    def forward(self, points: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """points float32 [B, N, 3] (unit frame; with ``lengths`` int [B], points past
        ``lengths[b]`` are padding) -> unit-norm latent [B, D]."""
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"points must have shape [B, N, 3], got {tuple(points.shape)}")
        feat = self.point_mlp(points)
        if lengths is not None:
            valid = torch.arange(points.shape[1], device=points.device) < lengths.view(-1, 1)
            feat = feat.masked_fill(~valid.unsqueeze(-1), float("-inf"))
        # Max-pool: a symmetric function, so the code does not depend on the point order.
        return F.normalize(self.head(feat.max(dim=1).values), dim=-1)


def mesh_surface_samples(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Fixed, differentiable sample points on a triangle mesh: the vertices, the
    midpoints of the face edges (each shared edge twice) and the face centroids.

    Chamfer terms between a mesh and a point set are computed on these rather than
    on the 42 vertices alone, so that a point in the middle of a face counts as
    covered (paper Sec. 3.1 uses Chamfer between the decoded mesh and the points).

    Args:
        verts: float [B, V, 3]; faces: int64 [F, 3].

    Returns:
        float [B, V + 4F, 3], same frame and units as verts.
    """
    tri = verts[:, faces]  # [B, F, 3, 3]
    mids = 0.5 * (tri + tri.roll(-1, dims=2))
    cent = tri.mean(dim=2, keepdim=True)
    return torch.cat([verts, mids.flatten(1, 2), cent.flatten(1, 2)], dim=1)


class MeshAutoEncoder(nn.Module):
    """Point set (unit frame) -> unit latent -> 42 vertices of a deformed ico-sphere.

    Args:
        latent_dim: D (8 in the paper).
        hidden: hidden width of the ShapeDecoder MLP.
        encoder_widths: per-point layer widths of the PointEncoder.
    """

    def __init__(self, latent_dim: int = 8, hidden: int = 128, encoder_widths=DEFAULT_ENCODER_WIDTHS):
        super().__init__()
        self.encoder = PointEncoder(latent_dim, encoder_widths)
        self.decoder = ShapeDecoder(latent_dim, hidden=hidden)
        self.latent_dim = int(latent_dim)
        self.hidden = int(hidden)

    @property
    def faces(self) -> torch.Tensor:
        """int64 [80, 3] faces of the decoded meshes (the ico-sphere's)."""
        return self.decoder.template_faces

    def encode(self, points: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """points float32 [B, N, 3] (unit frame) -> unit-norm latent [B, D]."""
        return self.encoder(points, lengths)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, D] (normalised here) -> vertices [B, 42, 3] (unit frame)."""
        return self.decoder(F.normalize(latent, dim=-1))

    def forward(self, points: torch.Tensor, lengths: torch.Tensor | None = None):
        """points [B, N, 3] -> (latent [B, D] unit-norm, vertices [B, 42, 3]), unit frame."""
        z = self.encode(points, lengths)
        return z, self.decoder(z)

    def reconstruct(self, points: torch.Tensor, lengths: torch.Tensor | None = None):
        """Reconstruct meshes of point patches: points [B, N, 3] (unit frame) ->
        (vertices float32 [B, 42, 3] unit frame, faces int64 [80, 3])."""
        return self.forward(points, lengths)[1], self.faces

    def weights_dict(self, info: dict | None = None) -> dict:
        """The weights-file dict (see the module docstring)."""
        return {"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, "latent_dim": self.latent_dim,
                "hidden": self.hidden, "encoder_widths": list(self.encoder.widths),
                "decoder": {k: v.detach().cpu() for k, v in self.decoder.state_dict().items()},
                "encoder": {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()},
                "info": dict(info or {})}


def save_autoencoder_weights(model: MeshAutoEncoder, path, info: dict | None = None) -> Path:
    """Write the auto-encoder's weights file atomically (temporary file + fsync + rename).
    ``info`` is a JSON-like dict (training command, figures) stored with it."""
    from .._io import atomic_torch_save

    return atomic_torch_save(model.weights_dict(info), path)


def _read_weights(path) -> tuple[Path, dict]:
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        hint = (" (the shipped weights are missing from the installation; rebuild them with "
                "`dnmp train-autoencoder --out dnmp/model/weights/shape_autoencoder.pt`)"
                if path == DEFAULT_WEIGHTS else "")
        raise ShapeWeightsError(path, "shape auto-encoder weights file not found" + hint)
    from .._io import UnsafeFileError, load_plain

    try:
        data = load_plain(path)  # torch.load(weights_only=True): a crafted pickle is refused
    except UnsafeFileError as exc:
        raise ShapeWeightsError(path, str(exc).split(": ", 1)[1]) from None
    except Exception as exc:  # pickle / zip errors of every kind: report, do not leak a traceback
        raise ShapeWeightsError(path, f"unreadable weights file ({type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(data, dict) or data.get("format") != WEIGHTS_FORMAT:
        raise ShapeWeightsError(path, f"not a {WEIGHTS_FORMAT} weights file")
    if data.get("version") != WEIGHTS_VERSION:
        raise ShapeWeightsError(path, f"unsupported weights version {data.get('version')!r} "
                                      f"(this dnmp reads version {WEIGHTS_VERSION})")
    for key in ("latent_dim", "hidden", "encoder_widths", "decoder", "encoder"):
        if key not in data:
            raise ShapeWeightsError(path, f"weights file lacks {key!r}")
    return path, data


def _check_latent(path, data: dict, latent_dim: int | None) -> None:
    if latent_dim is not None and int(latent_dim) != int(data["latent_dim"]):
        raise ShapeWeightsError(path, f"weights have latent_dim {data['latent_dim']}, "
                                      f"{latent_dim} was asked for")


def load_autoencoder(path=None, latent_dim: int | None = None) -> MeshAutoEncoder:
    """Load the full auto-encoder (encoder + decoder) from a weights file.

    Args:
        path: weights file (default: the shipped ``dnmp/model/weights/shape_autoencoder.pt``).
        latent_dim: when given, the weights must have this latent size.

    Returns:
        MeshAutoEncoder on CPU, float32, in eval mode.

    Raises:
        ShapeWeightsError (a ValueError): missing, unreadable or corrupt file, wrong
            format/version, or a latent size other than ``latent_dim``.
    """
    path, data = _read_weights(path)
    _check_latent(path, data, latent_dim)
    try:
        model = MeshAutoEncoder(int(data["latent_dim"]), int(data["hidden"]), data["encoder_widths"])
        model.decoder.load_state_dict(data["decoder"])
        model.encoder.load_state_dict(data["encoder"])
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ShapeWeightsError(path, f"weights do not fit the model ({str(exc).splitlines()[0]})") from None
    return model.eval()


def load_shape_decoder(path=None, latent_dim: int | None = None) -> ShapeDecoder:
    """Load the trained mesh decoder for the primitives (paper Sec. 3.1).

    Args:
        path: weights file written by ``dnmp train-autoencoder`` (default: the
            weights shipped inside the package, ``dnmp/model/weights/shape_autoencoder.pt``).
        latent_dim: when given, the weights must have this latent size (e.g. the
            training config's), else ShapeWeightsError.

    Returns:
        ShapeDecoder (CPU, float32, eval mode): unit latent [P, D] -> vertices
        [P, 42, 3] in the unit frame (multiply by r and add the voxel centre).

    Raises:
        ShapeWeightsError (a ValueError) naming the file: missing, unreadable or
            corrupt, wrong format/version, mismatched latent_dim or tensor shapes.
    """
    path, data = _read_weights(path)
    _check_latent(path, data, latent_dim)
    try:
        dec = ShapeDecoder(int(data["latent_dim"]), hidden=int(data["hidden"]))
        dec.load_state_dict(data["decoder"])
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ShapeWeightsError(path, f"weights do not fit the decoder ({str(exc).splitlines()[0]})") from None
    return dec.eval()


def template_latent(decoder: ShapeDecoder, candidates: int = 4096, steps: int = 200,
                    lr: float = 0.05, seed: int = 0) -> torch.Tensor:
    """The unit latent whose decoded mesh is closest to the template ico-sphere.

    Closeness is the mean squared distance between corresponding vertices (so the
    decoded mesh is the template *vertex for vertex*, as the per-vertex features
    expect). Computed, not stored: the best of ``candidates`` random unit latents
    (fixed seed), refined by ``steps`` Adam steps on the latent, re-normalised in
    the forward pass. The decoder's parameters are not changed and get no gradient.

    Args:
        decoder: a ShapeDecoder (e.g. from load_shape_decoder()).
        candidates, steps, lr, seed: search settings (deterministic for fixed values).

    Returns:
        float32 [D] unit-norm latent, on the decoder's device. Use
        ``decoder(z[None])`` to check the residual; for the shipped weights the
        residual is reported by ``tests/model/test_autoencoder.py``.
    """
    dev = decoder.template_verts.device
    target = decoder.template_verts
    g = torch.Generator().manual_seed(seed)

    def err(z):
        return ((decoder(F.normalize(z, dim=-1)) - target) ** 2).sum(-1).mean(-1)

    with torch.no_grad():
        cand = F.normalize(torch.randn(candidates, decoder.latent_dim, generator=g), dim=-1).to(dev)
        e = torch.cat([err(c) for c in cand.split(1024)])
        z = cand[e.argmin()].clone()
    z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    best, best_e = z.detach().clone(), float(e.min())
    with torch.enable_grad():
        for _ in range(steps):
            loss = err(z[None])[0]
            (grad,) = torch.autograd.grad(loss, [z])  # only the latent: decoder grads untouched
            if loss.item() < best_e:
                best, best_e = z.detach().clone(), loss.item()
            opt.zero_grad(set_to_none=True)
            z.grad = grad
            opt.step()
    with torch.no_grad():
        if float(err(z.detach()[None])[0]) < best_e:
            best = z.detach().clone()
    return F.normalize(best, dim=-1).float()
