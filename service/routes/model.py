"""GET /v1/model: what is being served, and what one image costs it."""

import json
from pathlib import Path

from fastapi import APIRouter, Request

from detector import Detector
from detector.complexity import detector_complexity

from ..schemas import Category, Cost, ModelInfo

router = APIRouter(tags=["model"])


def describe(detector: Detector, checkpoint: Path) -> ModelInfo:
    """Computed once at start-up: the cost count runs one image through a copy of the network."""
    config, categories = detector.config, detector.categories
    cost = detector_complexity(config, categories)
    # Provenance is free-form; keep only what JSON can say.
    provenance = json.loads(json.dumps(detector.provenance, default=str))
    return ModelInfo(
        name=config.name,
        backbone=config.backbone,
        classes=[Category(id=c.id, name=c.name) for c in categories.categories],
        input_size=list(cost["input_size"]),
        min_size=config.min_size,
        max_size=config.max_size,
        cost=Cost(
            macs=cost["macs"],
            gmacs=round(cost["macs"] / 1e9, 3),
            params=cost["params"],
            macs_by_part=cost["macs_by_part"],
        ),
        checkpoint=checkpoint.name,
        provenance=provenance,
    )


@router.get("/v1/model", response_model=ModelInfo, summary="The served model: classes, input size, backbone, cost")
async def model_info(request: Request) -> ModelInfo:
    return request.app.state.model_info
