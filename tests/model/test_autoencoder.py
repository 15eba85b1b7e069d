"""Mesh auto-encoder (paper Sec. 3.1): shapes, shipped weights, template latent, overfitting, errors."""

import math

import pytest
import torch

from dnmp.model import Primitives, ShapeDecoder, ico_sphere
from dnmp.model.autoencoder import (DEFAULT_WEIGHTS, MeshAutoEncoder, ShapeWeightsError, load_autoencoder,
                                    load_shape_decoder, mesh_surface_samples, save_autoencoder_weights,
                                    template_latent)
from dnmp.model.mesh_losses import chamfer_distance

# Distance (unit frame, i.e. fraction of the primitive radius r) between the shipped
# decoder's mesh at template_latent() and the ico-sphere, vertex for vertex: measured
# max 0.053, mean 0.026 (2.3 cm / 1.1 cm at 0.5 m voxels).
TEMPLATE_TOL_MAX = 0.06
TEMPLATE_TOL_MEAN = 0.03


def plane_patches(n: int, points: int, seed: int = 0) -> torch.Tensor:
    """[n, points, 3] samples of planar discs through the unit ball (unit frame), random
    normals and offsets: the commonest local surface of a street scene."""
    g = torch.Generator().manual_seed(seed)
    normal = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    offset = 0.5 * (torch.rand(n, 1, generator=g) - 0.5)
    a = torch.nn.functional.normalize(torch.cross(normal, torch.randn(n, 3, generator=g), dim=-1), dim=-1)
    b = torch.cross(normal, a, dim=-1)
    uv = 2 * torch.rand(n, points, 2, generator=g) - 1
    uv = uv * 0.8 / uv.norm(dim=-1, keepdim=True).clamp_min(1.0)  # stay inside the ball
    return offset[:, :, None] * normal[:, None] + uv[..., :1] * a[:, None] + uv[..., 1:] * b[:, None]


def test_shapes_unit_latent_and_permutation_invariance():
    torch.manual_seed(0)
    model = MeshAutoEncoder(latent_dim=6, hidden=32, encoder_widths=(16, 32))
    pts = plane_patches(4, 50)
    z, verts = model(pts)
    assert z.shape == (4, 6) and verts.shape == (4, 42, 3) and verts.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(4))
    # max-pooling: the code does not depend on the order of the points, and padding
    # past `lengths` is ignored
    torch.testing.assert_close(model.encode(pts[:, torch.randperm(50)]), z)
    padded = torch.cat([pts, torch.full((4, 7, 3), 9.0)], 1)
    torch.testing.assert_close(model.encode(padded, torch.full((4,), 50)), z)
    v, f = model.reconstruct(pts)
    assert v.shape == (4, 42, 3) and torch.equal(f, ico_sphere(1)[1])
    assert mesh_surface_samples(v, f).shape == (4, 42 + 4 * 80, 3)
    # the decoder alone keeps the primitives' contract: [P, D] -> [P, 42, 3]
    assert model.decoder(torch.nn.functional.normalize(torch.randn(5, 6), dim=-1)).shape == (5, 42, 3)


def test_untrained_decoder_template_latent_is_exact():
    dec = ShapeDecoder(latent_dim=8)
    z = template_latent(dec, candidates=16, steps=2)
    assert z.shape == (8,) and abs(float(z.norm()) - 1) < 1e-6
    torch.testing.assert_close(dec(z[None])[0], ico_sphere(1)[0])


def test_shipped_weights_load_and_template_latent():
    assert DEFAULT_WEIGHTS.is_file() and DEFAULT_WEIGHTS.stat().st_size < 1_000_000
    dec = load_shape_decoder()
    assert isinstance(dec, ShapeDecoder) and dec.latent_dim == 8 and not dec.training
    assert load_shape_decoder(latent_dim=8).latent_dim == 8
    z = template_latent(dec)
    assert z.shape == (8,) and abs(float(z.norm()) - 1) < 1e-5
    torch.testing.assert_close(template_latent(dec), z)  # computed deterministically
    with torch.no_grad():
        err = (dec(z[None])[0] - ico_sphere(1)[0]).norm(dim=-1)
    assert float(err.max()) < TEMPLATE_TOL_MAX and float(err.mean()) < TEMPLATE_TOL_MEAN, err
    # it is a trained decoder: other latents give other shapes
    with torch.no_grad():
        other = dec(-z[None])[0]
    assert float((other - ico_sphere(1)[0]).norm(dim=-1).mean()) > 0.05
    # plugs into the primitives: scene-frame vertices = centre + r * decoded shape
    prims = Primitives(torch.zeros(2, 3), 0.5, feature_dim=2, decoder=dec)
    with torch.no_grad():
        prims.latents.copy_(z.expand(2, -1))
        v = prims.vertices().view(2, 42, 3)
    torch.testing.assert_close(v[0].norm(dim=-1), torch.full((42,), 0.5 * math.sqrt(3) / 2), atol=0.03, rtol=0)
    # the shipped record carries the held-out figures the README quotes
    ae = load_autoencoder()
    info = torch.load(DEFAULT_WEIGHTS, weights_only=True)["info"]
    fig = info["heldout_chamfer"]
    for scale in ("voxel_0.5m", "voxel_1m"):
        assert fig["fitted"][scale]["chamfer_unit2"] < fig["autoencoder"][scale]["chamfer_unit2"] \
            < fig["template"][scale]["chamfer_unit2"] / 5
    assert ae.latent_dim == 8


def test_autoencoder_overfits_a_handful_of_patches():
    torch.manual_seed(0)
    pts = plane_patches(6, 64, seed=1)
    model = MeshAutoEncoder(latent_dim=8, hidden=64, encoder_widths=(32, 64))
    faces = model.faces
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_fn():
        _, v = model(pts)
        return chamfer_distance(mesh_surface_samples(v, faces), pts).mean()

    first = loss_fn().item()
    for _ in range(200):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = loss_fn().item()
    assert last < first / 5, (first, last)  # measured 0.51 -> 0.011 unit^2 (x45)


def test_bad_weights_files(tmp_path):
    with pytest.raises(ShapeWeightsError, match="not found"):
        load_shape_decoder(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a torch file")
    with pytest.raises(ShapeWeightsError, match="unreadable"):
        load_shape_decoder(junk)
    other = tmp_path / "other.pt"
    torch.save({"format": "dnmp-checkpoint", "version": 2}, other)
    with pytest.raises(ShapeWeightsError, match="not a dnmp-shape-autoencoder"):
        load_shape_decoder(other)
    good = save_autoencoder_weights(MeshAutoEncoder(latent_dim=4, hidden=16), tmp_path / "ae4.pt")
    assert load_shape_decoder(good).latent_dim == 4
    with pytest.raises(ShapeWeightsError, match="latent_dim 4, 8 was asked"):
        load_shape_decoder(good, latent_dim=8)
    data = torch.load(good, weights_only=True)
    data["hidden"] = 32  # tensors no longer fit the declared model
    torch.save(data, other)
    with pytest.raises(ShapeWeightsError, match="do not fit"):
        load_shape_decoder(other)
    data["version"] = 99
    torch.save(data, other)
    with pytest.raises(ShapeWeightsError, match="version 99"):
        load_autoencoder(other)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ShapeWeightsError, match="unreadable"):
        load_shape_decoder(truncated)
    assert issubclass(ShapeWeightsError, ValueError)  # the CLI reports it in one line
