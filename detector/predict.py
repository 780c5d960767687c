"""Look at what a detector sees: draw its detections onto copies of images and print them as JSON.

    python -m detector.predict IMAGE_OR_FOLDER... [--checkpoint PATH] [--out DIR] [--score-threshold 0.5]

Each image (a folder stands for the images in it) gets a copy under ``--out`` (default runs/predict/) with
boxes, labels and scores drawn, and stdout gets one JSON list: per image {"image", "width", "height",
"output", "detections": [{"label", "category_id", "score", "box": [x1, y1, x2, y2] in the image's pixels}]}.
A missing or undecodable image gets one line on stderr and the others go on; the exit status is then 2. A bad
checkpoint (or an ONNX export given as one) ends at once with one line and status 2.
"""

import argparse
import itertools
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from backbone.cli import HelpFormatter

from .checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint
from .model import Detector

DEFAULT_OUT = Path("runs/predict")
# What a folder argument stands for: the files in it that OpenCV reads, by extension.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class ImageError(ValueError):
    """An input image that does not exist or cannot be decoded."""


def read_image(path: Path) -> np.ndarray:
    """BGR uint8 (H, W, 3): OpenCV's IMREAD_COLOR turns grayscale into 3 channels, drops alpha, and maps
    16-bit files to 8 bits, so every readable file reaches the model the same way."""
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"{path}: not an image OpenCV can decode")
    return image


def detect(detector: Detector, image_bgr: np.ndarray, score_threshold: float) -> list[dict]:
    """Detections on one BGR image, best first, as JSON-ready dicts with dataset category ids and names."""
    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)
    device = next(itertools.chain(detector.parameters(), detector.buffers()), torch.empty(0)).device
    output = detector.predict([tensor.to(device)])[0]
    detections = []
    for box, label, score in zip(
        output["boxes"].tolist(), output["labels"].tolist(), output["scores"].tolist(), strict=True
    ):
        if score < score_threshold:
            continue
        detections.append(
            {
                "label": detector.categories.name(label),
                "category_id": detector.categories.category_id(label),
                "score": round(float(score), 4),
                "box": [round(v, 2) for v in box],
            }
        )
    return sorted(detections, key=lambda d: -d["score"])


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


def predict_one(detector: Detector, path: Path, out_dir: Path, taken: set[Path], score_threshold: float) -> dict:
    """Detect on the image at ``path``, write its drawn copy, and return its entry of the JSON report."""
    image = read_image(path)
    detections = detect(detector, image, score_threshold)
    target = output_path(out_dir, path, taken)
    try:
        written = cv2.imwrite(str(target), draw(image, detections))
    except cv2.error:  # no encoder for the file's extension
        written = False
    if not written:
        raise ImageError(f"{target}: OpenCV could not write the drawn copy")
    height, width = image.shape[:2]
    return {"image": str(path), "width": width, "height": height, "output": str(target), "detections": detections}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detector.predict", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "images", nargs="+", type=Path, metavar="IMAGE", help="image files (anything OpenCV reads) or folders of them"
    )
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="a .pt checkpoint")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the drawn copies go")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="hide detections below")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.score_threshold <= 1:
        parser.error(f"--score-threshold must be within 0..1, got {args.score_threshold}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be positive, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        detector = load_checkpoint(args.checkpoint, device=args.device)
        args.out.mkdir(parents=True, exist_ok=True)
    except (CheckpointError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    paths = expand(args.images)
    if not paths:
        print(f"error: no image files in {', '.join(map(str, args.images))}", file=sys.stderr)
        return 2
    report, taken, failed = [], set(), 0
    for path in tqdm(paths, desc="predicting", unit="img", disable=args.no_progress or len(paths) < 2):
        try:
            report.append(predict_one(detector, path, args.out, taken, args.score_threshold))
        except (ImageError, OSError) as exc:  # one bad file does not stop the others
            tqdm.write(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
            failed += 1
    print(json.dumps(report, indent=2))
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
