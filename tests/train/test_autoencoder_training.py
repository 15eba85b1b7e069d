"""Auto-encoder training data and loop (dnmp.train.autoencoder) and `dnmp train-autoencoder`."""

import math

import numpy as np
import pytest
import torch

from dnmp.cli import main
from dnmp.model.autoencoder import load_autoencoder, load_shape_decoder
from dnmp.model.icosphere import ico_sphere
from dnmp.train.autoencoder import (AutoencoderConfig, AutoencoderDataError, cut_patches, fit_icospheres,
                                    heldout_mask, mesh_objective, random_rotations, train_autoencoder)

TINY = dict(steps=5, batch_size=8, fit_steps=10, refine_steps=5, rotations=2, n_points=32, min_points=16,
            heldout_fraction=0.5, heldout_cell=1.0)


def test_cut_patches_unit_frame_and_padding():
    rng = np.random.default_rng(0)
    # voxel [0, 0.5)^3 gets 100 points, voxel [1, 1.5) x [0, .5)^2 gets 10, another 3
    a = rng.uniform(0.0, 0.5, (100, 3))
    b = rng.uniform(0.0, 0.5, (10, 3)) + [1.0, 0, 0]
    c = rng.uniform(0.0, 0.5, (3, 3)) + [2.0, 0, 0]
    pts = np.concatenate([a, b, c]).astype(np.float32)
    patches, centres = cut_patches(pts, 0.5, n_points=40, min_points=5, rng=rng)
    assert patches.shape == (2, 40, 3) and patches.dtype == np.float32
    np.testing.assert_allclose(centres, [[0.25, 0.25, 0.25], [1.25, 0.25, 0.25]])
    r = 0.5 * math.sqrt(3) / 2
    assert np.linalg.norm(patches, axis=-1).max() <= 1.0 + 1e-6  # the voxel is inside the unit ball
    # the subsampled patch is 40 distinct points of a; the padded one repeats b's 10 points
    np.testing.assert_allclose(np.unique(patches[1] * r + centres[1], axis=0), np.unique(b, axis=0), rtol=1e-5)
    assert len(np.unique(patches[0], axis=0)) == 40


def test_heldout_mask_and_rotations():
    centres = np.random.default_rng(1).uniform(-200, 200, (5000, 3))
    m = heldout_mask(centres, 0.1, 4.0, seed=0)
    assert 0.05 < m.mean() < 0.15 and np.array_equal(m, heldout_mask(centres, 0.1, 4.0, seed=0))
    # whole cells: all patches of one 4 m cell share the decision
    dense = np.random.default_rng(2).uniform(0, 40, (2000, 3))
    md = heldout_mask(dense, 0.3, 4.0, seed=0)
    _, cell = np.unique(np.floor(dense / 4.0), axis=0, return_inverse=True)
    cell = cell.reshape(-1)
    for c in range(cell.max() + 1):
        assert len(set(md[cell == c].tolist())) == 1
    rot = random_rotations(100, torch.Generator().manual_seed(0))
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(100, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(100), atol=1e-5, rtol=0)


def test_fit_icospheres_fits_a_plane_patch():
    g = torch.Generator().manual_seed(0)
    uv = 1.2 * torch.rand(4, 100, 2, generator=g) - 0.6
    pts = torch.cat([uv, torch.full((4, 100, 1), -0.3)], -1)  # a flat patch below the centre
    faces = ico_sphere(1)[1]
    template = ico_sphere(1)[0].expand(4, -1, -1)
    before = mesh_objective(template, faces, pts, 0.0, 0.0)[1]
    fitted = fit_icospheres(pts, steps=100)
    after = mesh_objective(fitted, faces, pts, 0.0, 0.0)[1]
    assert fitted.shape == (4, 42, 3) and not fitted.requires_grad
    assert (after < before / 20).all(), (before, after)
    # the vertices collapse onto the plane (the sphere flattens into a disc)
    assert float((fitted[..., 2] + 0.3).abs().mean()) < 0.05


def test_train_autoencoder_end_to_end_deterministic(tiny_scene, tmp_path):
    # bit-identical weights need one thread: with several, the BLAS library may split
    # reductions differently from run to run when the machine is busy
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run_twice_and_compare(tiny_scene, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _run_twice_and_compare(tiny_scene, tmp_path):
    cfg = AutoencoderConfig(**TINY)
    info = train_autoencoder([tiny_scene], tmp_path / "a.pt", cfg, progress=False, log=lambda *_: None)
    info2 = train_autoencoder([tiny_scene], tmp_path / "b.pt", AutoencoderConfig(**TINY), progress=False,
                              log=lambda *_: None)
    assert info["train_patches"] > 0 and info["heldout_patches"] > 0
    a, b = load_shape_decoder(tmp_path / "a.pt"), load_shape_decoder(tmp_path / "b.pt")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k  # fixed seed -> identical weights
    fig = info["heldout_chamfer"]
    assert set(fig) == {"template", "fitted", "autoencoder", "autoencoder_refined_latent"}
    row = fig["fitted"]["voxel_0.5m"]
    assert row["chamfer_m2"] == pytest.approx(row["chamfer_unit2"] * 0.75 * 0.25)  # r^2 = 3 s^2 / 4
    assert fig["fitted"]["voxel_0.5m"]["chamfer_unit2"] < fig["template"]["voxel_0.5m"]["chamfer_unit2"]
    assert load_autoencoder(tmp_path / "a.pt").latent_dim == 8


def test_training_errors(tmp_path, tiny_scene):
    with pytest.raises(AutoencoderDataError, match="no such scene folder"):
        train_autoencoder([tmp_path / "nope"], tmp_path / "x.pt", progress=False)
    with pytest.raises(AutoencoderDataError, match="nothing to train on"):
        train_autoencoder([tiny_scene], tmp_path / "x.pt", AutoencoderConfig(min_points=10_000),
                          progress=False, log=lambda *_: None)
    assert not (tmp_path / "x.pt").exists()


def test_cli_train_autoencoder(tiny_scene, tmp_path, capsys):
    assert main(["train-autoencoder", str(tmp_path / "nope"), "--out", str(tmp_path / "w.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such scene folder or .ply file" in err[0]
    txt = tmp_path / "points.txt"
    txt.write_text("1 2 3\n")
    assert main(["train-autoencoder", str(txt), "--out", str(tmp_path / "w.pt")]) == 2
    assert "not a .ply file" in capsys.readouterr().err
    assert main(["train-autoencoder", str(tiny_scene), "--out", str(tmp_path / "w.pt"), "--steps", "2",
                 "--latent-dim", "4", "--max-patches", "8", "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert load_shape_decoder(tmp_path / "w.pt", latent_dim=4).latent_dim == 4
