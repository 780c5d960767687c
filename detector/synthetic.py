"""A deterministic synthetic detection dataset in COCO format: flat-coloured shapes on busy backgrounds.

Four shapes (circle, square, triangle, star) with the non-contiguous category ids 1, 2, 4, 7, so the one
``CategoryMap`` has gaps to bridge as it does for COCO. Objects are 12-160 px, rotated, in random colours
that contrast with what lies under them; boxes may overlap (IoU <= 0.3) but every object keeps at least
85 % of its pixels visible, and its box and area are measured from its visible pixels, so boxes are tight.
Image ``i`` of seed ``s`` depends only on ``(s, i)``: the same arguments give byte-identical files.

    python -m detector.synthetic --out DIR --num-images N --seed S
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from backbone.cli import HelpFormatter

VERSION = 2  # bump whenever the output for a given seed changes, so cached copies are regenerated
CATEGORIES = (
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 4, "name": "triangle", "supercategory": "shape"},
    {"id": 7, "name": "star", "supercategory": "shape"},
)
SPLITS = {"train": (2000, 0), "val": (200, 1)}  # split -> (number of images, seed)
SIDES = tuple(range(256, 417, 32))  # image heights and widths when not fixed
OBJECT_SIZE = (12, 160)  # extent of a shape in pixels, before rotation trims it
MAX_OBJECTS = 6
EMPTY_FRACTION = 0.03  # images with no objects at all
MAX_IOU = 0.3
MIN_VISIBLE = 0.85  # of an object's own pixels, whatever is drawn over it later
MIN_CONTRAST = 90.0  # RGB distance between an object's colour and the pixels beneath it
JPEG_QUALITY = 92
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SyntheticObject:
    category_id: int
    bbox: tuple[float, float, float, float]  # x, y, width, height in pixels (COCO), tight to ``mask``
    area: int  # visible pixels
    colour: tuple[int, int, int]  # RGB
    mask: np.ndarray  # bool (H, W): the object's visible pixels


def render_image(
    seed: int, index: int, *, image_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, list[SyntheticObject]]:
    """Image ``index`` of dataset ``seed``: RGB uint8 (H, W, 3) and its objects in drawing order.

    ``image_size`` is (height, width); by default each image draws its own from ``SIDES``.
    """
    rng = np.random.default_rng([seed, index])
    height, width = image_size or (int(rng.choice(SIDES)), int(rng.choice(SIDES)))
    image = _background(rng, height, width)
    owner = np.zeros((height, width), np.int16)  # 0: background, k: the k-th placed object
    placed: list[tuple[int, tuple[int, int, int], tuple[int, ...], int]] = []  # category, colour, xyxy, pixels
    visible: list[int] = []
    count = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(count):
        for _attempt in range(40):
            category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]["id"]
            ys, xs = _shape_pixels(rng, category, height, width)
            if len(xs) < 16:
                continue
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            if any(_iou(box, other[2]) > MAX_IOU for other in placed):
                continue
            covered = np.bincount(owner[ys, xs], minlength=len(placed) + 1)[1:]
            if any(visible[k] - covered[k] < MIN_VISIBLE * placed[k][3] for k in range(len(placed))):
                continue
            colour = _contrasting_colour(rng, image[ys, xs], [placed[k][1] for k in np.nonzero(covered)[0]])
            if colour is None:
                continue
            for k in np.nonzero(covered)[0]:
                visible[k] -= int(covered[k])
            image[ys, xs] = colour
            owner[ys, xs] = len(placed) + 1
            placed.append((category, colour, box, len(xs)))
            visible.append(len(xs))
            break
    objects = []
    for k, (category, colour, (bx1, by1, bx2, by2), _) in enumerate(placed):
        mask = np.zeros((height, width), bool)  # what is still visible lies within the box as drawn
        mask[by1:by2, bx1:bx2] = owner[by1:by2, bx1:bx2] == k + 1
        ys, xs = np.nonzero(mask[by1:by2, bx1:bx2])
        x1, y1 = int(bx1 + xs.min()), int(by1 + ys.min())
        bbox = (float(x1), float(y1), float(bx1 + xs.max() + 1 - x1), float(by1 + ys.max() + 1 - y1))
        objects.append(SyntheticObject(category, bbox, len(xs), colour, mask))
    return image, objects


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Noise, a gradient, stripes or clutter: textures that are not shapes of a fixed colour."""
    kind = int(rng.integers(4))
    angle = rng.uniform(0, np.pi)
    x = np.arange(width, dtype=np.float32)[None, :] * np.float32(np.cos(angle))
    y = np.arange(height, dtype=np.float32)[:, None] * np.float32(np.sin(angle))
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    if kind == 0:  # strong noise around one colour
        t, sigma = None, rng.uniform(10, 35)
    elif kind == 1:  # linear gradient between two colours
        along = x + y
        t, sigma = (along - along.min()) / max(float(along.max() - along.min()), 1.0), rng.uniform(3, 10)
    elif kind == 2:  # soft or hard stripes, of some fraction of the full contrast
        frequency = np.float32(2 * np.pi / rng.uniform(6, 40))
        x, y = x * frequency, y * frequency
        wave = np.sin(x) * np.cos(y) + np.cos(x) * np.sin(y)  # sin(x + y), from 1-D sines
        t = (wave > 0).astype(np.float32) if rng.random() < 0.5 else (wave + 1) / 2
        t, sigma = t * np.float32(rng.uniform(0.3, 1.0)), rng.uniform(3, 10)
    else:  # a flat colour under thin lines and small dots
        t, sigma = None, rng.uniform(3, 10)
    # Grey uniform noise of standard deviation sigma: numpy draws bytes far faster than normals, and a
    # lookup table maps them to offsets (to the final values when the base is flat).
    noise = rng.integers(0, 256, (height, width), dtype=np.uint8)
    offsets = (np.arange(256, dtype=np.float32) - np.float32(127.5)) * np.float32(sigma * np.sqrt(12) / 256)
    if t is None:
        table = np.clip(c0[None, :] + offsets[:, None], 0, 255).astype(np.uint8).reshape(256, 1, 3)
        image = cv2.LUT(cv2.merge([noise] * 3), table)
    else:
        noise = cv2.LUT(noise, offsets)
        planes = [noise + t * (c1[c] - c0[c]) + c0[c] for c in range(3)]  # one plane at a time: numpy is
        image = cv2.merge([np.clip(p, 0, 255, out=p).astype(np.uint8) for p in planes])  # slow on an axis of 3
    if kind == 3:
        for _ in range(int(rng.integers(15, 60))):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            if rng.random() < 0.6:
                p, q = rng.integers(0, (width, height)), rng.integers(0, (width, height))
                cv2.line(image, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, int(rng.integers(1, 3)))
            else:
                p = rng.integers(0, (width, height))
                cv2.circle(image, (int(p[0]), int(p[1])), int(rng.integers(1, 4)), colour, -1)
    return image


def _shape_pixels(rng: np.random.Generator, category: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of one shape of ``category`` at a random size, rotation and place, wholly inside the image."""
    low, high = OBJECT_SIZE[0], min(OBJECT_SIZE[1], 0.7 * min(height, width))
    # Log-uniform in size, leaning towards larger objects: about 1 in 7 is under 32 px.
    size = low * (high / low) ** np.sqrt(rng.random())
    radius = size / 2
    cx, cy = rng.uniform(radius + 1, width - radius - 1), rng.uniform(radius + 1, height - radius - 1)
    # Drawn on a canvas just around the shape (cv2 coordinates in 1/16 px, for sub-pixel placement).
    x0, y0 = int(cx - radius) - 1, int(cy - radius) - 1
    canvas = np.zeros((int(2 * radius) + 4, int(2 * radius) + 4), np.uint8)
    cx, cy = cx - x0, cy - y0
    if category == 1:
        cv2.circle(canvas, (round(cx * 16), round(cy * 16)), round(radius * 16), 1, -1, cv2.LINE_8, shift=4)
        ys, xs = np.nonzero(canvas)
        return ys + y0, xs + x0
    rotation = rng.uniform(0, 2 * np.pi)
    if category == 2:  # a square whose rotated extent is ``size``
        theta = np.pi / 4 + np.arange(4) * np.pi / 2
        r = radius / (abs(np.cos(rotation)) + abs(np.sin(rotation))) * np.sqrt(2)
    elif category == 4:  # an equilateral triangle
        theta, r = np.arange(3) * 2 * np.pi / 3, np.full(3, radius)
    else:  # a five-pointed star
        theta = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.38, 0.5))
    points = np.stack([cx + r * np.cos(theta + rotation), cy + r * np.sin(theta + rotation)], axis=1)
    cv2.fillPoly(canvas, [np.round(points * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    ys, xs = np.nonzero(canvas)
    return ys + y0, xs + x0


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _contrasting_colour(
    rng: np.random.Generator, beneath: np.ndarray, neighbours: list[tuple[int, int, int]]
) -> tuple[int, int, int] | None:
    """A random colour at least MIN_CONTRAST from nearly all pixels it covers and from touched objects."""
    beneath = beneath.astype(np.float32)
    for _ in range(12):
        colour = rng.integers(0, 256, 3)
        distance = np.linalg.norm(beneath - colour, axis=1)
        if np.mean(distance < MIN_CONTRAST) > 0.03:
            continue
        if any(np.linalg.norm(colour - np.array(n)) < MIN_CONTRAST for n in neighbours):
            continue
        return int(colour[0]), int(colour[1]), int(colour[2])
    return None


def _write_image(images_dir: Path, seed: int, index: int, image_size: tuple[int, int] | None) -> tuple:
    """Render image ``index`` into ``images_dir``; returns its (height, width, objects without masks)."""
    image, objects = render_image(seed, index, image_size=image_size)
    ok, encoded = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok, "OpenCV failed to encode a JPEG"
    (images_dir / f"{index:06d}.jpg").write_bytes(encoded.tobytes())
    return image.shape[0], image.shape[1], [(o.category_id, o.bbox, o.area) for o in objects]


def generate(
    root: str | Path,
    *,
    num_images: int,
    seed: int,
    image_size: tuple[int, int] | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = False,
) -> tuple[Path, Path]:
    """Write ``root/images/NNNNNN.jpg`` and ``root/annotations.json``; returns (images dir, annotation file).

    ``image_size`` is (height, width) for every image; by default sizes vary (``SIDES``). The files are
    written into a temporary sibling of ``root`` that is renamed into place only when complete, so an
    interrupted run leaves no half-written dataset. An existing ``root`` is an error unless ``overwrite``.
    ``workers``: processes rendering at once (default: one per CPU, up to 8; small datasets use one). Each
    image depends only on (seed, index), so the output does not depend on it. ``progress``: a bar on stderr.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    root = Path(root)
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} already exists; remove it or pass overwrite=True (--force)")
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        os.chmod(tmp, 0o755)
        (tmp / "images").mkdir()
        jobs = [(tmp / "images", seed, index, image_size) for index in range(num_images)]
        bar = tqdm(total=num_images, desc=f"rendering {root.name}", unit="img", disable=not progress)
        with bar:
            if workers > 1 and num_images >= 200:
                with ProcessPoolExecutor(workers) as pool:
                    rendered = list(_counting(pool.map(_write_image, *zip(*jobs, strict=True), chunksize=50), bar))
            else:
                rendered = list(_counting((_write_image(*job) for job in jobs), bar))
        images, annotations = [], []
        for index, (height, width, objects) in enumerate(rendered):
            images.append({"id": index + 1, "file_name": f"{index:06d}.jpg", "height": height, "width": width})
            for category_id, bbox, area in objects:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": index + 1,
                        "category_id": category_id,
                        "bbox": list(bbox),
                        "area": float(area),
                        "iscrowd": 0,
                    }
                )
        info = {"description": f"detector.synthetic v{VERSION}, seed {seed}", "version": str(VERSION)}
        dataset = {"info": info, "licenses": [], "categories": list(CATEGORIES), "images": images}
        dataset["annotations"] = annotations
        (tmp / "annotations.json").write_text(json.dumps(dataset))
        if root.exists():  # overwrite: only now that the replacement is complete
            shutil.rmtree(root)
        try:
            tmp.rename(root)
        except OSError:
            raise FileExistsError(f"{root} appeared while it was being generated") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / "images", root / "annotations.json"


def _counting(items, bar: tqdm):
    """``items`` as they come, one step of ``bar`` each."""
    for item in items:
        bar.update()
        yield item


def default_dataset(split: str) -> tuple[Path, Path]:
    """(images dir, annotation file) of the standard synthetic split, generated on first use.

    "train": 2000 images from seed 0; "val": 200 from seed 1. They live in ``$SYNTHETIC_DATA_DIR`` or
    ``<repo>/.cache/synthetic``, under a name carrying ``VERSION``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; known: {', '.join(SPLITS)}")
    num_images, seed = SPLITS[split]
    root = Path(os.environ.get("SYNTHETIC_DATA_DIR") or REPO / ".cache" / "synthetic") / f"{split}-v{VERSION}"
    images_dir, annotation_file = root / "images", root / "annotations.json"
    if not annotation_file.is_file():
        try:
            # A root without its annotation file was not made by generate() (which renames complete
            # datasets into place), so replacing it loses nothing.
            generate(root, num_images=num_images, seed=seed, overwrite=root.exists(), progress=True)
        except FileExistsError:
            if not annotation_file.is_file():  # not simply another process finishing first
                raise
    return images_dir, annotation_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detector.synthetic",
        description="Write a synthetic COCO-format detection dataset.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset directory to create")
    parser.add_argument("--num-images", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="fixed image size (default: varied)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--workers", type=int, help="rendering processes (default: one per CPU, up to 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_images < 0:
        parser.error("--num-images must be >= 0")
    start = time.perf_counter()
    try:
        images_dir, annotation_file = generate(
            args.out,
            num_images=args.num_images,
            seed=args.seed,
            image_size=tuple(args.size) if args.size else None,
            overwrite=args.force,
            workers=args.workers,
            progress=not args.no_progress,
        )
    except FileExistsError as e:
        parser.error(str(e))
    boxes = len(json.loads(annotation_file.read_text())["annotations"])
    print(f"{args.num_images} images, {boxes} boxes -> {images_dir.parent} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
