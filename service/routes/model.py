"""GET /v1/model: what is being served, by which engine, and what one image costs it."""

import json
from pathlib import Path

from fastapi import APIRouter, Request

from runtime import Engine

from ..schemas import Category, Cost, ModelInfo

router = APIRouter(tags=["model"])


def describe(engine: Engine, checkpoint: Path) -> ModelInfo:
    card = engine.card
    cost = card.cost
    return ModelInfo(
        name=card.config.name,
        backbone=card.config.backbone,
        classes=[Category(id=c.id, name=c.name) for c in card.categories.categories],
        input_size=list(cost["input_size"]),
        min_size=card.config.min_size,
        max_size=card.config.max_size,
        cost=Cost(
            macs=cost["macs"],
            gmacs=round(cost["macs"] / 1e9, 3),
            params=cost["params"],
            macs_by_part=cost["macs_by_part"],
        ),
        checkpoint=checkpoint.name,
        engine=engine.name,
        provenance=json.loads(json.dumps(card.provenance, default=str)),  # free-form: keep what JSON can say
    )


@router.get("/v1/model", response_model=ModelInfo, summary="The served model: classes, input size, backbone, cost")
async def model_info(request: Request) -> ModelInfo:
    return request.app.state.model_info
