"""Shrink a COCO-format dataset to the scale a model sees: ``python -m tools.shrink_dataset``.

    python -m tools.shrink_dataset --images DIR --annotations FILE --short-side 352 --output OUT

Every image whose short side is above ``--short-side`` is resized (area interpolation) so that its short side is
``--short-side`` and its long side at most ``--max-side``, and re-encoded (JPEG or WebP); its boxes are scaled with
it. The model resizes every image to its own input size anyway, so a set shrunk to the largest training scale trains the
same while its loaders decode several times fewer pixels, and it fits where the full set does not (a machine
reached by copying a few tens of megabytes). ``--keep-area`` keeps each annotation's original ``area``, so that
COCO's small/medium/large ranges of a shrunk validation set stay those of the original images.
"""

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
from tqdm import tqdm

from backbone.cli import HelpFormatter
from backbone.weights import atomic_write

# WebP is about 30% smaller than JPEG at the same quality setting, for when the set must fit somewhere small.
ENCODINGS = {"jpg": cv2.IMWRITE_JPEG_QUALITY, "webp": cv2.IMWRITE_WEBP_QUALITY}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.shrink_dataset",
        description="Resize a COCO-format dataset's images (and boxes) to a short side, for faster training.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--images", type=Path, required=True, help="folder of the dataset's images")
    p.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON of those images")
    p.add_argument("--output", type=Path, required=True, help="new folder: images/ and instances.json")
    p.add_argument("--short-side", type=int, default=352, help="short side after shrinking, in pixels")
    p.add_argument("--max-side", type=int, default=640, help="cap on the long side after shrinking")
    p.add_argument("--format", choices=sorted(ENCODINGS), default="jpg", help="encoding of the shrunk images")
    p.add_argument("--quality", type=int, default=90, help="quality of the re-encoded images (1-100)")
    p.add_argument("--keep-area", action="store_true", help="keep the original 'area' of each annotation")
    p.add_argument("--threads", type=int, default=2, help="images encoded at once")
    return p


def shrink_factor(width: int, height: int, short_side: int, max_side: int) -> float:
    """The scale (at most 1: never enlarges) that brings the short side to ``short_side``, long side capped."""
    return min(1.0, short_side / min(width, height), max_side / max(width, height))


def shrink_dataset(args: argparse.Namespace) -> dict:
    dataset = json.loads(args.annotations.read_text())
    out_images = args.output / "images"
    out_images.mkdir(parents=True, exist_ok=True)
    scales: dict[int, tuple[float, float]] = {}

    def shrink_one(record: dict) -> None:
        image = cv2.imread(str(args.images / record["file_name"]), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{args.images / record['file_name']}: missing or not an image")
        height, width = image.shape[:2]
        scale = shrink_factor(width, height, args.short_side, args.max_side)
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        # The factor actually applied on each axis after rounding, so the boxes land on the same pixels.
        scales[record["id"]] = (image.shape[1] / width, image.shape[0] / height)
        record["width"], record["height"] = image.shape[1], image.shape[0]
        name = Path(record["file_name"]).with_suffix("." + args.format)
        record["file_name"] = str(name)
        ok, encoded = cv2.imencode(name.suffix, image, [ENCODINGS[args.format], args.quality])
        if not ok:
            raise ValueError(f"{name}: could not encode")
        (out_images / name).write_bytes(encoded.tobytes())

    with ThreadPoolExecutor(args.threads) as pool:
        list(tqdm(pool.map(shrink_one, dataset["images"]), total=len(dataset["images"]), desc="shrinking"))
    for ann in dataset["annotations"]:
        sx, sy = scales[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        ann["bbox"] = [round(x * sx, 2), round(y * sy, 2), round(w * sx, 2), round(h * sy, 2)]
        ann.pop("segmentation", None)  # polygons are not scaled: drop them rather than keep them wrong
        if not args.keep_area:
            ann["area"] = round(ann["area"] * sx * sy, 2)
    payload = json.dumps(dataset).encode()
    atomic_write(args.output / "instances.json", lambda f: f.write(payload))
    return dataset


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.short_side < 1 or args.max_side < args.short_side:
        p.error("--short-side must be positive and at most --max-side")
    if not 1 <= args.quality <= 100:
        p.error(f"--quality is in [1, 100], got {args.quality}")
    try:
        dataset = shrink_dataset(args)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(dataset['images'])} images and {len(dataset['annotations'])} boxes to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
