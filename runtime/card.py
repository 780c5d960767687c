"""What every engine serves: detections in one shape, described by the model card that travels with the weights
(``detector.card``, torch-free)."""

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from detector.card import ModelCard


class EngineError(ValueError):
    """A model file an engine cannot serve; the message names the file and the problem."""


@dataclass(frozen=True)
class Detections:
    """One image's detections in the pixels of the image given to ``predict``, in the model's own order."""

    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2
    labels: np.ndarray  # (N,) int64, contiguous 1..K (``ModelCard.categories`` maps them to ids and names)
    scores: np.ndarray  # (N,) float32


class Engine(Protocol):
    """Runs a detector on decoded images. ``predict`` is called from one thread at a time."""

    name: str  # "torch" or "onnxruntime"
    card: ModelCard

    def predict(self, images: list[np.ndarray]) -> list[Detections]:
        """Detections for (3, H, W) float32 RGB images in 0..1, one per image, in the images' own pixels."""
        ...

    def close(self) -> None: ...
