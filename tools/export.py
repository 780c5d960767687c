"""Export a checkpoint to ONNX for the torch-free ONNX Runtime engine, and check that it detects the same.

    python -m tools.export [--checkpoint models/coco.pt] [--output models/coco.onnx]

The graph is the whole torchvision Faster R-CNN (resize, normalisation, RPN, RoI heads, box decoding) for one
(3, H, W) image of any size, exported by torch's TorchScript-based exporter, which follows torchvision's
tracing-aware code paths. The checkpoint's model card (configuration, categories, cost, provenance) goes into
the file's metadata, so ``runtime.load_engine`` needs nothing else. After writing, the export runs both
engines on a few synthetic images and the bundled COCO photos and fails if their detections differ.

A command on top of ``detector`` (the model and its card) and ``runtime`` (the engines it checks).
"""

import argparse
import io
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch

from backbone.cli import HelpFormatter
from backbone.fuse import fold_batchnorm
from backbone.weights import atomic_write
from detector.card import CARD_KEY, INPUT, OUTPUTS
from detector.checkpoint import CheckpointError, load_checkpoint, model_card
from detector.complexity import input_shape
from detector.config import DEFAULT_CHECKPOINT
from detector.model import Detector
from detector.synthetic import render_image
from runtime import EngineError, load_engine
from runtime.preprocess import to_model_input

OPSET = 17
SAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "data" / "sample" / "images"
# Check shapes: the usual 4:3 landscape, a portrait and a panorama (the graph must not be fixed to one size).
CHECK_SHAPES = ((384, 512), (512, 384), (240, 640))


class ExportMismatch(RuntimeError):
    """The exported graph does not detect what the checkpoint does."""


def export_onnx(detector: Detector, path: str | Path) -> None:
    """Write ``detector`` as ONNX with its model card to ``path``, atomically."""
    path = Path(path)
    # BatchNorm folded into the convolutions: an exported (Frozen)BatchNorm is a multiply and an add per layer.
    # eval() alone gives the test-time network, input size included (the transform picks it by mode).
    net = fold_batchnorm(detector.model.eval())
    height, width = input_shape(detector.config)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the tracer's notes on torchvision's shape arithmetic are expected
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            ([torch.rand(3, height, width)],),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=OUTPUTS,
            dynamic_axes={INPUT: [1, 2], **{name: [0] for name in OUTPUTS}},
        )
    model = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(model, {CARD_KEY: model_card(detector).to_json()})
    model.doc_string = f"shufflenet-detect {detector.config.name}: Faster R-CNN on {detector.config.backbone}"
    atomic_write(path, lambda f: f.write(model.SerializeToString()))


def check_images(config) -> list[tuple[str, np.ndarray]]:
    """Synthetic images of three shapes (a landscape, a portrait, a panorama: the graph must not be fixed to one
    size) and the bundled real COCO photos, each as the engines take it (RGB float (3, H, W) in 0..1)."""
    images = []
    for seed, (height, width) in enumerate(CHECK_SHAPES):
        image = render_image(seed, 0, image_size=(height, width))[0]
        images.append((f"synthetic {height}x{width}", np.ascontiguousarray(image.transpose(2, 0, 1), np.float32) / 255))
    for path in sorted(SAMPLE_IMAGES.glob("*.jpg"))[:4]:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        images.append((path.name, to_model_input(bgr, config.min_size, config.max_size)))
    return images


def paired_differences(a, b) -> tuple[float, float]:
    """The largest box and score differences when each detection of ``a`` is paired with the closest box of the
    same label in ``b``."""
    box_px = score = 0.0
    for box, label, value in zip(a.boxes, a.labels, a.scores, strict=True):
        same = np.flatnonzero(b.labels == label)
        distance = np.abs(b.boxes[same] - box).max(axis=1)
        nearest = same[int(distance.argmin())]
        box_px, score = max(box_px, float(distance.min())), max(score, abs(float(b.scores[nearest] - value)))
    return box_px, score


def compare_engines(checkpoint: Path, exported: Path, *, threads: int = 1) -> dict:
    """Largest box (px) and score differences between the two engines; labels must agree.

    Detections are paired by label and nearest box, not by rank: near the score threshold two detections of one
    class can score alike to 1e-6 and come out in either order, which says nothing about the export."""
    torch_engine = load_engine(checkpoint, "torch", threads=threads)
    onnx_engine = load_engine(exported, "onnxruntime", threads=threads)
    images = check_images(torch_engine.card.config)
    worst = {"box_px": 0.0, "score": 0.0, "images": len(images), "detections": 0}
    for name, array in images:
        (a,), (b,) = torch_engine.predict([array]), onnx_engine.predict([array])
        if len(a.labels) != len(b.labels) or not np.array_equal(a.labels, b.labels):
            raise ExportMismatch(
                f"{exported}: the engines disagree on {name} ({len(a.labels)} vs {len(b.labels)} detections)"
            )
        if len(a.labels):
            box_px, score = paired_differences(a, b)
            worst["box_px"], worst["score"] = max(worst["box_px"], box_px), max(worst["score"], score)
        worst["detections"] += len(a.labels)
    onnx_engine.close()
    return worst


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.export", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="a .pt training checkpoint")
    parser.add_argument("--output", type=Path, help="the .onnx file (default: the checkpoint's path, .onnx)")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be positive, got {args.threads}")
    torch.set_num_threads(args.threads)
    output = args.output or args.checkpoint.with_suffix(".onnx")
    if output.suffix.lower() != ".onnx":
        parser.error(f"--output {output}: the file name must end in .onnx (that is how engines are chosen)")
    try:
        detector = load_checkpoint(args.checkpoint)
        export_onnx(detector, output)
        check = compare_engines(args.checkpoint, output, threads=args.threads)
    except (CheckpointError, EngineError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except ExportMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MB); against PyTorch on {check['images']} "
          f"synthetic and real images ({check['detections']} detections): boxes within {check['box_px']:.4f} px, "
          f"scores within {check['score']:.2e}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
