"""Shared fixtures: paths to the repo's data and to the real COCO sample beside the checkout."""

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
COCO128 = SHARED_DATA / "coco128"
COCOAPI_FIXTURES = SHARED_DATA / "cocoapi_fixtures"

# Two cores: keep each test process on one intra-op thread so parallel work does not thrash.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def coco128() -> Path:
    if not (COCO128 / "instances.json").is_file():
        pytest.fail(f"the real COCO sample is missing: expected {COCO128} (../shared/data beside the repo)")
    return COCO128


@pytest.fixture(scope="session")
def cocoapi_fixtures() -> Path:
    if not COCOAPI_FIXTURES.is_dir():
        pytest.fail(f"the COCO API fixtures are missing: expected {COCOAPI_FIXTURES}")
    return COCOAPI_FIXTURES
