"""NanoDet-m as teacher: run as its authors run it, it scores what it is known to score; its labels merge right."""

import json
import subprocess
import sys

import numpy as np
import pytest

from backbone import WeightsError
from detector.categories import CategoryMap
from detector.coco_classes import coco_category_map
from detector.data import IGNORE_LABEL, CocoDetectionDataset, DatasetError, load_coco
from detector.distill import distilled_annotations, teacher_detections
from detector.nanodet import NanoDetM, class_wise_nms, letterbox_matrix
from eval.scoring import score_results
from tests.conftest import REPO


@pytest.fixture(scope="module")
def teacher(nanodet_ir):
    return NanoDetM(nanodet_ir, threads=1)


@pytest.mark.slow  # NanoDet-m over all of coco128: 7 s
def test_teacher_scores_its_known_ap_on_coco128(teacher, coco128, tmp_path):
    # 0.331 AP / 0.508 AP50, measured independently with a PyTorch rebuild of the IR (shared/weights README).
    found = teacher_detections(teacher, coco128 / "images", coco128 / "instances.json", tmp_path / "cache.json")
    results = [{"image_id": image_id, **det} for image_id, dets in found.items() for det in dets]
    stats = score_results(load_coco(coco128 / "instances.json"), results)["stats"]
    assert stats["AP"] == pytest.approx(0.331, abs=0.002)
    assert stats["AP50"] == pytest.approx(0.508, abs=0.002)
    # The cache is reused as long as the teacher and the images are the same.
    cached = teacher_detections(teacher, coco128 / "images", coco128 / "instances.json", tmp_path / "cache.json")
    assert cached == found


def test_letterbox_fits_and_centres():
    matrix = letterbox_matrix(640, 480)
    corners = matrix @ np.array([[0, 640], [0, 480], [1, 1]], dtype=np.float64)
    assert corners[:2].T.tolist() == [[0.0, 40.0], [320.0, 280.0]]  # width fills, height centred
    portrait = letterbox_matrix(240, 480)
    corners = portrait @ np.array([[0, 240], [0, 480], [1, 1]], dtype=np.float64)
    assert corners[:2].T.tolist() == [[80.0, 0.0], [240.0, 320.0]]


def test_nms_is_class_wise():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 10]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    labels = np.array([0, 0, 1])
    assert class_wise_nms(boxes, scores, labels, 0.6).tolist() == [0, 2]


def test_real_boxes_kept_and_teacher_fills_other_classes(coco_persons, tmp_path):
    data = json.loads((coco_persons / "instances.json").read_text())
    image = data["images"][0]
    subset = tmp_path / "subset.json"
    anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
    subset.write_text(json.dumps({**data, "images": [image], "annotations": anns}))
    detections = {
        image["id"]: [
            {"category_id": 1, "bbox": [1, 1, 20, 20], "score": 0.9},  # a person: the real boxes win
            {"category_id": 3, "bbox": [5, 5, 30, 30], "score": 0.5},  # a car: kept
            {"category_id": 18, "bbox": [5, 5, 30, 30], "score": 0.2},  # a dog below the threshold: dropped
        ]
    }
    merged = distilled_annotations(subset, detections, coco_category_map(), min_score=0.3)
    assert len(merged["categories"]) == 80
    persons = [a for a in merged["annotations"] if a["category_id"] == 1]
    assert [a["bbox"] for a in persons] == [a["bbox"] for a in anns]
    others = [(a["category_id"], a["bbox"]) for a in merged["annotations"] if a["category_id"] != 1]
    assert others == [(3, [5, 5, 30, 30])]
    assert len({a["id"] for a in merged["annotations"]}) == len(merged["annotations"])


def test_unsure_teacher_detections_become_regions_to_ignore(coco_persons, tmp_path):
    data = json.loads((coco_persons / "instances.json").read_text())
    image = data["images"][0]
    subset = tmp_path / "subset.json"
    subset.write_text(json.dumps({**data, "images": [image], "annotations": []}))  # persons only, none boxed
    detections = {
        image["id"]: [
            {"category_id": 3, "bbox": [5, 5, 30, 30], "score": 0.5},  # sure: a label
            {"category_id": 18, "bbox": [50, 50, 30, 30], "score": 0.2},  # unsure: ignored in training
            {"category_id": 18, "bbox": [90, 90, 30, 30], "score": 0.08},  # below both: background
            {"category_id": 8, "bbox": [6, 6, 30, 30], "score": 0.2},  # unsure, on the car: the car's
        ]
    }
    merged = distilled_annotations(subset, detections, coco_category_map(), min_score=0.3, ignore_score=0.1)
    kept = [(a["category_id"], a["bbox"], a.get("ignore", False)) for a in merged["annotations"]]
    assert kept == [(3, [5, 5, 30, 30], False), (18, [50, 50, 30, 30], True)]
    path = tmp_path / "merged.json"
    path.write_text(json.dumps(merged))
    training = CocoDetectionDataset(coco_persons / "images", path, train=True, hflip=0)
    _, target = training[0]
    assert target["labels"].tolist() == [coco_category_map().label(3), IGNORE_LABEL]
    _, target = CocoDetectionDataset(coco_persons / "images", path, train=False)[0]  # evaluation: no box at all
    assert target["labels"].tolist() == [coco_category_map().label(3)]


def test_dataset_class_unknown_to_the_teacher_is_an_error(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "unicorn"}]}))
    with pytest.raises(DatasetError, match="'unicorn' is not one of the teacher's"):
        distilled_annotations(path, {}, CategoryMap.from_coco([{"id": 1, "name": "person"}]), min_score=0.3)


def test_missing_or_foreign_teacher(tmp_path, coco128):
    with pytest.raises(WeightsError, match="no such file"):
        NanoDetM(tmp_path / "nanodet_m.xml")
    foreign = tmp_path / "foreign.xml"
    foreign.write_text("not xml at all")
    foreign.with_suffix(".bin").write_bytes(b"\0" * 16)
    with pytest.raises(WeightsError, match="OpenVINO cannot read this IR"):
        NanoDetM(foreign)


def test_train_cli_bad_teacher_is_one_line_and_exit_2(tmp_path, coco128):
    run = subprocess.run(
        [sys.executable, "-m", "tools.train", "--config", "coco_edge", "--epochs", "1"]
        + ["--train-images", str(coco128 / "images"), "--train-annotations", str(coco128 / "instances.json")]
        + ["--teacher", str(tmp_path / "missing.xml"), "--output-dir", str(tmp_path / "run"), "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'missing.xml'}: no such file"), lines
    assert not (tmp_path / "run" / "last.pt").exists()
