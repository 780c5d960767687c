"""Faster R-CNN detectors on ShuffleNet backbones: configurations, model, checkpoints, data and training.

Categories, configurations and the model card are plain Python; everything else needs torch and is imported on
first use, so that the torch-free ONNX Runtime engine (``runtime/``) can read a model's card.
"""

import importlib

from .card import ModelCard
from .categories import Category, CategoryMap
from .config import (
    CONFIGS,
    DEFAULT_CHECKPOINT,
    DEFAULT_CONFIG,
    DEFAULT_EXPORT,
    DEMO_CHECKPOINT,
    DEMO_EXPORT,
    DetectorConfig,
    get_config,
)

_NEEDS_TORCH = {
    "CheckpointError": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "read_checkpoint": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "model_card": ".checkpoint",
    "BackboneWithNeck": ".model",
    "Detector": ".model",
    "build_detector": ".model",
}


def __getattr__(name: str):
    if name in _NEEDS_TORCH:
        return getattr(importlib.import_module(_NEEDS_TORCH[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONFIGS",
    "DEFAULT_CHECKPOINT",
    "DEFAULT_CONFIG",
    "DEFAULT_EXPORT",
    "DEMO_CHECKPOINT",
    "DEMO_EXPORT",
    "Category",
    "CategoryMap",
    "DetectorConfig",
    "ModelCard",
    "get_config",
    *_NEEDS_TORCH,
]
