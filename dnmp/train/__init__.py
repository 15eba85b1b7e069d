"""Training: the geometry and radiance stages, the model factory, run folders and checkpoints
(see design.md in this folder)."""

from .config import TrainConfig, load_config
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint

__all__ = ["TrainConfig", "load_config", "CheckpointError", "latest_checkpoint",
           "load_checkpoint", "save_checkpoint"]
