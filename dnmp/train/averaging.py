"""Tail averaging of the radiance stage's parameters (Polyak-Ruppert averaging; "SWA",
Izmailov et al. 2018, with the learning-rate decay of the run instead of cyclic rates).

The optimizers keep stepping the raw parameters; from step `start` on, every `every`-th
step adds them to a running mean. The mean is the model a run saves for rendering and
scores on its held-out frames: the last steps' parameters scatter around a minimum that
the mean sits closer to (README, issue 13's seventh round, has the measurement). Knows
tensors only, never files or configs.
"""

from __future__ import annotations

import torch


class ParameterAverage:
    """Running mean of named parameters, sampled every `every` steps after step `start`.

    Args:
        params: name -> the live parameter (any device, floating dtype); the names are the
            model's `state_dict` keys, so `averaged()` can update a state dict.
        start: the first sample is taken after step `start + every` (steps count from 1:
            `update(step)` is called with the number of steps completed).
        every: steps between samples, >= 1.
    Raises:
        ValueError: every < 1 or start < 0.
    """

    def __init__(self, params: dict[str, torch.Tensor], start: int, every: int):
        if every < 1 or start < 0:
            raise ValueError(f"ParameterAverage needs every >= 1 and start >= 0, got {every}, {start}")
        self.params = params
        self.start, self.every = int(start), int(every)
        self.count = 0  # samples in the mean
        self.first = None  # the step of the first sample
        self.mean: dict[str, torch.Tensor] = {}

    def update(self, step: int) -> None:
        """After `step` completed steps: adds the parameters to the mean when `step` is a
        sampling step (step > start, step - start a multiple of every). In place, on the
        parameters' device; no host round trip."""
        if step <= self.start or (step - self.start) % self.every:
            return
        self.count += 1
        if self.count == 1:
            self.first = int(step)
        with torch.no_grad():
            for name, p in self.params.items():
                if self.count == 1:
                    self.mean[name] = p.detach().clone()
                else:  # mean += (p - mean) / count
                    self.mean[name].lerp_(p.detach(), 1.0 / self.count)

    def averaged(self) -> dict[str, torch.Tensor]:
        """name -> the mean (the live parameter itself where no sample was taken yet)."""
        return {n: self.mean[n] if self.count else p.detach() for n, p in self.params.items()}

    def state_dict(self) -> dict | None:
        """What a checkpoint must hold to resume the average, beside a model state whose
        parameters are `averaged()`: the raw parameters, the sample count, start, every and
        the first sample's step; None before the first sample (the model state then holds the
        raw parameters). The raw tensors are detached views of the live parameters, as in
        `Module.state_dict` (a save writes them at once; nothing to copy)."""
        if not self.count:
            return None
        return {"count": self.count, "start": self.start, "every": self.every, "first": self.first,
                "raw": {n: p.detach() for n, p in self.params.items()}}

    def load_state_dict(self, state: dict | None) -> None:
        """Resume: the live parameters hold the saved model (the mean); `state` is
        `state_dict()`'s (None: no average was in progress, the parameters are raw). Takes
        the mean from the parameters, then puts the raw parameters back in them. The saved
        start and every win over the constructor's (a resumed average goes on as it began).
        Raises: ValueError for a state that is not one `state_dict` writes for these
        parameters (names, shapes, floating tensors, count >= 1, every >= 1, start >= 0,
        first a sampling step)."""
        if state is None:
            return
        if not isinstance(state, dict):
            raise ValueError(f"the parameter average is a {type(state).__name__}, not a dict")
        ints = {k: state.get(k) for k in ("count", "start", "every", "first")}
        if not all(type(v) is int for v in ints.values()):  # bool, float, str, None refused
            raise ValueError(f"count, start, every and first must be integers, got {ints}")
        count, start, every, first = ints["count"], ints["start"], ints["every"], ints["first"]
        if count < 1 or start < 0 or every < 1 or first <= start or (first - start) % every:
            raise ValueError(f"count {count}, start {start}, every {every}, first {first} do not "
                             f"describe samples (count >= 1, every >= 1, first = start + k every, k >= 1)")
        raw = state.get("raw")
        if not isinstance(raw, dict) or set(raw) != set(self.params):
            raise ValueError("the checkpoint's parameter average does not match the model's parameters")
        for n, p in self.params.items():
            r = raw[n]
            if not torch.is_tensor(r) or r.shape != p.shape or r.dtype != p.dtype:
                raise ValueError(f"the checkpoint's parameter average does not match the model's parameters "
                                 f"({n}: expected a {p.dtype} tensor of shape {tuple(p.shape)})")
        self.count, self.start, self.every, self.first = count, start, every, first
        with torch.no_grad():
            for name, p in self.params.items():
                self.mean[name] = p.detach().clone()
                p.copy_(raw[name].to(p.device))

    def apply(self) -> None:
        """Copies the mean into the live parameters (end of training: the model that is
        scored and kept); nothing before the first sample."""
        if not self.count:
            return
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.mean[name])
