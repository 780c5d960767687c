"""Multiply-adds and parameters of a whole detector at its input size, part by part.

Counted as in the ShuffleNet paper (convolutions and fully connected layers only). The RoI head is counted
for the proposals the RPN really passes on at test time (``rpn_post_nms_top_n_test`` for an untrained
model, which keeps them all), which is where a mobile Faster R-CNN spends most of its CPU time.
Run as ``python -m detector.complexity [--config NAME] [--json]``.
"""

import argparse
import json
import sys

import torch

from backbone.cli import HelpFormatter
from backbone.complexity import count_macs_by_part, count_params

from .categories import Category, CategoryMap
from .config import CONFIGS, DEFAULT_CONFIG, DetectorConfig
from .model import Detector

COCO_CLASSES = 80


def input_shape(config: DetectorConfig) -> tuple[int, int]:
    """(H, W) at the test size of a COCO-like 480 x 640 landscape image (torchvision's rule: short side
    ``min_size`` unless that puts the long side over ``max_size``)."""
    scale = min(config.min_size / 480, config.max_size / 640)
    return round(480 * scale), round(640 * scale)


def detector_complexity(config: DetectorConfig, categories: CategoryMap | None = None) -> dict:
    """Multiply-adds per part (backbone, neck, rpn, roi_head) and parameters, for one image at test size."""
    if categories is None:
        categories = CategoryMap(Category(i + 1, f"class{i + 1}") for i in range(COCO_CLASSES))
    torch.manual_seed(0)
    detector = Detector(config, categories).eval()
    net = detector.model
    parts = {
        "backbone": net.backbone.body,
        "neck": net.backbone.neck,
        "rpn": net.rpn,
        "roi_head": net.roi_heads,
    }
    h, w = input_shape(config)
    image = torch.rand(3, h, w)
    macs = count_macs_by_part(parts, lambda: detector.predict([image]))
    return {
        "config": config.name,
        "backbone_name": config.backbone,
        "input_size": [h, w],
        "num_classes": len(categories),
        "macs": sum(macs.values()),
        "macs_by_part": macs,
        "params": count_params(net),
        "params_by_part": {name: count_params(module) for name, module in parts.items()},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detector.complexity",
        description="Multiply-adds and parameters of a detector configuration (80 COCO classes), part by part.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--config",
        choices=sorted(CONFIGS),
        help=f"one configuration (default: all; {DEFAULT_CONFIG!r} is the CPU default)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be positive, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [args.config] if args.config else list(CONFIGS)
    rows = [detector_complexity(CONFIGS[name]) for name in names]
    if args.json:
        json.dump(rows if len(rows) > 1 else rows[0], sys.stdout, indent=2)
        print()
        return 0
    header = ("config", "input", "GMACs", "backbone", "neck", "rpn", "roi_head", "params")
    widths = (-18, 9, 7, 9, 7, 7, 9, 11)  # negative: left-aligned
    print(" ".join(f"{h:<{-w}}" if w < 0 else f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for r in rows:
        part = {k: v / 1e9 for k, v in r["macs_by_part"].items()}
        size = "x".join(map(str, r["input_size"]))
        print(
            f"{r['config']:<18} {size:>9} {r['macs'] / 1e9:>7.2f} {part['backbone']:>9.2f} {part['neck']:>7.2f} "
            f"{part['rpn']:>7.2f} {part['roi_head']:>9.2f} {r['params']:>11,}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
