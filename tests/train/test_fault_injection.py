"""Fault injection: `dnmp train` in a subprocess, killed at seeded random moments.

Each trial starts a tiny training (a fresh run, or `--resume` of the previous trial's
run) and sends SIGINT, SIGTERM or SIGKILL (7 each by default, shuffled;
DNMP_FAULT_TRIALS=N changes the count, 0 skips) at a seeded random moment: one trial in
five within 1.5 s of its first log line (the geometry stage of a fresh run), the others
within 2.5 s of the radiance loop's start (its "cached fragments" line), where a
checkpoint (4 MB) is saved every 2 steps; half of the SIGKILLs then wait for a save to be
in progress (a `.tmp_*` file in the checkpoint folder), to kill it mid-write. After every trial:
- the newest step checkpoint (and geometry.pt) loads;
- no step is lost: the newest checkpoint is at least the one before the trial;
- SIGINT/SIGTERM: exit code 130/143 (or 0 if the run ended first); when the process
  reports "stopped by SIG... at step N" the newest checkpoint is step N;
- the next start removes every `.tmp_*` file left by a killed save, and a resumed run
  continues from the newest checkpoint (or from geometry.pt before the first one).
A last `--resume` then completes the run. Outcomes are printed (pytest -s).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from dnmp.train import load_checkpoint
from dnmp.train.checkpoint import GEOMETRY_NAME, latest_checkpoint

from ..conftest import make_tiny_scene

TRIALS = int(os.environ.get("DNMP_FAULT_TRIALS", "21"))
SEED = 10
STEPS = 2000
CONFIG = (f"steps = {STEPS}\nbatch_size = 256\ncheckpoint_every = 2\nkeep_checkpoints = 3\n"
          "log_every = 50\nhidden = 16\nfeature_dim = 32\ngeometry_steps = 10\n"
          "geometry_window = 16\ngeometry_windows = 4\n")
STOPPED = re.compile(r"stopped by (SIGINT|SIGTERM) at step (\d+); saved (\S+);")
RESUMED = re.compile(r"resuming from \S+ \(step (\d+)\)")


def _temporaries(run: Path) -> set[Path]:
    return set(run.rglob(".tmp_*")) | set(run.rglob(".*.tmp*")) if run.exists() else set()


def _newest_step(run: Path) -> int | None:
    path = latest_checkpoint(run / "checkpoints")
    return None if path is None else load_checkpoint(path)["step"]  # raises if unloadable


class _Run:
    """`dnmp train` in a subprocess; stdout lines collected by a thread."""

    def __init__(self, args: list[str]):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "dnmp.cli", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.out, self.err, self.started, self.looping = [], [], threading.Event(), threading.Event()
        self.threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out, True)),
                        threading.Thread(target=self._read, args=(self.proc.stderr, self.err, False))]
        for t in self.threads:
            t.start()

    def _read(self, stream, lines, is_out):
        for line in stream:
            lines.append(line.rstrip("\n"))
            if is_out:
                self.started.set()
                if line.startswith("cached fragments"):
                    self.looping.set()
        self.started.set()
        self.looping.set()

    def finish(self, timeout=600) -> int:
        rc = self.proc.wait(timeout=timeout)
        for t in self.threads:
            t.join()
        return rc


@pytest.mark.faults
@pytest.mark.skipif(TRIALS <= 0, reason="DNMP_FAULT_TRIALS=0")
def test_signals_at_random_moments_never_lose_a_step(tmp_path):
    scene = make_tiny_scene(tmp_path / "tiny", depth=True)
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    rng = random.Random(SEED)
    kinds = [(signal.SIGINT, signal.SIGTERM, signal.SIGKILL)[i % 3] for i in range(TRIALS)]
    rng.shuffle(kinds)
    outcomes, runs = Counter(), 0
    run = tmp_path / f"run{runs}"
    for trial, sig in enumerate(kinds):
        stale = _temporaries(run)
        before = _newest_step(run)
        has_geometry = (run / "checkpoints" / GEOMETRY_NAME).is_file()
        resume = before is not None or has_geometry
        args = ["train", str(scene), "--out", str(run), "--config", str(cfg), "--quiet"]
        p = _Run([a for a in args if not (resume and a in ("--config", str(cfg)))]
                 + (["--resume"] if resume else []))
        early = rng.random() < 0.2
        delay = rng.uniform(0.0, 1.5 if early else 2.5)
        mid_save = sig == signal.SIGKILL and rng.random() < 0.5
        assert (p.started if early else p.looping).wait(300), "no output from dnmp train"
        time.sleep(delay)
        if mid_save:  # poll for a save in progress, then kill at once
            limit = time.monotonic() + 10
            while p.proc.poll() is None and time.monotonic() < limit:
                if any(e.name.startswith(".tmp_") for e in os.scandir(run / "checkpoints")):
                    break
        sent = p.proc.poll() is None
        if sent:
            p.proc.send_signal(sig)
        rc = p.finish()
        out, err = "\n".join(p.out), "\n".join(p.err)
        where = f"trial {trial} ({sig.name}, rc {rc}):\n{out}\n{err}"
        assert "Traceback" not in err, where
        # the start removed what earlier kills left, and resumed from the newest checkpoint
        assert not (stale & _temporaries(run)), where
        if resume and before is not None:
            assert [int(s) for s in RESUMED.findall(out)] == [before], where
        elif resume:
            assert "starting the radiance stage from geometry.pt" in out, where
        after = _newest_step(run)  # loads the newest checkpoint
        if has_geometry or (run / "checkpoints" / GEOMETRY_NAME).is_file():
            load_checkpoint(run / "checkpoints" / GEOMETRY_NAME)
        assert before is None or (after is not None and after >= before), where
        stopped = STOPPED.search(out)
        if not sent or rc == 0:
            kind = "finished before the signal"
            assert rc == 0 and after == STEPS, where
        elif sig == signal.SIGKILL:
            assert rc == -signal.SIGKILL, where
            kind = "killed" + (" (temporary file left)" if _temporaries(run) else "")
        else:
            assert rc == 128 + sig, where
            if stopped:
                assert stopped.group(1) == sig.name and after == int(stopped.group(2)), where
                assert Path(stopped.group(3)).name == f"step_{after:07d}.pt", where
                kind = "stopped at a step, saved it"
            elif "the geometry stage was interrupted" in out:
                kind = "stopped in the geometry stage (nothing to save)"
                assert after == before, where
            else:  # before the loop (caching) or after it (held-out renders): nothing unsaved
                assert f"dnmp: interrupted by {sig.name}" in err, where
                assert after in (before, STEPS), where
                kind = "stopped outside the step loop (state already saved)"
        outcomes[(sig.name, kind)] += 1
        if after == STEPS:  # this run is complete: the next trials start another one
            runs += 1
            run = tmp_path / f"run{runs}"
    # the last run completes on --resume and leaves no temporary file
    stale = _temporaries(run)
    resume = _newest_step(run) is not None or (run / "checkpoints" / GEOMETRY_NAME).is_file()
    args = ["train", str(scene), "--out", str(run), "--quiet"] + (["--resume"] if resume else
                                                                   ["--config", str(cfg)])
    p = _Run(args)
    assert p.finish() == 0, "\n".join(p.out + p.err)
    assert _newest_step(run) == STEPS and not _temporaries(run) and not stale & _temporaries(run)
    print(f"\nfault injection: {TRIALS} trials, seed {SEED}, {runs + 1} runs")
    for (name, kind), n in sorted(outcomes.items()):
        print(f"  {name:8s} {kind}: {n}")
    assert sum(outcomes.values()) == TRIALS
