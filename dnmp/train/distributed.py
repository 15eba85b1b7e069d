"""Several processes (torch.distributed): a drive's blocks spread over ranks, or one
block's batches split between them.

`dnmp train` started by torchrun (`torchrun --nproc-per-node N -m dnmp train SCENE`)
finds the standard environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
and joins a process group (`process_group`: gloo on CPU, NCCL for CUDA tensors with gloo
beside it for small CPU objects). Two ways to use it, decided in `pipeline.train`:

- **Blocks over ranks** (a drive of several blocks, `train.blocks`): the blocks not yet
  finished are dealt round-robin to the ranks (`assign_blocks`); each rank trains its
  blocks as single-process runs and marks each one finished in its own folder; after a
  barrier, rank 0 writes the complete manifest and scores the held-out frames. The deal
  depends only on which blocks are unfinished and the world size, so a re-run with any
  number of processes trains exactly the missing blocks.
- **Data parallelism** (a drive of one block, or `--data-parallel`): every rank holds
  the same model; each step a rank shades its own share of the batch, drawn with a
  generator seeded by (seed, rank, step), and `GradientSync` sums the gradients so every
  rank takes the same optimizer step as one process with the whole batch: the dense MLP
  gradients (and the loss) in one all-reduce, the vertex features' sparse gradients
  (rows touched by the batch, for `row_adam.RowAdam`) by all-gathering their (indices,
  values) and coalescing. A dense all-reduce of the feature gradient would move the whole
  feature table every step (O(scene) instead of O(batch); benchmarks/dist_grad_sync.py).

Only rank 0 writes run files (checkpoints, config.json, metrics.json, renders) in the
data-parallel mode; log lines of every rank are prefixed "[rank R/W]".
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# A collective waits this long for the slowest rank: with blocks spread over ranks the final
# barrier waits for the last block (hours on a long drive), and in the data-parallel mode the
# other ranks wait for rank 0's geometry stage. torchrun ends every worker when one dies, so a
# long timeout does not leave orphans waiting.
TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class DistContext:
    """This process's place among the training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        """True when there are other processes to work with."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes shared files and prints summaries."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_gather_object(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] when alone)."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def logger(self, log):
        """`log` with every line prefixed "[rank R/W] " when there are other processes."""
        if not self.active:
            return log
        prefix = f"[rank {self.rank}/{self.world_size}] "
        return lambda line="", *a, **k: log(prefix + str(line).lstrip("\n"), *a, **k)


SINGLE = DistContext()


def env_context() -> DistContext | None:
    """The DistContext that torchrun's environment describes, or None outside torchrun
    (RANK / WORLD_SIZE unset). Raises ValueError (one line) for malformed values."""
    if "WORLD_SIZE" not in os.environ and "RANK" not in os.environ:
        return None
    try:
        rank, world, local = (int(os.environ.get(k, "0" if k == "LOCAL_RANK" else "")) for k in ENV)
    except ValueError:
        got = ", ".join(f"{k}={os.environ.get(k)!r}" for k in ENV)
        raise ValueError(f"torch.distributed environment: RANK, WORLD_SIZE and LOCAL_RANK must be "
                         f"integers (got {got}); start dnmp with torchrun") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"torch.distributed environment: need 0 <= RANK < WORLD_SIZE and "
                         f"LOCAL_RANK >= 0 (got RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local})")
    return DistContext(rank, world, local)


def backend_for(device: str | torch.device) -> str:
    """"gloo" for CPU tensors; NCCL for CUDA tensors, with gloo for CPU objects beside it."""
    return "cpu:gloo,cuda:nccl" if torch.device(device).type == "cuda" else "gloo"


@contextmanager
def process_group(device: str | torch.device = "cpu") -> Iterator[DistContext]:
    """Join torchrun's process group for the duration of the block (SINGLE outside
    torchrun or with one process), and leave it at the end.

    Args:
        device: where the training tensors live; picks the backend (`backend_for`) and,
            for CUDA, the GPU of this process (cuda:LOCAL_RANK).
    Raises:
        ValueError: malformed torchrun variables, or MASTER_ADDR / MASTER_PORT missing.
    """
    ctx = env_context()
    if ctx is None or not ctx.active or dist.is_initialized():
        yield ctx if ctx is not None and dist.is_initialized() else SINGLE
        return
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"torch.distributed environment: {', '.join(missing)} not set; start dnmp "
                         f"with torchrun (it sets them)")
    backend = backend_for(device)
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend=backend, init_method="env://", rank=ctx.rank,
                            world_size=ctx.world_size, timeout=TIMEOUT)
    try:
        yield DistContext(ctx.rank, ctx.world_size, ctx.local_rank, backend)
    finally:
        dist.destroy_process_group()


def assign_blocks(pending: list[str], world_size: int) -> list[list[str]]:
    """Deal the unfinished blocks (names in drive order) round-robin to `world_size` ranks:
    rank r trains pending[r], pending[r + W], ... A function of the unfinished blocks and
    the world size alone, so every rank computes the same deal and a re-run (any W) trains
    each missing block exactly once."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return [pending[r::world_size] for r in range(world_size)]


def rank_batch_size(batch_size: int, rank: int, world_size: int) -> int:
    """This rank's share of `batch_size` rays (shares differ by at most one, sum to it)."""
    return batch_size // world_size + (1 if rank < batch_size % world_size else 0)


def rank_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator of rank `rank`'s rays at `step`: a function of (seed, rank, step), so a
    resumed run draws the same rays with no generator state in the checkpoint."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + rank) * 1_000_000_007 + step)


class GradientSync:
    """Sum the gradients of all ranks in place, so that each rank's optimizer step is the
    one a single process takes with the whole batch (each rank's loss must already be its
    share of the global loss: its rays' squared errors over the global number of values).

    Args:
        dense: parameters with dense gradients (MLPs); all-reduced as one flat buffer.
        sparse: the parameter with sparse COO gradients (vertex features, `RowAdam`; the
            radiance loop's gradient is already coalesced, so its coalesce here is free).
        ctx: the process group's context (active).
    """

    def __init__(self, dense: list[torch.Tensor], sparse: torch.Tensor, ctx: DistContext):
        self.dense, self.sparse, self.ctx = list(dense), sparse, ctx

    def __call__(self, loss: torch.Tensor, flags: list[float]) -> tuple[float, list[float]]:
        """Sum gradients, the loss and `flags` (e.g. "stop requested") over the ranks.

        A dense parameter that no rank gave a gradient keeps None (as in one process, the
        optimizer then skips it). Returns (summed loss, summed flags)."""
        dense = self.dense
        grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype,
                                                                             device=p.device)
                 for p in dense]
        had = [1.0 if p.grad is not None else 0.0 for p in dense]
        ref = dense[0] if dense else self.sparse
        tail = torch.tensor([*had, *flags], dtype=ref.dtype, device=ref.device)
        flat = torch.cat(grads + [loss.detach().reshape(1).to(ref.dtype), tail])
        dist.all_reduce(flat)
        n = sum(p.numel() for p in dense)
        out = flat[n:]
        offset = 0
        for p, count in zip(dense, out[1:1 + len(dense)].tolist()):
            g = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
            p.grad = g.clone() if count > 0 else None
        self._sync_sparse()
        return float(out[0]), out[1 + len(dense):].tolist()

    def _sync_sparse(self) -> None:
        p = self.sparse
        g = p.grad
        if g is None:
            idx = torch.zeros(0, dtype=torch.int64, device=p.device)
            val = torch.zeros(0, *p.shape[1:], dtype=p.dtype, device=p.device)
        else:
            g = g.coalesce()
            idx, val = g.indices()[0], g.values()
        # all_gather needs equal sizes: pad every rank's rows to the largest count
        counts = torch.tensor([idx.numel()], dtype=torch.int64, device=p.device)
        every = [torch.zeros_like(counts) for _ in range(self.ctx.world_size)]
        dist.all_gather(every, counts)
        sizes = [int(c) for c in every]
        most = max(sizes)
        if most == 0:
            p.grad = None
            return
        pad_idx = torch.zeros(most, dtype=idx.dtype, device=p.device)
        pad_val = torch.zeros(most, *p.shape[1:], dtype=p.dtype, device=p.device)
        pad_idx[:idx.numel()] = idx
        pad_val[:idx.numel()] = val
        all_idx = [torch.empty_like(pad_idx) for _ in sizes]
        all_val = [torch.empty_like(pad_val) for _ in sizes]
        dist.all_gather(all_idx, pad_idx)
        dist.all_gather(all_val, pad_val)
        idx = torch.cat([a[:s] for a, s in zip(all_idx, sizes)])
        val = torch.cat([a[:s] for a, s in zip(all_val, sizes)])
        p.grad = torch.sparse_coo_tensor(idx.unsqueeze(0), val, p.shape,
                                         check_invariants=False).coalesce()


def broadcast_parameters(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (the same start everywhere)."""
    if not ctx.active:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def state_checksum(module: torch.nn.Module) -> str:
    """SHA-256 of every tensor of the module's state dict (names, dtypes, shapes, bytes):
    equal for bit-identical models."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_identical(module: torch.nn.Module, ctx: DistContext) -> list[str]:
    """Every rank's `state_checksum` (rank order).

    Raises:
        RuntimeError: the ranks' models differ (a data-parallel run must keep them equal).
    """
    sums = ctx.all_gather_object(state_checksum(module))
    if len(set(sums)) > 1:
        raise RuntimeError("data-parallel ranks hold different models (parameter checksums "
                           + ", ".join(f"rank {r}: {s[:12]}" for r, s in enumerate(sums)) + ")")
    return sums


__all__ = ["DistContext", "SINGLE", "env_context", "backend_for", "process_group", "assign_blocks",
           "rank_batch_size", "rank_generator", "GradientSync", "broadcast_parameters",
           "state_checksum", "check_identical"]
