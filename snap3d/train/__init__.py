"""The training loop, checkpoints and evaluation shared by every method."""

from snap3d.train.checkpoint import load_model, save_checkpoint
from snap3d.train.config import TrainConfig, resolve_device
from snap3d.train.evaluate import evaluate
from snap3d.train.registry import available_methods, get_method, register_method
from snap3d.train.trainer import Trainer

__all__ = [
    "TrainConfig",
    "Trainer",
    "available_methods",
    "evaluate",
    "get_method",
    "load_model",
    "register_method",
    "resolve_device",
    "save_checkpoint",
]
