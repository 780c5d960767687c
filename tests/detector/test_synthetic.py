"""detector.synthetic: deterministic, tight boxes inside the images, non-contiguous ids, safe writes."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detector import synthetic
from detector.data import CocoDetectionDataset

SEED, COUNT = 5, 16


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, Path]:
    return synthetic.generate(tmp_path_factory.mktemp("synthetic") / "a", num_images=COUNT, seed=SEED)


@pytest.fixture(scope="module")
def annotations(generated) -> dict:
    return json.loads(generated[1].read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(generated, tmp_path):
    root = generated[0].parent
    again = synthetic.generate(tmp_path / "b", num_images=COUNT, seed=SEED)[0].parent
    first = _files(root)
    assert len(first) == COUNT + 1 and _files(again) == first
    other = _files(synthetic.generate(tmp_path / "c", num_images=COUNT, seed=SEED + 1)[0].parent)
    assert other["annotations.json"] != first["annotations.json"]


def test_parallel_generation_writes_the_same_bytes(tmp_path):
    serial = synthetic.generate(tmp_path / "serial", num_images=200, seed=9, image_size=(96, 96), workers=1)
    parallel = synthetic.generate(tmp_path / "parallel", num_images=200, seed=9, image_size=(96, 96), workers=2)
    assert _files(serial[0].parent) == _files(parallel[0].parent)


def test_categories_are_four_with_gaps_in_their_ids(annotations, generated):
    ids = [c["id"] for c in annotations["categories"]]
    assert ids == [1, 2, 4, 7]
    assert [c["name"] for c in annotations["categories"]] == ["circle", "square", "triangle", "star"]
    dataset = CocoDetectionDataset(*generated, train=False)
    assert [dataset.categories.label(i) for i in ids] == [1, 2, 3, 4]
    labels = torch.cat([dataset[i][1]["labels"] for i in range(len(dataset))])
    assert set(labels.tolist()) == {1, 2, 3, 4}  # every category drawn and mapped into 1..4


def test_boxes_lie_inside_images_and_barely_overlap(annotations, generated):
    images = {im["id"]: im for im in annotations["images"]}
    assert len(images) == COUNT
    boxes_of = {}
    for a in annotations["annotations"]:
        im = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert a["iscrowd"] == 0 and a["category_id"] in (1, 2, 4, 7)
        assert 0 <= x and 0 <= y and x + w <= im["width"] and y + h <= im["height"]
        assert w >= 4 and h >= 4 and max(w, h) <= 161
        assert 0 < a["area"] <= w * h
        boxes_of.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    for boxes in boxes_of.values():
        assert 1 <= len(boxes) <= 6
        iou = box_iou(torch.tensor(boxes), torch.tensor(boxes)).fill_diagonal_(0)
        assert iou.max() <= 0.3 + 1e-6
    for im in images.values():  # the files are the sizes the annotations claim
        decoded = cv2.imread(str(generated[0] / im["file_name"]))
        assert decoded.shape == (im["height"], im["width"], 3)


def test_boxes_are_tight_to_the_drawn_pixels(annotations, generated):
    index = next(i for i in range(COUNT) if len(synthetic.render_image(SEED, i)[1]) >= 3)
    image, objects = synthetic.render_image(SEED, index)
    written_image = cv2.imread(str(generated[0] / f"{index:06d}.jpg"))[..., ::-1].astype(np.float32)
    written = [a for a in annotations["annotations"] if a["image_id"] == index + 1]
    assert len(written) == len(objects)
    for obj, ann in zip(objects, written, strict=True):
        ys, xs = np.nonzero(obj.mask)
        tight = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert ann["bbox"] == [float(v) for v in tight]
        assert ann["area"] == float(obj.mask.sum()) and ann["category_id"] == obj.category_id
        assert (image[obj.mask] == obj.colour).all()  # the mask is exactly what was painted
        # and the file shows it there (JPEG only blurs it a little)
        assert np.abs(written_image[obj.mask] - np.array(obj.colour)).mean() < 12


def test_object_counts_and_overlaps():
    counts, overlapping = [], 0
    for i in range(120):
        _, objects = synthetic.render_image(0, i, image_size=(256, 320))
        counts.append(len(objects))
        if len(objects) > 1:
            boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (o.bbox for o in objects)])
            iou = box_iou(boxes, boxes).fill_diagonal_(0)
            assert iou.max() <= 0.3 + 1e-6
            overlapping += int(iou.max() > 0.05)
    assert 0 in counts and max(counts) <= 6  # a few negatives, never more than six objects
    assert len(set(counts)) >= 5
    assert overlapping >= 5  # boxes do overlap sometimes
    image, _ = synthetic.render_image(0, 0, image_size=(256, 320))
    assert image.shape == (256, 320, 3) and image.dtype == np.uint8


def test_generation_is_atomic_and_refuses_to_overwrite(tmp_path, monkeypatch):
    root = tmp_path / "data"
    synthetic.generate(root, num_images=2, seed=0)
    with pytest.raises(FileExistsError, match=str(root)):
        synthetic.generate(root, num_images=2, seed=0)
    calls = []

    def interrupted(seed, index, **kwargs):
        calls.append(index)
        if index == 2:
            raise KeyboardInterrupt
        return real(seed, index, **kwargs)

    real = synthetic.render_image
    monkeypatch.setattr(synthetic, "render_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(tmp_path / "partial", num_images=5, seed=0)
    assert calls == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no half-written dataset, no temp dir


def test_default_dataset_is_generated_once_per_split(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHETIC_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(synthetic, "SPLITS", {"train": (3, 0), "val": (2, 1)})
    images_dir, annotation_file = synthetic.default_dataset("val")
    assert annotation_file.parent == tmp_path / f"val-v{synthetic.VERSION}"
    assert len(list(images_dir.iterdir())) == 2
    stamp = annotation_file.stat().st_mtime_ns
    assert synthetic.default_dataset("val") == (images_dir, annotation_file)
    assert annotation_file.stat().st_mtime_ns == stamp  # reused, not regenerated
    train_files = _files(synthetic.default_dataset("train")[0])
    assert set(train_files) == {"000000.jpg", "000001.jpg", "000002.jpg"}
    assert train_files["000000.jpg"] != (images_dir / "000000.jpg").read_bytes()  # val is not a train copy
    with pytest.raises(ValueError, match="test"):
        synthetic.default_dataset("test")


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        synthetic.main(["--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert "--num-images" in shown and "--seed" in shown and "--out" in shown
    out = tmp_path / "cli"
    assert synthetic.main(["--out", str(out), "--num-images", "3", "--seed", "2"]) == 0
    assert "rendering cli" in capsys.readouterr().err  # the progress bar
    assert _files(out) == _files(synthetic.generate(tmp_path / "api", num_images=3, seed=2)[0].parent)
    with pytest.raises(SystemExit) as exit_:
        synthetic.main(["--out", str(out), "--num-images", "3"])
    assert exit_.value.code == 2 and str(out) in capsys.readouterr().err
