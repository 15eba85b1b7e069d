"""Which frames a scene keeps and which are held out: the frame window
(:func:`frame_window`, ``--window START:LEN``), :func:`stride_frames`
(``--stride N``), the DNMP stereo protocol (:func:`stereo_plan`) and
:func:`every_nth_split` (multi-sensor formats)."""

from __future__ import annotations

import re
from typing import Sequence

from dnmp.converters.capture import ConversionError


def frame_window(window: str, where) -> tuple:
    """``--window START:LEN`` -> (first, last), inclusive: LEN source frames
    from frame START (e.g. "715:80" is frames 715..794, one of the DNMP paper's
    80-frame KITTI-360 windows). Raises ConversionError (naming ``where``) for
    anything else; a bare number is a ``--preset`` window (kitti360 only)."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(window))
    if not m:
        hint = " (a bare window number needs --preset, kitti360 only)" if str(window).strip().isdigit() else ""
        raise ConversionError(where, f"--window must be START:LEN (frame numbers, e.g. 715:80), got {window!r}{hint}")
    start, length = int(m.group(1)), int(m.group(2))
    if length < 1:
        raise ConversionError(where, f"--window {window}: LEN must be >= 1")
    return start, start + length - 1


def stride_frames(indices: Sequence[int], stride: int) -> list:
    """Every ``stride``-th of ``indices`` (in order, starting with the first):
    ``--stride N`` keeps one frame in N before the split (so the held-out
    frames sit between training frames N apart)."""
    return list(indices)[::stride]


def stereo_plan(indices: Sequence[int], cameras: Sequence[str], held_out_cam: str,
                parity_origin: int | None = None) -> list:
    """The DNMP protocol for a stereo forward drive (DESIGN.md): a frame trains
    on every camera when it is even and is held out on ``held_out_cam`` only
    when it is odd (other cameras of odd frames are not used). Even/odd is the
    frame's position in ``indices`` (default: alternate along the kept frames,
    which is also what a ``--stride`` needs), or, with ``parity_origin``, of
    ``i - parity_origin`` (KITTI-360: DNMP's own parity of the frame index).
    Returns [(i, camera, "train" | "test")] in frame order."""
    plan = []
    for pos, i in enumerate(indices):
        train = ((i - parity_origin) if parity_origin is not None else pos) % 2 == 0
        for c in cameras:
            if train or c == held_out_cam:
                plan.append((i, c, "train" if train else "test"))
    return plan


def every_nth_split(n_items: int, every: int, offset: int | None = None) -> list:
    """Split labels for items in order: every ``every``-th item is "test"
    (positions offset, offset + every, ...; default offset every // 2, so
    held-out items sit between training ones), 0 = all "train"."""
    if every <= 0:
        return ["train"] * n_items
    if every == 1:
        raise ValueError("test split every 1 would hold out every frame; use >= 2 (or 0 for none)")
    off = every // 2 if offset is None else offset
    return ["test" if i % every == off % every else "train" for i in range(n_items)]


def drive_range(first, last, window, stride, where) -> tuple:
    """(first, last) of a KITTI-family frame choice: ``window`` ("START:LEN",
    :func:`frame_window`) or ``first``/``last`` (None = the converter's
    default), and refuses a ``stride`` that is not an integer >= 1
    (ConversionError naming ``where``)."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ConversionError(where, f"--stride must be an integer >= 1 (keep every Nth frame), got {stride!r}")
    if window is None:
        return first, last
    if first is not None or last is not None:
        raise ConversionError(where, "--window sets the frame range; do not also give --first/--last")
    return frame_window(window, where)
