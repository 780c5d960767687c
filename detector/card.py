"""The model card: what a model file says about itself, torch-free, so that any engine can read it.

A ``ModelCard`` is the part of a checkpoint that serving needs besides the weights: the configuration, the
categories, provenance, and the cost (counted where torch is available, by ``detector.model_card``). The ONNX
export (``python -m tools.export``) writes it into the file's metadata under ``CARD_KEY``, with one input and
three outputs named here, so an ONNX model describes itself exactly as its source checkpoint does and the
engines in ``runtime`` read it without torch.
"""

import json
from dataclasses import dataclass, field

from .categories import CategoryMap
from .config import DetectorConfig

CARD_FORMAT = "shufflenet-detect/model-card-v1"
# The exported graph's contract: its metadata key for the card, its input and its outputs.
CARD_KEY = "shufflenet_detect.card"
INPUT = "image"
OUTPUTS = ["boxes", "labels", "scores"]


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
