"""dnmp.converters: dataset converters into the dnmp scene format.

One module per source format (``kitti_odometry``, ...); shared steps in ``common``.
"""
