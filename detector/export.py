"""Export a checkpoint to ONNX for the torch-free ONNX Runtime engine, and check that it detects the same.

    python -m detector.export [--checkpoint models/demo.pt] [--output models/demo.onnx]

The graph is the whole torchvision Faster R-CNN (resize, normalisation, RPN, RoI heads, box decoding) for one
(3, H, W) image of any size, exported by torch's TorchScript-based exporter, which follows torchvision's
tracing-aware code paths. The checkpoint's model card (configuration, categories, cost, provenance) goes into
the file's metadata, so ``runtime.load_engine`` needs nothing else. After writing, the export runs both
engines on a few synthetic images and the bundled COCO photos and fails if their detections differ.
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

from backbone.fuse import fold_batchnorm
from backbone.weights import atomic_write
from runtime import EngineError, load_engine
from runtime.eager import model_card
from runtime.onnx import CARD_KEY, INPUT, OUTPUTS
from runtime.preprocess import to_model_input

from .checkpoint import CheckpointError, load_checkpoint
from .complexity import input_shape
from .config import DEFAULT_CHECKPOINT
from .model import Detector
from .synthetic import render_image

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


def compare_engines(checkpoint: Path, exported: Path) -> dict:
    """Largest box (px) and score differences between the two engines; labels must agree."""
    torch_engine, onnx_engine = load_engine(checkpoint, "torch"), load_engine(exported, "onnxruntime")
    images = check_images(torch_engine.card.config)
    worst = {"box_px": 0.0, "score": 0.0, "images": len(images), "detections": 0}
    for name, array in images:
        (a,), (b,) = torch_engine.predict([array]), onnx_engine.predict([array])
        if len(a.labels) != len(b.labels) or not np.array_equal(a.labels, b.labels):
            raise ExportMismatch(
                f"{exported}: the engines disagree on {name} ({len(a.labels)} vs {len(b.labels)} detections)"
            )
        if len(a.labels):
            worst["box_px"] = max(worst["box_px"], float(np.abs(a.boxes - b.boxes).max()))
            worst["score"] = max(worst["score"], float(np.abs(a.scores - b.scores).max()))
        worst["detections"] += len(a.labels)
    onnx_engine.close()
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detector.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="default: %(default)s")
    parser.add_argument("--output", type=Path, help="the .onnx file (default: the checkpoint's path, .onnx)")
    args = parser.parse_args(argv)
    output = args.output or args.checkpoint.with_suffix(".onnx")
    if output.suffix.lower() != ".onnx":
        parser.error(f"--output {output}: the file name must end in .onnx (that is how engines are chosen)")
    try:
        detector = load_checkpoint(args.checkpoint)
        export_onnx(detector, output)
        check = compare_engines(args.checkpoint, output)
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
