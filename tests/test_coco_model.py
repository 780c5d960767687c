"""The bundled COCO model keeps README's promises: small, describes itself and its origin, its export detects
what it does, it finds real objects, and (slow) scores its measured AP on coco128 through eval/coco.py."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

from detector import CONFIGS, DEFAULT_CHECKPOINT, DEFAULT_EXPORT, load_checkpoint
from detector.coco_classes import COCO_CATEGORIES
from runtime import Detections, load_engine
from runtime.images import DEFAULT_SCORE_THRESHOLD
from runtime.preprocess import to_model_input
from tools.export import paired_differences

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO / "data" / "sample" / "images"
SAMPLE_ID = 471  # service/static/sample.jpg, the page's sample


@pytest.fixture(scope="module")
def coco_model():
    return load_checkpoint(DEFAULT_CHECKPOINT)


def test_is_small_and_describes_itself(coco_model):
    assert DEFAULT_CHECKPOINT.stat().st_size < 20 * 2**20 and DEFAULT_EXPORT.stat().st_size < 20 * 2**20
    assert coco_model.config == CONFIGS["coco_edge"]
    assert [(c.id, c.name) for c in coco_model.categories.categories] == list(COCO_CATEGORIES)
    provenance = coco_model.provenance
    assert "NanoDet" in provenance["attribution"] and "Apache-2.0" in provenance["attribution"]
    assert provenance["teacher"]["weights"] == "nanodet_m.xml"
    # No path of the machine that trained it: files by name, data by relative path.
    absolute = [word for word in json.dumps(provenance).replace('"', " ").split() if word.startswith("/")]
    assert not absolute, absolute


def test_export_carries_the_card_and_detects_the_same(coco_model):
    # Detections at the service's default threshold, paired by label and box (tools.export's own check).
    torch_engine, onnx_engine = load_engine(DEFAULT_CHECKPOINT, "torch"), load_engine(DEFAULT_EXPORT, "onnxruntime")
    assert onnx_engine.card.provenance["attribution"] == coco_model.provenance["attribution"]
    assert onnx_engine.card.categories == coco_model.categories
    config = coco_model.config
    for path in sorted(SAMPLE_IMAGES.glob("*.jpg"))[:3]:
        image = to_model_input(cv2.imread(str(path)), config.min_size, config.max_size)
        (a,), (b,) = torch_engine.predict([image]), onnx_engine.predict([image])
        shown_a, shown_b = a.scores >= 0.3, b.scores >= 0.3
        assert sorted(a.labels[shown_a]) == sorted(b.labels[shown_b]), path.name
        if shown_a.any():
            shown = Detections(a.boxes[shown_a], a.labels[shown_a], a.scores[shown_a])
            box_px, score = paired_differences(shown, b)
            assert box_px < 0.01 and score < 1e-4, (path.name, box_px, score)


def test_finds_real_objects_on_the_bundled_photos(coco_model):
    # Among what a user is shown by default (the service's and tools.predict's score threshold): every bundled
    # photo's person that is not small (COCO's small: under 32 x 32 px), the large animal or vehicle of the
    # photos with one, and the page's sample's bus (471). Small persons, the model's weak point, are not asked
    # for: 149's crowd is 5-15 px wide, 471's one person 16 x 45 px (0.29 at the test input, long side 320,
    # NanoDet-m's scale). Near classes compete: 42's dog is shown at 0.49 beside "teddy bear" at 0.52.
    annotations = json.loads((REPO / "data" / "sample" / "instances.json").read_text())
    with_person = {
        a["image_id"]
        for a in annotations["annotations"]
        if a["category_id"] == 1 and not a["iscrowd"] and a["area"] >= 32 * 32
    }
    expected = {image_id: "person" for image_id in with_person} | {42: "dog", 81: "airplane", SAMPLE_ID: "bus"}
    engine = load_engine(DEFAULT_EXPORT, "onnxruntime")
    config = engine.card.config
    checked = 0
    for image in annotations["images"]:
        if image["id"] not in expected:
            continue
        bgr = cv2.imread(str(SAMPLE_IMAGES / image["file_name"]))
        (found,) = engine.predict([to_model_input(bgr, config.min_size, config.max_size)])
        labels = found.labels[found.scores >= DEFAULT_SCORE_THRESHOLD]
        names = {engine.card.categories.name(int(label)) for label in labels}
        assert expected[image["id"]] in names, (image["file_name"], names)
        checked += 1
    assert checked == len(expected)  # every photo asked for is among the bundled ones


@pytest.mark.slow
def test_scores_its_measured_ap_on_coco128(coco128):
    command = [sys.executable, "eval/coco.py", "--images", str(coco128 / "images")]
    command += ["--annotations", str(coco128 / "instances.json"), "--json"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["evaluated"]["checkpoint"].endswith("coco.pt")  # the default with COCO annotations
    measured = load_checkpoint(DEFAULT_CHECKPOINT).provenance["metrics"]["stats"]["AP"]
    assert report["stats"]["AP"] == pytest.approx(measured, abs=0.005)


def test_an_image_gets_the_same_detections_in_any_batch(coco_model, image_paths):
    # Photos of several sizes in one call: each must get what it gets alone (the service never pads photos
    # together, and eval/coco.py's batch size must not change its AP).
    images = [_tensor(path) for path in image_paths[:8]]
    assert len({tuple(image.shape) for image in images}) >= 3
    together = coco_model.predict(images)
    for image, found in zip(images, together, strict=True):
        (alone,) = coco_model.predict([image])
        assert torch.equal(found["labels"], alone["labels"])
        assert torch.allclose(found["boxes"], alone["boxes"], atol=1e-3) and torch.allclose(
            found["scores"], alone["scores"], atol=1e-5
        )


def _tensor(path: Path) -> torch.Tensor:
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
