"""Adam on the rows of a table that a step touches (the vertex features of the radiance stage).

A training batch touches ~10^5 of ~10^6 vertex feature rows. `torch.optim.SparseAdam`
updates only those rows, but through sparse COO arithmetic: it coalesces the gradient
(a sort), then `sparse_mask` and sparse additions for each of the two moments and the
parameter. `RowAdam` computes the same update with dense row operations at the
gradient's row indices (`index_select`, elementwise math on [U, C], `index_copy_`,
`index_add_`): same formulas in the same order, so the same bits as SparseAdam (checked
by tests/train/test_row_adam.py), in about half the time on the bundled scene. On a CPU
with the compiled kernels, float32 tables take the op `torch.ops.dnmp.adam_rows_`
(csrc/cpu/adam_rows_cpu.cpp: each touched row read and written twice instead of about a
dozen times, the same float operations, the same bits); `_row_adam` in torch stays its reference.

Its gradient is SparseAdam's: a sparse COO tensor of the parameter's shape. A coalesced
one is used as it is; `row_gradient` builds one from a batch's sorted unique rows and
their dense gradient without a sort (what `radiance.radiance_loss_backward` does with
`DNMPRenderer.shade_rays(sparse_features="rows")`). An uncoalesced one (e.g. from
`F.embedding(sparse=True)`) is coalesced first, as SparseAdam does.

Its state is SparseAdam's, key for key (`step`: int, the number of updates of that
parameter, which drives the bias correction; `exp_avg`, `exp_avg_sq`: dense, the
parameter's shape), so a checkpoint's optimizer state loads into either.
"""

from __future__ import annotations

import math

import torch


def row_gradient(param: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The sparse COO gradient of `param` that is `grad` at rows `rows` and 0 elsewhere.

    Args:
        param: float [N, C] the parameter (shape, dtype and device of the result).
        rows: int64 [U] row indices, sorted and unique (e.g. from `unique_inverse`;
            not checked: checking would read the device); on param's device.
        grad: float [U, C] the gradient of those rows.
    Returns:
        sparse COO [N, C], marked coalesced (no sort when an optimizer coalesces it).
    """
    if rows.dim() != 1 or grad.shape != (rows.shape[0], *param.shape[1:]):
        raise ValueError(f"row_gradient: rows [U] and grad [U, {', '.join(map(str, param.shape[1:]))}] "
                         f"expected, got rows {list(rows.shape)} and grad {list(grad.shape)}")
    return torch.sparse_coo_tensor(rows.unsqueeze(0), grad, param.shape, dtype=param.dtype,
                                   device=param.device, is_coalesced=True, check_invariants=False)


class RowAdam(torch.optim.Optimizer):
    """Adam with SparseAdam's semantics on sparse gradients, computed on dense rows.

    Only the rows in a parameter's gradient change (parameter and both moments); the
    others, and their moments, stay as they are. The bias correction follows the
    parameter's own count of updates (`state["step"]`), as in SparseAdam.

    Args:
        params: parameters (float [N, ...]) whose gradients are sparse COO tensors.
        lr, betas, eps: as in `torch.optim.SparseAdam`.
        fused: None or True (default None): the compiled op `adam_rows_` for contiguous
            float32 CPU parameters where the kernels are built, else the torch path; False:
            always the torch path (`_row_adam`, the reference). Not saved in the state dict.
    Raises:
        ValueError: lr, eps or betas out of range.
        RuntimeError (in `step`): a dense gradient.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, fused: bool | None = None):
        if not 0.0 < lr:
            raise ValueError(f"RowAdam: invalid learning rate {lr}")
        if not 0.0 < eps:
            raise ValueError(f"RowAdam: invalid epsilon {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"RowAdam: betas must lie in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        self.fused = fused

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = float(group["lr"]), group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not grad.is_sparse:
                    raise RuntimeError("RowAdam takes sparse COO gradients (rows of the parameter); "
                                       "use torch.optim.Adam for dense ones")
                if not grad.is_coalesced():
                    grad = grad.coalesce()  # the update is non-linear: one value per row
                rows, values = grad._indices()[0], grad._values()
                if values.numel() == 0:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                update = _row_adam_fused if self._use_fused(p, state) else _row_adam
                update(p, rows, values, state["exp_avg"], state["exp_avg_sq"], state["step"],
                       lr, beta1, beta2, eps)
        return loss

    def _use_fused(self, p: torch.Tensor, state: dict) -> bool:
        if self.fused is False or p.device.type != "cpu" or p.dtype != torch.float32:
            return False
        if not (p.is_contiguous() and state["exp_avg"].is_contiguous()
                and state["exp_avg_sq"].is_contiguous()):
            return False
        from ..ops._extension import kernels_for  # loads the extension once
        return kernels_for(p.device) and hasattr(torch.ops.dnmp, "adam_rows_")


def _step_size(lr: float, beta1: float, beta2: float, step: int) -> float:
    return lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)


def _row_adam_fused(param: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                    exp_avg_sq: torch.Tensor, step: int, lr: float, beta1: float, beta2: float,
                    eps: float) -> None:
    """`_row_adam` by the compiled op (float32, CPU, contiguous): the same bits."""
    torch.ops.dnmp.adam_rows_(param, exp_avg, exp_avg_sq, rows, grad.to(param.dtype),
                              _step_size(lr, beta1, beta2, step), beta1, beta2, eps)


def _row_adam(param: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
              exp_avg_sq: torch.Tensor, step: int, lr: float, beta1: float, beta2: float,
              eps: float) -> None:
    """One update of rows `rows` (int64 [U], unique) with their gradient `grad` ([U, ...]).

    The operations are `torch.optim._functional.sparse_adam`'s, in its order (there a
    sparse add `t.add_(sparse(u))` writes t[rows] + u, here `index_copy_` of u + t[rows]
    and `index_add_`): the same float operations on the same operands."""
    old_avg = exp_avg.index_select(0, rows)
    old_sq = exp_avg_sq.index_select(0, rows)
    new_avg = grad.sub(old_avg).mul_(1 - beta1).add_(old_avg)
    new_sq = grad.pow(2).sub_(old_sq).mul_(1 - beta2).add_(old_sq)
    exp_avg.index_copy_(0, rows, new_avg)
    exp_avg_sq.index_copy_(0, rows, new_sq)
    step_size = _step_size(lr, beta1, beta2, step)
    param.index_add_(0, rows, new_avg.div_(new_sq.sqrt_().add_(eps)).mul_(-step_size))


__all__ = ["RowAdam", "row_gradient"]
