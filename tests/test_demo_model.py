"""The bundled demo checkpoint keeps README's promises: small, loadable, finds the sample's shapes, AP >= 0.6."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
from torchvision.ops import box_iou

from detector import CONFIGS, DEMO_CHECKPOINT, load_checkpoint, synthetic

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "shapes.jpg"


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(DEMO_CHECKPOINT)


def test_is_small_and_describes_itself(demo):
    assert DEMO_CHECKPOINT.stat().st_size < 20 * 2**20
    assert demo.config == CONFIGS["edge"]  # the demo is the CPU default, as shipped
    assert demo.categories.names == ["circle", "square", "triangle", "star"]
    assert demo.provenance["metrics"]["stats"]["AP"] >= 0.6  # as measured by training on the val split


def test_finds_the_shapes_of_the_bundled_sample(demo):
    # The sample is render_image(9, 4): a seed neither split was drawn from.
    image, objects = synthetic.render_image(9, 4, image_size=(384, 512))
    decoded = cv2.cvtColor(cv2.imread(str(SAMPLE)), cv2.COLOR_BGR2RGB)
    assert decoded.shape == image.shape
    tensor = torch.from_numpy(decoded).permute(2, 0, 1).float() / 255
    found = demo.predict([tensor])[0]
    keep = found["scores"] >= 0.5
    boxes, labels = found["boxes"][keep], found["labels"][keep]
    matched = 0
    for obj in objects:
        x, y, w, h = obj.bbox
        truth = torch.tensor([[x, y, x + w, y + h]])
        ious = box_iou(truth, boxes)[0]
        label = demo.categories.label(obj.category_id)
        matched += any(iou >= 0.5 and lab == label for iou, lab in zip(ious.tolist(), labels.tolist(), strict=True))
    assert matched >= len(objects) - 1, (matched, len(objects))


@pytest.mark.slow
def test_reaches_ap_0_6_on_a_freshly_generated_validation_split(tmp_path):
    images, annotations = synthetic.generate(tmp_path / "val", num_images=200, seed=synthetic.SPLITS["val"][1])
    command = [sys.executable, "eval/coco.py", "--checkpoint", str(DEMO_CHECKPOINT)]
    command += ["--images", str(images), "--annotations", str(annotations)]
    done = subprocess.run([*command, "--json"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["stats"]["AP"] >= 0.6
