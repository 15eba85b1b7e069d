#!/usr/bin/env bash
# Set up dnmp on a fresh machine (Debian/Ubuntu, Python >= 3.11):
#   - libusb-1.0-0, a system library open3d's wheel needs (apt, as root or via sudo);
#   - a virtual environment in ./.venv (override with DNMP_VENV=path);
#   - torch pinned to 2.13.0 (CPU build; an unpinned torch would pull a multi-GB CUDA build);
#   - dnmp itself, editable, with its C++ extension compiled ahead of time against that torch
#     (--no-build-isolation so the build sees the installed torch).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${DNMP_VENV:-.venv}"
PY="${PYTHON:-python3}"

if ! ldconfig -p 2>/dev/null | grep -q "libusb-1.0.so.0"; then
  echo "install.sh: installing libusb-1.0-0 (needed by open3d)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libusb-1.0-0 >/dev/null
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# Already installed from this checkout (a second README command in the same folder)? Then skip.
if "$VENV/bin/python" - <<'PYEOF' 2>/dev/null
import pathlib, sys, dnmp, pytest, viser  # noqa: F401  (a dependency added later: reinstall)
sys.exit(0 if pathlib.Path(dnmp.__file__).resolve().parents[1] == pathlib.Path.cwd().resolve() else 1)
PYEOF
then
  echo "install.sh: dnmp already installed in $VENV"
else
  "$VENV/bin/python" -m pip install -q "setuptools>=64" wheel
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q --no-build-isolation -e ".[test]"
fi
"$VENV/bin/python" -c "import dnmp.ops as o; print('dnmp installed; kernels backend:', o.backend())"
