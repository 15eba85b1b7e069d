"""dnmp._io: safe loading (no code runs from a crafted file), plain-data saves, a full
disk reported as such, stale temporaries removed."""

from __future__ import annotations

import ast
import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dnmp import _io
from dnmp.cli import main
from dnmp.model.autoencoder import ShapeWeightsError, load_shape_decoder
from dnmp.train import CheckpointError, load_checkpoint, save_checkpoint

PACKAGE = Path(__file__).resolve().parents[1] / "dnmp"


class _RunsCode:
    """Unpickling this runs `touch MARKER` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_checkpoint_is_refused_without_running_code(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    bad = tmp_path / "run" / "checkpoints" / "step_0000100.pt"
    bad.parent.mkdir(parents=True)
    torch.save({"format": "dnmp-checkpoint", "version": 2, "step": 100,
                "model": {"w": torch.zeros(2)}, "payload": _RunsCode(marker)}, bad)
    with pytest.raises(CheckpointError, match=r"step_0000100\.pt: refused to load: .*posix\.system") as exc:
        load_checkpoint(bad)
    assert "\n" not in str(exc.value)
    assert not marker.exists()
    # through the command line, by file and by run folder: one line, exit code 2, nothing run
    for target in (bad, tmp_path / "run"):
        assert main(["render", str(target)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dnmp: error: ") and "refused to load" in err[0]
    assert not marker.exists()


def test_crafted_shape_weights_are_refused(tmp_path):
    marker = tmp_path / "MARKER"
    bad = tmp_path / "ae.pt"
    torch.save({"format": "dnmp-shape-autoencoder", "decoder": _RunsCode(marker)}, bad)
    with pytest.raises(ShapeWeightsError, match=r"ae\.pt: refused to load"):
        load_shape_decoder(bad)
    assert not marker.exists()


def test_every_torch_load_in_the_package_is_weights_only():
    calls = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "pickle.load",
                                                                         "pickle.loads"):
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((path.name, ast.unparse(node.func), kw.get("weights_only")))
    assert calls == [("_io.py", "torch.load", "True")]  # one place loads torch files, safely


def test_saves_hold_only_plain_data(tmp_path):
    with pytest.raises(TypeError, match=r"extra/x: numpy.float64 is not plain data"):
        save_checkpoint(tmp_path, 1, {"extra": {"x": np.float64(1.0)}})
    assert not list(tmp_path.iterdir())  # nothing written, no temporary left
    _io.check_plain({"a": [1, 2.5, "s", None, (torch.zeros(1), True)], 3: {"b": torch.Size([2])}})


def _disk_full_after(nbytes: int, hook_checkpoint_writes):
    """Make atomic_torch_save's file raise ENOSPC once `nbytes` were written."""
    def full(save, write, written):
        if written > nbytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    hook_checkpoint_writes(full)


def test_disk_full_is_reported_as_no_space_left(tmp_path, monkeypatch, hook_checkpoint_writes):
    save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(10)}})
    _disk_full_after(2000, hook_checkpoint_writes)
    with pytest.raises(OSError) as exc:
        save_checkpoint(tmp_path, 2, {"model": {"w": torch.ones(100_000)}})
    assert exc.value.errno == errno.ENOSPC and exc.value.strerror == "No space left on device"
    assert exc.value.filename.endswith("step_0000002.pt")
    assert "unexpected pos" not in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000001.pt"]  # old one intact
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["step"] == 1


def test_disk_full_during_training_is_one_line(tiny_scene, tmp_path, monkeypatch, capsys,
                                               hook_checkpoint_writes):
    cfg = tmp_path / "c.toml"
    cfg.write_text("steps = 2\nbatch_size = 64\nhidden = 8\nfeature_dim = 4\n")
    _disk_full_after(1000, hook_checkpoint_writes)
    rc = main(["train", str(tiny_scene), "--out", str(tmp_path / "run"), "--config", str(cfg), "--quiet"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("dnmp: error:")]
    assert rc == 2 and len(err) == 1
    assert err[0].endswith("step_0000002.pt: No space left on device"), err
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp_*"))


def test_remove_stale_temporaries(tmp_path):
    (tmp_path / ".tmp_abc.pt").write_bytes(b"x" * 10)
    (tmp_path / "step_0000001.pt").write_bytes(b"y")
    removed = _io.remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".tmp_abc.pt"]
    assert [p.name for p in tmp_path.iterdir()] == ["step_0000001.pt"]
    assert _io.remove_stale_temporaries(tmp_path / "missing") == []
