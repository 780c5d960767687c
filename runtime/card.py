"""What every engine serves: detections in one shape, and a model card that travels with the weights.

A ``ModelCard`` is the part of a checkpoint that serving needs besides the weights: the configuration, the
categories, provenance, and the cost counted where torch is available. ``detector.export`` writes it into the
ONNX file's metadata, so an ONNX model describes itself exactly as its source checkpoint does.
"""

import json
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from detector.categories import CategoryMap
from detector.config import DetectorConfig

CARD_FORMAT = "shufflenet-detect/model-card-v1"


class EngineError(ValueError):
    """A model file an engine cannot serve; the message names the file and the problem."""


@dataclass(frozen=True)
class Detections:
    """One image's detections in the pixels of the image given to ``predict``, in the model's own order."""

    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2
    labels: np.ndarray  # (N,) int64, contiguous 1..K (``ModelCard.categories`` maps them to ids and names)
    scores: np.ndarray  # (N,) float32


@dataclass(frozen=True)
class ModelCard:
    config: DetectorConfig
    categories: CategoryMap
    cost: dict  # detector.complexity's figures at the test input size: input_size, macs, macs_by_part, params
    provenance: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": CARD_FORMAT,
                "config": self.config.to_dict(),
                "categories": self.categories.to_coco(),
                "cost": self.cost,
                "provenance": self.provenance,
            },
            default=str,  # provenance is free-form (dates, paths)
        )

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
            raise ValueError(f"not a model card (expected format {CARD_FORMAT!r})")
        return cls(
            config=DetectorConfig.from_dict(data["config"]),
            categories=CategoryMap.from_coco(data["categories"]),
            cost=data["cost"],
            provenance=data.get("provenance", {}),
        )


class Engine(Protocol):
    """Runs a detector on decoded images. ``predict`` is called from one thread at a time."""

    name: str  # "torch" or "onnxruntime"
    card: ModelCard

    def predict(self, images: list[np.ndarray]) -> list[Detections]:
        """Detections for (3, H, W) float32 RGB images in 0..1, one per image, in the images' own pixels."""
        ...

    def close(self) -> None: ...
