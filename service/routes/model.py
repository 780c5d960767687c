"""GET /v1/model: what is being served, by which engine, and what one image costs it."""

import json
from pathlib import Path, PurePosixPath, PureWindowsPath

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
        provenance=public_provenance(json.loads(json.dumps(card.provenance, default=str))),  # what JSON can say
    )


# Written by the training run: its command line (paths, maybe credentials) and machine are nobody else's business.
PRIVATE_KEYS = {"command", "argv", "cmdline", "host", "hostname", "user", "cwd", "env"}


def public_provenance(value):
    """The model's provenance without the training machine's details: no command line, and absolute paths
    reduced to their file names (``/home/me/data/train.json`` -> ``train.json``)."""
    if isinstance(value, dict):
        return {key: public_provenance(item) for key, item in value.items() if key.lower() not in PRIVATE_KEYS}
    if isinstance(value, list):
        return [public_provenance(item) for item in value]
    if isinstance(value, str) and (value.startswith(("/", "~")) or PureWindowsPath(value).drive):
        return (PureWindowsPath(value) if PureWindowsPath(value).drive else PurePosixPath(value)).name
    return value


@router.get("/v1/model", response_model=ModelInfo, summary="The served model: classes, input size, backbone, cost")
async def model_info(request: Request) -> ModelInfo:
    return request.app.state.model_info
