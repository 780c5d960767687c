"""Shared fixtures: paths to the repo's data and to the real COCO sample beside the checkout."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
COCO128 = SHARED_DATA / "coco128"
COCOAPI_FIXTURES = SHARED_DATA / "cocoapi_fixtures"
COCO_PERSONS = SHARED_DATA / "coco2017_persons"
NANODET_IR = REPO.parent / "shared" / "weights" / "nanodet_m" / "nanodet_m.xml"


def pytest_sessionstart(session) -> None:
    # Two cores: keep each test process on one intra-op thread so parallel work does not thrash. Only the
    # processes that run tests import torch (pytest-xdist's controller never needs it: 2 s saved).
    if not hasattr(session.config, "workerinput") and session.config.getoption("numprocesses", None):
        return
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def coco128() -> Path:
    if not (COCO128 / "instances.json").is_file():
        pytest.fail(f"the real COCO sample is missing: expected {COCO128} (../shared/data beside the repo)")
    return COCO128


@pytest.fixture(scope="session")
def image_paths(coco128) -> list[Path]:
    return sorted((coco128 / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def jpeg(image_paths) -> bytes:
    return image_paths[0].read_bytes()  # 640 x 480


@pytest.fixture(scope="session")
def cocoapi_fixtures() -> Path:
    if not COCOAPI_FIXTURES.is_dir():
        pytest.fail(f"the COCO API fixtures are missing: expected {COCOAPI_FIXTURES}")
    return COCOAPI_FIXTURES


@pytest.fixture(scope="session")
def nanodet_ir() -> Path:
    if not NANODET_IR.is_file():
        pytest.fail(f"NanoDet-m's IR is missing: expected {NANODET_IR} (../shared/weights beside the repo)")
    return NANODET_IR


@pytest.fixture(scope="session")
def coco_persons() -> Path:
    if not (COCO_PERSONS / "instances.json").is_file():
        pytest.fail(f"the COCO person set is missing: expected {COCO_PERSONS}")
    return COCO_PERSONS
