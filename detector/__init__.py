"""Faster R-CNN detectors on ShuffleNet backbones: configurations, model, checkpoints, data and training."""

from .categories import Category, CategoryMap
from .checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .config import CONFIGS, DEFAULT_CONFIG, DetectorConfig, get_config
from .model import BackboneWithFPN, Detector, build_detector

__all__ = [
    "CONFIGS",
    "DEFAULT_CHECKPOINT",
    "DEFAULT_CONFIG",
    "BackboneWithFPN",
    "Category",
    "CategoryMap",
    "CheckpointError",
    "Detector",
    "DetectorConfig",
    "build_detector",
    "get_config",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]
