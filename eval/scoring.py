"""COCO box AP with pycocotools' COCOeval, on results validated first so that mistakes get a clear message."""

import contextlib
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# COCOeval.stats in its own order: AP over IoU .50:.95 (all, then by area), then AR at 1/10/100 detections.
STAT_KEYS = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR_1",
    "AR_10",
    "AR_100",
    "AR_small",
    "AR_medium",
    "AR_large",
)
_SHOW = 5  # how many offending ids or entries a message names


class ResultsError(ValueError):
    """A results file or list that cannot be scored against the ground truth; the message says why."""


def load_results(path: str | Path) -> list[dict]:
    """A COCO results JSON file (a list of detections); raises ResultsError naming the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: cannot read the results file ({exc})") from None
    try:
        results = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not JSON ({exc})") from None
    if not isinstance(results, list):
        raise ResultsError(f"{path}: a COCO results file is a JSON list of detections, got {type(results).__name__}")
    return results


def check_results(coco_gt: COCO, results: list[dict], *, source: str = "results") -> None:
    """Raise ResultsError if an entry is malformed or names an image or category the ground truth lacks."""
    for i, r in enumerate(results):
        problem = _entry_problem(r)
        if problem:
            raise ResultsError(f"{source}: detection {i} {problem}: {str(r)[:120]}")
    for key, known, what in (("image_id", coco_gt.imgs, "image"), ("category_id", coco_gt.cats, "category")):
        unknown = sorted({r[key] for r in results} - set(known))
        if unknown:
            shown = ", ".join(map(str, unknown[:_SHOW])) + (
                f" and {len(unknown) - _SHOW} more" if len(unknown) > _SHOW else ""
            )
            raise ResultsError(f"{source}: {len(unknown)} {what} ids are not in the ground truth: {shown}")


def _entry_problem(r: object) -> str | None:
    if not isinstance(r, dict):
        return "is not an object"
    for key in ("image_id", "category_id"):
        if not isinstance(r.get(key), int) or isinstance(r.get(key), bool):
            return f"has no integer {key!r}"
    box = r.get("bbox")
    if not isinstance(box, list | tuple) or len(box) != 4 or not all(_is_finite(v) for v in box):
        return "has no 'bbox' of 4 finite numbers [x, y, width, height]"
    if not _is_finite(r.get("score")):
        return "has no finite 'score'"
    return None


def _is_finite(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def score_results(coco_gt: COCO, results: list[dict] | str | Path, *, image_ids=None) -> dict:
    """Score box detections with COCOeval("bbox") and default parameters.

    ``results``: COCO results dicts ({"image_id", "category_id", "bbox": [x, y, w, h], "score"}) or a path to
    a results JSON file. ``image_ids``: the images evaluated (default: every ground-truth image); images
    without detections count as misses. Returns {"stats": STAT_KEYS -> value (-1 where COCO has no ground
    truth), "per_class_ap": name -> AP or None, "num_images", "num_detections", "summary": COCOeval's 12
    printed lines, "pr_curve", "warnings"}. COCOeval's prints are captured, never written to stdout.
    """
    source = "results"
    if isinstance(results, str | Path):
        source = str(results)
        results = load_results(results)
    check_results(coco_gt, results, source=source)
    if image_ids is None:
        image_ids = coco_gt.getImgIds()
    image_ids = sorted({int(i) for i in image_ids})
    missing = [i for i in image_ids if i not in coco_gt.imgs]
    if missing:
        raise ValueError(f"image ids to evaluate are not in the ground truth: {missing[:_SHOW]}")
    wanted = set(image_ids)
    num_detections = sum(r["image_id"] in wanted for r in results)
    notes = []
    if num_detections == 0:
        notes.append(f"{source}: no detections on the {len(image_ids)} evaluated images, so every AP and AR is 0")
        warnings.warn(notes[-1], UserWarning, stacklevel=2)

    with contextlib.redirect_stdout(io.StringIO()) as printed:
        # loadRes adds keys ("area", "id", "segmentation") to the dicts it is given: give it copies.
        coco_dt = coco_gt.loadRes([dict(r) for r in results]) if results else _no_results(coco_gt)
        cocoeval = COCOeval(coco_gt, coco_dt, "bbox")
        cocoeval.params.imgIds = image_ids
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    summary = "\n".join(line for line in printed.getvalue().splitlines() if line.startswith(" Average"))
    return {
        "stats": {key: float(v) for key, v in zip(STAT_KEYS, cocoeval.stats, strict=True)},
        "per_class_ap": _per_class_ap(coco_gt, cocoeval),
        "num_images": len(image_ids),
        "num_detections": num_detections,
        "summary": summary,
        "pr_curve": _pr_curve(cocoeval),
        "warnings": notes,
    }


def _no_results(coco_gt: COCO) -> COCO:
    """An empty detections set (``loadRes`` fails on an empty list): COCOeval then scores 0 where there is GT."""
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "categories": coco_gt.dataset["categories"]}
    coco_dt.dataset["annotations"] = []
    coco_dt.createIndex()
    return coco_dt


def _per_class_ap(coco_gt: COCO, cocoeval: COCOeval) -> dict[str, float | None]:
    """AP over IoU .50:.95, all areas, 100 detections per category; None for a category with no ground truth."""
    precision = cocoeval.eval["precision"]  # (IoU thresholds, recall thresholds, categories, areas, max dets)
    names = [coco_gt.cats[c]["name"] for c in cocoeval.params.catIds]
    per_class = {}
    for k, cat_id in enumerate(cocoeval.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        name = names[k] if names.count(names[k]) == 1 else f"{names[k]} ({cat_id})"
        per_class[name] = float(p.mean()) if p.size else None
    return per_class


def _pr_curve(cocoeval: COCOeval) -> dict:
    """Precision at COCO's 101 recall points, averaged over categories with ground truth (all areas, 100 dets)."""
    precision = cocoeval.eval["precision"][:, :, :, 0, -1]  # (IoU thresholds, recall thresholds, categories)
    valid = precision > -1

    def mean(p: np.ndarray, ok: np.ndarray, axis) -> list[float]:
        counts = ok.sum(axis=axis)
        sums = np.where(ok, p, 0).sum(axis=axis)
        return [float(v) for v in np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)]

    ious = cocoeval.params.iouThrs
    curves = {f"{iou:.2f}": mean(precision[t], valid[t], axis=1) for t, iou in enumerate(ious) if t in (0, 5)}
    curves["0.50:0.95"] = mean(precision.transpose(1, 0, 2), valid.transpose(1, 0, 2), axis=(1, 2))
    return {"recall": [float(r) for r in cocoeval.params.recThrs], "precision": curves}
