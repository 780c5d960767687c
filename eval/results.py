"""The one conversion from detector output to COCO results, shared by the CLI and training-time evaluation."""

from detector.categories import CategoryMap


def to_coco_results(outputs: list[dict], image_ids: list[int], categories: CategoryMap) -> list[dict]:
    """COCO detection results for ``outputs[i]`` on image ``image_ids[i]``.

    Each output is the detector's {"boxes": (N, 4) x1y1x2y2, "labels": (N,) 1..K, "scores": (N,)} with boxes
    in the original image's pixels (torchvision's transform scales them back from the resized input).
    Returns {"image_id", "category_id", "bbox": [x, y, w, h], "score"} dicts with plain Python numbers, the
    format of ``COCO.loadRes`` and of a results JSON file. Labels become dataset ids through ``categories``.
    """
    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs for {len(image_ids)} image ids")
    results = []
    for output, image_id in zip(outputs, image_ids, strict=True):
        boxes = output["boxes"].detach().cpu().tolist()
        labels = output["labels"].detach().cpu().tolist()
        scores = output["scores"].detach().cpu().tolist()
        for (x1, y1, x2, y2), label, score in zip(boxes, labels, scores, strict=True):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": categories.category_id(int(label)),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return results
