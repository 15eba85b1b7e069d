"""dnmp: Deformable Neural Mesh Primitives (Lu et al., ICCV 2023) for urban radiance fields.

Subpackages:
    dnmp.ops        rasterization and interpolation kernels (C++/CUDA + pure-torch reference)
    dnmp.data       scene format (read, write, validate)
    dnmp.converters dataset converters into the scene format
    dnmp.model      primitives, shape decoder, radiance field, renderer
    dnmp.train      training stages and checkpoints
    dnmp.cli        the `dnmp` command line
"""

__version__ = "0.1.0"
