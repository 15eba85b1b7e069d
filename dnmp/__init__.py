"""dnmp: Deformable Neural Mesh Primitives (Lu et al., ICCV 2023) for urban radiance fields.

Subpackages:
    dnmp.ops        rasterization and interpolation kernels (C++/CUDA + pure-torch reference)
    dnmp.data       scene format (read, write, validate)
    dnmp.converters dataset converters into the scene format
    dnmp.model      primitives, shape decoder, radiance field, renderer
    dnmp.train      training stages and checkpoints
    dnmp.cli        the `dnmp` command line
"""

import os as _os

# OpenMP threads that spin while waiting collapse when another process shares the
# cores (measured: 5x slower training on 2 busy cores). Passive waiting costs little
# on an idle machine. Only a default: takes effect if torch is not imported yet,
# and an explicit OMP_WAIT_POLICY wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
