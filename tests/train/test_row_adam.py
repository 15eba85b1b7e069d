"""RowAdam (dnmp/train/row_adam.py) against its reference, torch.optim.SparseAdam, and the
radiance step's row gradient against the embedding's sparse gradient.

Tolerance: none. RowAdam performs SparseAdam's float operations on the same operands in
the same order (only the memory layout of the work differs), and the row gradient is the
embedding's gradient rows; both are compared bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dnmp.data import load_scene
from dnmp.train.config import TrainConfig
from dnmp.train.factory import build_renderer, scene_centres
from dnmp.train.frame_pool import FramePool
from dnmp.train.radiance import _make_optimizers, optimizer_step, radiance_loss_backward
from dnmp.train.row_adam import RowAdam, row_gradient


def _sparse_grad(n: int, c: int, step: int, coalesced: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    rows = torch.randint(0, n, (n // 3,), generator=g)  # repeats: an uncoalesced gradient
    vals = torch.randn(rows.numel(), c, generator=g)
    grad = torch.sparse_coo_tensor(rows.unsqueeze(0), vals, (n, c), check_invariants=True)
    if coalesced:
        grad = grad.coalesce()
        grad = row_gradient(torch.empty(n, c), grad.indices()[0], grad.values())
    return grad


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("coalesced", [False, True])
@pytest.mark.parametrize("c", [5, 37])
def test_row_adam_equals_sparse_adam_over_steps(coalesced, fused, c):
    """Both paths of RowAdam (the compiled op where the kernels are built, and the torch
    reference) against SparseAdam, bit for bit; 37 channels: vector lanes and a tail."""
    n = 200
    ref = torch.nn.Parameter(torch.randn(n, c, generator=torch.Generator().manual_seed(0)))
    new = torch.nn.Parameter(ref.detach().clone())
    o_ref = torch.optim.SparseAdam([ref], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    o_new = RowAdam([new], lr=0.05, betas=(0.8, 0.99), eps=1e-6, fused=fused)
    for step in range(6):
        for o in (o_ref, o_new):
            o.param_groups[0]["lr"] = 0.05 * 0.9 ** step  # the radiance loop's decay
        if step == 3:  # a step without gradient: no update, the step count stays
            ref.grad = new.grad = None
        else:
            ref.grad = _sparse_grad(n, c, step, coalesced)
            new.grad = ref.grad.clone()
        o_ref.step()
        o_new.step()
        assert torch.equal(new, ref), f"step {step}"
        if step == 0:
            assert o_new._use_fused(new, o_new.state[new]) == (fused is None and _kernels())
    s_ref, s_new = o_ref.state[ref], o_new.state[new]
    assert s_new["step"] == s_ref["step"] == 5
    assert torch.equal(s_new["exp_avg"], s_ref["exp_avg"])
    assert torch.equal(s_new["exp_avg_sq"], s_ref["exp_avg_sq"])
    untouched = torch.ones(n, dtype=torch.bool)
    for step in (0, 1, 2, 4, 5):
        untouched[_sparse_grad(n, c, step, False).coalesce().indices()[0]] = False
    assert untouched.any()
    assert (s_new["exp_avg"][untouched] == 0).all() and (s_new["exp_avg_sq"][untouched] == 0).all()


def _kernels() -> bool:
    from dnmp.ops._extension import kernels_for
    return kernels_for(torch.device("cpu")) and hasattr(torch.ops.dnmp, "adam_rows_")


def test_adam_rows_op_equals_reference_on_large_rows():
    """The op against `_row_adam` on a table as the radiance stage's (many rows, 32
    channels, enough touched rows to run on several threads), over three steps."""
    if not _kernels():
        pytest.skip("compiled kernels not built")
    from dnmp.train.row_adam import _row_adam, _row_adam_fused
    g = torch.Generator().manual_seed(2)
    n, c = 50_000, 32
    tabs = {k: [torch.randn(n, c, generator=g), torch.zeros(n, c), torch.zeros(n, c)] for k in ("op", "ref")}
    tabs["ref"] = [t.clone() for t in tabs["op"]]
    for step in (1, 2, 3):
        rows = torch.randperm(n, generator=g)[: n // 4].sort().values
        grad = torch.randn(rows.numel(), c, generator=g) * 10 ** float(step - 2)
        _row_adam_fused(*tabs["op"][:1], rows, grad, *tabs["op"][1:], step, 0.03, 0.9, 0.999, 1e-8)
        _row_adam(*tabs["ref"][:1], rows, grad, *tabs["ref"][1:], step, 0.03, 0.9, 0.999, 1e-8)
        for a, b in zip(tabs["op"], tabs["ref"]):
            assert torch.equal(a, b), f"step {step}"


def test_adam_rows_op_errors():
    if not _kernels():
        pytest.skip("compiled kernels not built")
    p, m, v = torch.zeros(6, 2), torch.zeros(6, 2), torch.zeros(6, 2)
    op = torch.ops.dnmp.adam_rows_
    for rows, msg in ((torch.tensor([2, 1]), "sorted, unique"), (torch.tensor([1, 1]), "sorted, unique"),
                      (torch.tensor([0, 6]), r"in \[0, 6\)"), (torch.tensor([-1, 0]), "row 0 is -1")):
        with pytest.raises(IndexError, match=msg):
            op(p, m, v, rows, torch.ones(2, 2), 0.1, 0.9, 0.99, 1e-8)
    with pytest.raises(ValueError, match="grad must be"):
        op(p, m, v, torch.tensor([0, 1]), torch.ones(3, 2), 0.1, 0.9, 0.99, 1e-8)
    with pytest.raises(ValueError, match="must have param's shape"):
        op(p, m, torch.zeros(6, 3), torch.tensor([0]), torch.ones(1, 2), 0.1, 0.9, 0.99, 1e-8)
    with pytest.raises(ValueError, match="grad must be"):  # same count, other row shape
        p3 = torch.zeros(10, 4, 2)
        op(p3, p3.clone(), p3.clone(), torch.tensor([1, 3]), torch.ones(2, 2, 4), 0.1, 0.9, 0.99, 1e-8)
    with pytest.raises(TypeError, match="float32"):
        op(p.double(), m, v, torch.tensor([0]), torch.ones(1, 2), 0.1, 0.9, 0.99, 1e-8)
    with pytest.raises(TypeError, match="int64"):
        op(p, m, v, torch.tensor([0], dtype=torch.int32), torch.ones(1, 2), 0.1, 0.9, 0.99, 1e-8)
    assert not p.any() and not m.any() and not v.any()  # nothing written on error


def test_row_adam_state_is_sparse_adams():
    """A checkpoint's optimizer state of either loads into the other and continues alike."""
    n, c = 50, 3
    a = torch.nn.Parameter(torch.randn(n, c, generator=torch.Generator().manual_seed(1)))
    o_a = torch.optim.SparseAdam([a], lr=0.01)
    for step in range(2):
        a.grad = _sparse_grad(n, c, step, False)
        o_a.step()
    for cls in (RowAdam, torch.optim.SparseAdam):
        b = torch.nn.Parameter(a.detach().clone())
        o_b = cls([b], lr=0.01)
        o_b.load_state_dict(copy.deepcopy(o_a.state_dict()))
        o_c = RowAdam([b], lr=0.01)
        o_c.load_state_dict(o_b.state_dict())  # and back again
        assert o_c.state[b]["step"] == 2
    c_ = torch.nn.Parameter(a.detach().clone())
    o_c = RowAdam([c_], lr=0.01)
    o_c.load_state_dict(copy.deepcopy(o_a.state_dict()))
    a.grad = _sparse_grad(n, c, 7, False)
    c_.grad = a.grad.clone()
    o_a.step()
    o_c.step()
    assert torch.equal(a, c_)
    assert set(o_c.state_dict()["state"][0]) == set(o_a.state_dict()["state"][0])


def test_row_adam_errors():
    p = torch.nn.Parameter(torch.zeros(4, 2))
    p.grad = torch.ones(4, 2)
    with pytest.raises(RuntimeError, match="sparse COO gradients"):
        RowAdam([p]).step()
    with pytest.raises(ValueError, match="learning rate"):
        RowAdam([p], lr=0.0)
    with pytest.raises(ValueError, match=r"rows \[U\] and grad \[U, 2\]"):
        row_gradient(p, torch.tensor([0, 1]), torch.ones(3, 2))


def _scene_model(make_scene):
    scene = load_scene(make_scene("rows", frames=3))
    cfg = TrainConfig(hidden=16, feature_dim=8, seed=3, batch_size=384, far_shells=2, far_shell_texels=8)
    torch.manual_seed(0)
    r = build_renderer(scene_centres(scene, cfg), cfg)
    pool = FramePool(r, scene, scene.frames_by_split("train"), 10**9, 5, progress=False)
    pool.sync(0)
    return r, pool, cfg


def test_row_gradient_equals_the_embeddings(make_scene):
    r, pool, _ = _scene_model(make_scene)
    p2f, bary, dirs, rgb, origins = pool.batch(torch.randint(0, len(pool), (500,),
                                                             generator=torch.Generator().manual_seed(0)))
    assert (p2f >= 0).any() and (p2f < 0).all(-1).any()
    out_e = r.shade_rays(p2f, bary, dirs, sparse_features=True, ray_origins=origins)
    ((out_e["rgb"] - rgb) ** 2).mean().backward()
    g_emb = r.primitives.features.grad.coalesce()
    r.zero_grad(set_to_none=True)
    out_r = r.shade_rays(p2f, bary, dirs, sparse_features="rows", ray_origins=origins)
    ((out_r["rgb"] - rgb) ** 2).mean().backward()
    assert r.primitives.features.grad is None  # the rows' leaf took the gradient
    rows, attr = out_r["feature_rows"]
    assert torch.equal(attr, r.primitives.features.detach()[rows])
    g_rows = row_gradient(r.primitives.features, rows, attr.grad)
    assert torch.equal(out_r["rgb"], out_e["rgb"])
    assert torch.equal(g_rows.indices(), g_emb.indices())
    assert torch.equal(g_rows.values(), g_emb.values())
    with pytest.raises(ValueError, match="sparse_features must be"):
        r.shade_rays(p2f, bary, dirs, sparse_features="dense")


def test_radiance_steps_with_row_adam_equal_the_reference(make_scene):
    """The training step (row gradient + RowAdam) against the reference path (embedding +
    SparseAdam): the same parameters after several steps."""
    r, pool, cfg = _scene_model(make_scene)
    models = {rows: copy.deepcopy(r) for rows in (False, True)}
    opts = {rows: _make_optimizers(m, cfg, sparse_adam=not rows) for rows, m in models.items()}
    assert isinstance(opts[True]["features"], RowAdam)
    assert isinstance(opts[False]["features"], torch.optim.SparseAdam)
    for step in range(4):
        for rows, m in models.items():
            g = torch.Generator().manual_seed(step)
            radiance_loss_backward(m, pool, opts[rows], cfg.batch_size, generator=g, feature_rows=rows)
            optimizer_step(opts[rows])
    for (name, a), (_, b) in zip(models[False].state_dict().items(), models[True].state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(models[True].primitives.features, r.primitives.features)


def test_training_precision_follows_the_config(make_scene):
    """`TrainConfig.bf16_matmul` switches the radiance and sky MLPs of a training step to bf16
    products where the CPU has the kernels; the step's loss and feature gradient then stay
    within bf16's rounding of the float32 step's."""
    import dataclasses

    from dnmp.model.renderer import default_bf16_matmul

    r, pool, cfg = _scene_model(make_scene)
    out = {}
    for want in (False, True):
        m = copy.deepcopy(r)
        opts = _make_optimizers(m, dataclasses.replace(cfg, bf16_matmul=want))
        expect = want and default_bf16_matmul(torch.device("cpu"))
        assert m.field.bf16_matmul is expect and m.background.bf16_matmul is expect
        loss = radiance_loss_backward(m, pool, opts, cfg.batch_size, generator=torch.Generator().manual_seed(0))
        out[want] = (float(loss), m.primitives.features.grad.to_dense())
    if not default_bf16_matmul(torch.device("cpu")):
        pytest.skip("this CPU has no bf16 matrix kernels: both steps are float32")
    (l32, g32), (l16, g16) = out[False], out[True]
    assert abs(l16 - l32) < 1e-2 * l32 and l16 != l32
    assert float((g16 - g32).norm() / g32.norm()) < 0.1
