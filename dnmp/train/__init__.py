"""Training stages (radiance; the geometry stage comes later) and checkpoints."""

from .config import TrainConfig, load_config
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint

__all__ = ["TrainConfig", "load_config", "CheckpointError", "latest_checkpoint",
           "load_checkpoint", "save_checkpoint"]
