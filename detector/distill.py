"""Labels from a teacher: a training set whose missing classes are filled in with a teacher's detections.

A dataset that boxes only some classes (COCO val2017 with persons only, say) becomes an 80-class training set:
its own boxes are kept for the classes it labels (matched by name), and the teacher's detections above
``min_score`` stand in for every other class. The teacher runs once over the training images; its raw
detections are cached beside the run (keyed by the teacher file's hash and the image list), so resuming or
trying another threshold costs nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import torch
from torchvision.ops import box_convert, box_iou
from tqdm import tqdm

from backbone.weights import atomic_write

from .categories import CategoryMap
from .data import DatasetError, load_coco
from .nanodet import NanoDetM

CACHE_MIN_SCORE = 0.05  # the teacher's own output threshold: the cache keeps all it says


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def teacher_detections(
    teacher: NanoDetM, images_dir: Path, annotation_file: Path, cache: Path, *, progress: bool = True
) -> dict[int, list[dict]]:
    """The teacher's detections on every image of ``annotation_file``, as COCO results by image id (cached)."""
    coco = load_coco(annotation_file)
    key = {"teacher": file_digest(teacher.path.with_suffix(".bin")), "images": sorted(coco.imgs)}
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return {int(k): v for k, v in stored["detections"].items()}
    detections: dict[int, list[dict]] = {}
    for image_id in tqdm(sorted(coco.imgs), desc="teacher labels", unit="img", disable=not progress):
        path = images_dir / coco.imgs[image_id]["file_name"]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"image file {path} is missing or cannot be decoded")
        found = teacher.detect(bgr)
        detections[image_id] = [
            {
                "category_id": teacher.categories.category_id(int(label) + 1),
                "bbox": [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2), round(float(y2 - y1), 2)],
                "score": round(float(score), 4),
            }
            for (x1, y1, x2, y2), score, label in zip(found.boxes, found.scores, found.labels, strict=True)
        ]
    payload = json.dumps({"key": key, "detections": detections})
    atomic_write(cache, lambda f: f.write(payload.encode()))
    return detections


def distilled_annotations(
    annotation_file: Path,
    detections: dict[int, list[dict]],
    categories: CategoryMap,
    min_score: float,
    ignore_score: float | None = None,
) -> dict:
    """A COCO dict over ``categories``: the file's own boxes for the classes it labels, the teacher's for the rest.

    The file's categories are matched to ``categories`` by name; a name the teacher does not know is an error.
    With ``ignore_score``, the teacher's detections from it up to ``min_score`` are written with ``"ignore":
    true``: training neither learns them as objects nor as background (``detector.data.IGNORE_LABEL``).
    """
    coco = load_coco(annotation_file)
    by_name = {c.name: c.id for c in categories.categories}
    own_ids = {}
    for category in coco.dataset["categories"]:
        if category["name"] not in by_name:
            raise DatasetError(
                f"{annotation_file}: category {category['name']!r} is not one of the teacher's: "
                + ", ".join(categories.names)
            )
        own_ids[category["id"]] = by_name[category["name"]]
    labelled = set(own_ids.values())
    annotations = []
    for ann in coco.dataset["annotations"]:
        annotations.append({**ann, "category_id": own_ids[ann["category_id"]]})
    boxes_of: dict[int, list[list[float]]] = {}  # per image, the boxes that are labels (real or the teacher's)
    for ann in annotations:
        if not ann.get("iscrowd", 0):
            boxes_of.setdefault(ann["image_id"], []).append(ann["bbox"])
    unsure: dict[int, list[dict]] = {}  # per image, in the detections' order
    for image_id, found in detections.items():
        for det in found:
            if det["category_id"] in labelled:
                continue
            w, h = det["bbox"][2], det["bbox"][3]
            ann = {"image_id": image_id, "category_id": det["category_id"], "bbox": det["bbox"], "area": w * h}
            ann |= {"iscrowd": 0, "score": det["score"]}
            if det["score"] >= min_score:
                annotations.append(ann)
                boxes_of.setdefault(image_id, []).append(det["bbox"])
            elif ignore_score is not None and det["score"] >= ignore_score:
                unsure.setdefault(image_id, []).append(ann | {"ignore": True})
    # An unsure detection on a labelled object (the teacher's second guess at a person, say) would take that
    # object's proposals away from it: only the others become regions to ignore.
    for image_id, candidates in unsure.items():
        overlaps = _most_overlaps([ann["bbox"] for ann in candidates], boxes_of.get(image_id, []))
        annotations += [ann for ann, overlap in zip(candidates, overlaps, strict=True) if overlap < 0.5]
    for index, ann in enumerate(annotations, start=1):
        ann["id"] = index
    return {
        "info": {
            "description": f"{annotation_file.name} with teacher labels (score >= {min_score})"
            + (f", ignored from {ignore_score}" if ignore_score is not None and ignore_score < min_score else "")
        },
        "images": coco.dataset["images"],
        "categories": categories.to_coco(),
        "annotations": annotations,
    }


def _most_overlaps(boxes: list[list[float]], others: list[list[float]]) -> list[float]:
    """For each [x, y, w, h] box, its largest IoU with any of ``others`` (0 when there are none)."""
    if not others:
        return [0.0] * len(boxes)
    xyxy = box_convert(torch.tensor([*boxes, *others], dtype=torch.float32), "xywh", "xyxy")
    return box_iou(xyxy[: len(boxes)], xyxy[len(boxes) :]).max(dim=1).values.tolist()


def write_distilled_set(
    teacher_path: Path,
    images_dir: Path,
    annotation_file: Path,
    output_dir: Path,
    *,
    min_score: float,
    ignore_score: float | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Run (or reuse) the teacher over the training set and write the merged annotation file; returns its path."""
    teacher = NanoDetM(teacher_path, threads=threads)
    detections = teacher_detections(
        teacher, images_dir, annotation_file, output_dir / "teacher_detections.json", progress=progress
    )
    merged = distilled_annotations(annotation_file, detections, teacher.categories, min_score, ignore_score)
    path = output_dir / "distilled_annotations.json"
    payload = json.dumps(merged)
    atomic_write(path, lambda f: f.write(payload.encode()))
    return path
