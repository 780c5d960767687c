"""Look at what a detector sees: draw its detections onto copies of images and print them as JSON.

    python -m tools.predict IMAGE_OR_FOLDER... [--model models/coco.onnx] [--out DIR] [--score-threshold 0.3]

The image is seen exactly as the service sees it: the same decoder (``runtime.images``: EXIF orientation,
reduced JPEG decoding, the same shrink to the model's input), the same engines (a ``.pt`` checkpoint in
PyTorch, a ``.onnx`` export in ONNX Runtime) and the same default threshold, so the command line and
``POST /detect`` give the same answer. Each image (a folder stands for the images in it) gets a copy under
``--out`` (default runs/predict/) with boxes, labels and scores drawn, and stdout gets one JSON list: per image
{"image", "width", "height", "output", "detections": [{"label", "category_id", "score", "box": [x1, y1, x2,
y2] in the image's pixels}]}. A missing or undecodable image gets one line on stderr and the others go on; the
exit status is then 2. A model file that cannot be loaded ends at once with one line and status 2.

A command on top of ``runtime`` (engines, decoding) and ``detector`` (the default model's path).
"""

import argparse
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from backbone.cli import HelpFormatter
from detector.config import DEFAULT_EXPORT
from runtime import Engine, EngineError, load_engine
from runtime.images import DEFAULT_MAX_PIXELS, DEFAULT_SCORE_THRESHOLD, ImageError, decode, detections_in_image

DEFAULT_OUT = Path("runs/predict")
# What a folder argument stands for: the files in it that the decoder reads, by extension.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def detect(engine: Engine, data: bytes, *, score_threshold: float, max_pixels: int) -> tuple[list[dict], int, int]:
    """Detections on one encoded image, best first, with its (width, height) as displayed."""
    sizes = {"min_size": engine.card.config.min_size, "max_size": engine.card.config.max_size}
    image = decode(data, max_pixels=max_pixels, **sizes)
    result = engine.predict([image.array])[0]
    return detections_in_image(result, image, engine.card, score_threshold=score_threshold), image.width, image.height


def colour(category_id: int) -> tuple[int, int, int]:
    """A fixed, well-saturated BGR colour per category."""
    hue = (category_id * 47) % 180
    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 230]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def draw(image_bgr: np.ndarray, detections: list[dict]) -> np.ndarray:
    """A copy of the image with each detection's box and "label score" tag; the lowest scores drawn first."""
    canvas = image_bgr.copy()
    scale = max(0.4, min(canvas.shape[:2]) / 800)
    thickness = max(1, round(2 * scale))
    for det in reversed(detections):
        x1, y1, x2, y2 = (round(v) for v in det["box"])
        c = colour(det["category_id"])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), c, thickness)
        text = f"{det['label']} {det['score']:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = y1 - th - base if y1 - th - base >= 0 else y1  # inside the box when it touches the top edge
        cv2.rectangle(canvas, (x1, top), (x1 + tw, top + th + base), c, cv2.FILLED)
        cv2.putText(canvas, text, (x1, top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def output_path(out_dir: Path, image: Path, taken: set[Path]) -> Path:
    """``out_dir/<name>``, or ``<stem>_1<suffix>``... when an earlier input had the same file name."""
    candidate, n = out_dir / image.name, 0
    while candidate in taken:
        n += 1
        candidate = out_dir / f"{image.stem}_{n}{image.suffix}"
    taken.add(candidate)
    return candidate


def expand(paths: list[Path]) -> list[Path]:
    """The image files ``paths`` name: a folder stands for its images (sorted), anything else for itself."""
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            files.append(path)
    return files


def predict_one(engine: Engine, path: Path, out_dir: Path, taken: set[Path], args: argparse.Namespace) -> dict:
    """Detect on the image at ``path``, write its drawn copy, and return its entry of the JSON report."""
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        detections, width, height = detect(
            engine, path.read_bytes(), score_threshold=args.score_threshold, max_pixels=args.max_pixels
        )
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # full size, EXIF-rotated as the decoder did: to draw on
    target = output_path(out_dir, path, taken)
    try:
        written = image is not None and cv2.imwrite(str(target), draw(image, detections))
    except cv2.error:  # no encoder for the file's extension
        written = False
    if not written:
        raise ImageError(f"{target}: OpenCV could not write the drawn copy")
    return {"image": str(path), "width": width, "height": height, "output": str(target), "detections": detections}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.predict", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "images", nargs="+", type=Path, metavar="IMAGE", help="JPEG, PNG, WebP or BMP files, or folders of them"
    )
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_EXPORT, help="a .onnx export or a .pt checkpoint (as the service takes)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the drawn copies go")
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=DEFAULT_SCORE_THRESHOLD,
        help="hide detections below (the service's default)",
    )
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest image, width x height (the service's limit)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="inference threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.score_threshold <= 1:
        parser.error(f"--score-threshold must be within 0..1, got {args.score_threshold}")
    if args.threads < 1 or args.max_pixels < 1:
        parser.error("--threads and --max-pixels must be positive")
    try:
        engine = load_engine(args.model, threads=args.threads)
        args.out.mkdir(parents=True, exist_ok=True)
    except (EngineError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    paths = expand(args.images)
    if not paths:
        print(f"error: no image files in {', '.join(map(str, args.images))}", file=sys.stderr)
        return 2
    report, taken, failed = [], set(), 0
    for path in tqdm(paths, desc="predicting", unit="img", disable=args.no_progress or len(paths) < 2):
        try:
            report.append(predict_one(engine, path, args.out, taken, args))
        except (ImageError, OSError) as exc:  # one bad file does not stop the others
            tqdm.write(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
            failed += 1
    engine.close()
    print(json.dumps(report, indent=2))
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
