"""Scoring reproduces pycocotools' official numbers, and the one conversion from model output is exact."""

import json

import pytest
import torch

from detector.categories import Category, CategoryMap
from detector.data import load_coco
from eval.results import to_coco_results
from eval.scoring import STAT_KEYS, ResultsError, load_results, score_results


def assert_matches_expected(report: dict, expected: dict, coco_gt) -> None:
    assert list(report["stats"]) == list(STAT_KEYS)
    for key in STAT_KEYS:
        assert report["stats"][key] == pytest.approx(expected["stats"][key], abs=1e-9), key
    assert report["summary"] == expected["summary_text"]
    id_of_name = {c["name"]: c["id"] for c in coco_gt.dataset["categories"]}
    assert len(report["per_class_ap"]) == len(expected["per_category_AP"])
    for name, ap in report["per_class_ap"].items():
        want = expected["per_category_AP"][str(id_of_name[name])]
        assert (ap is None) == (want == -1.0), name
        if ap is not None:
            assert ap == pytest.approx(want, abs=1e-9), name


def truth_as_results(coco_gt, image_ids=None) -> list[dict]:
    """Every non-crowd ground-truth box as a detection with score 1."""
    wanted = set(coco_gt.imgs if image_ids is None else image_ids)
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in coco_gt.dataset["annotations"]
        if not a.get("iscrowd", 0) and a["image_id"] in wanted
    ]


def test_official_fake100_bbox_numbers(cocoapi_fixtures):
    expected = json.loads((cocoapi_fixtures / "expected_val2014_fake100.json").read_text())["bbox"]
    coco_gt = load_coco(cocoapi_fixtures / "gt" / "instances_val2014_100.json")
    report = score_results(coco_gt, cocoapi_fixtures / expected["results_file"])
    assert_matches_expected(report, expected, coco_gt)
    assert round(report["stats"]["AP"], 3) == 0.505
    assert report["num_images"] == 100


def test_derived_coco128_numbers(cocoapi_fixtures, coco128):
    expected = json.loads((cocoapi_fixtures / "derived" / "expected_derived.json").read_text())["coco128"]
    coco_gt = load_coco(coco128 / "instances.json")
    results = load_results(cocoapi_fixtures / "derived" / expected["results_file"])
    before = json.dumps(results)
    report = score_results(coco_gt, results)
    assert_matches_expected(report, expected, coco_gt)
    assert report["num_detections"] == expected["num_dets"] == len(results)
    assert json.dumps(results) == before  # pycocotools' loadRes did not write into the caller's dicts


def test_ground_truth_as_detections_scores_one(coco128):
    coco_gt = load_coco(coco128 / "instances.json")
    report = score_results(coco_gt, truth_as_results(coco_gt))
    assert report["stats"]["AP"] == pytest.approx(1.0, abs=1e-12)
    capped = {"AR_1", "AR_10"}  # recall with 1 or 10 detections per image cannot reach 1 on busy images
    assert all(v == pytest.approx(1.0, abs=1e-12) for k, v in report["stats"].items() if k not in capped)
    assert all(ap is None or ap == pytest.approx(1.0, abs=1e-12) for ap in report["per_class_ap"].values())
    assert report["pr_curve"]["precision"]["0.50"][-1] == pytest.approx(1.0)


def test_image_ids_choose_what_counts(coco128):
    coco_gt = load_coco(coco128 / "instances.json")
    half = sorted(coco_gt.imgs)[:64]
    results = truth_as_results(coco_gt, half)
    assert score_results(coco_gt, results, image_ids=half)["stats"]["AP"] == pytest.approx(1.0)
    everything = score_results(coco_gt, results)  # the other 64 images' objects are now misses
    assert everything["stats"]["AR_100"] < 0.8
    assert everything["num_images"] == 128


def test_to_coco_results_maps_boxes_and_categories():
    categories = CategoryMap([Category(90, "toothbrush"), Category(3, "car"), Category(7, "train")])  # labels 1..3
    outputs = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.5, 1.5, 2.5, 3.5]]),
            "labels": torch.tensor([1, 3]),
            "scores": torch.tensor([0.9, 0.25]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)},
    ]
    results = to_coco_results(outputs, [42, 43], categories)
    assert results == [
        {"image_id": 42, "category_id": 3, "bbox": [10.0, 20.0, 20.0, 40.0], "score": pytest.approx(0.9)},
        {"image_id": 42, "category_id": 90, "bbox": [0.5, 1.5, 2.0, 2.0], "score": pytest.approx(0.25)},
    ]
    assert json.loads(json.dumps(results))[0]["category_id"] == 3  # plain Python numbers
    with pytest.raises(ValueError, match="2 outputs for 1 image ids"):
        to_coco_results(outputs, [42], categories)


@pytest.fixture(scope="module")
def fake100(cocoapi_fixtures):
    coco_gt = load_coco(cocoapi_fixtures / "gt" / "instances_val2014_100.json")
    results = load_results(cocoapi_fixtures / "results" / "instances_val2014_fakebbox100_results.json")
    return coco_gt, results


def test_unknown_image_ids_are_named(fake100):
    coco_gt, results = fake100
    bad = [dict(results[0], image_id=999_999_001), dict(results[1], image_id=999_999_002), *results[2:]]
    with pytest.raises(ResultsError, match=r"2 image ids are not in the ground truth: 999999001, 999999002"):
        score_results(coco_gt, bad)


def test_unknown_category_ids_are_named(fake100):
    coco_gt, results = fake100
    with pytest.raises(ResultsError, match=r"1 category ids are not in the ground truth: 12$"):
        score_results(coco_gt, [*results, dict(results[0], category_id=12)])  # 12 is one of COCO's gaps


@pytest.mark.parametrize(
    "entry, problem",
    [
        ({"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "score": 0.5}, "bbox"),
        ({"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, float("nan")], "score": 0.5}, "bbox"),
        ({"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}, "score"),
        ({"image_id": "1", "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}, "image_id"),
        ([1, 1, 1, 2, 3, 4, 0.5], "not an object"),
    ],
)
def test_malformed_detections_are_rejected(fake100, entry, problem):
    coco_gt, results = fake100
    with pytest.raises(ResultsError, match=f"detection 3 .*{problem}"):
        score_results(coco_gt, [*results[:3], entry])


def test_empty_results_score_zero_with_a_warning(fake100):
    coco_gt, _ = fake100
    with pytest.warns(UserWarning, match="no detections"):
        report = score_results(coco_gt, [])
    assert all(report["stats"][k] in (0.0, -1.0) for k in STAT_KEYS)
    assert report["stats"]["AP"] == 0.0
    assert report["num_detections"] == 0 and report["warnings"]


def test_results_files_that_cannot_be_read(tmp_path):
    with pytest.raises(ResultsError, match="no such results file"):
        load_results(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(ResultsError, match="not JSON"):
        load_results(tmp_path / "bad.json")
    (tmp_path / "dict.json").write_text('{"annotations": []}')
    with pytest.raises(ResultsError, match="JSON list of detections"):
        load_results(tmp_path / "dict.json")
    with pytest.raises(ResultsError, match="cannot read"):
        load_results(tmp_path)
