"""The CPU default against torchvision's mobile detectors, measured in one run on one machine.

Every model gets the same COCO-sized images (480x640, resized by each model's own transform to short side
320; the paper's 1x g=3 runs at its 600) with the same thread count. Rounds interleave the models so
machine noise hits all of them alike; medians are reported. Random weights: speed does not depend on
them, except that an untrained RPN keeps all of its proposals, which is the worst case for the RoI head.

    python bench/peers.py [--threads 2] [--rounds 7] [--json] [--variant 'neck_channels=64;box_head_width=128']
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn, ssdlite320_mobilenet_v3_large

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detector import CONFIGS, DEFAULT_CONFIG, Category, CategoryMap, Detector, get_config  # noqa: E402

COCO = CategoryMap(Category(i + 1, f"class{i + 1}") for i in range(80))


def parse_variant(text: str) -> dict:
    """``FIELD=JSON;FIELD=JSON`` -> overrides of our config, e.g. ``neck_channels=64;box_head_width=128``."""
    overrides = {}
    for item in filter(None, text.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--variant takes FIELD=VALUE;..., got {text!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value  # a bare string such as a backbone name
    return overrides


def build_models(default: str, variants: list[dict]) -> dict[str, torch.nn.Module]:
    """Ours as ``Detector``s, whose ``eval()`` sets the test-time short side (``config.min_size``); a bare
    FasterRCNN built from our config would test at the largest training scale instead."""
    torch.manual_seed(0)
    # Variants of our config are timed in the same rounds: how the default was chosen (README).
    variant_models = {
        "variant:" + ";".join(f"{k}={json.dumps(v)}" for k, v in overrides.items()): Detector(
            get_config(default, **overrides), COCO
        )
        for overrides in variants
    }
    return {
        f"ours:{default}": Detector(CONFIGS[default], COCO),
        **variant_models,
        "fasterrcnn_mobilenet_v3_large_320_fpn": fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None, num_classes=91
        ),
        "ssdlite320_mobilenet_v3_large": ssdlite320_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=91
        ),
        "ours:paper_1x_g3_600": Detector(CONFIGS["paper_1x_g3_600"], COCO),
    }


def eval_short_side(model: torch.nn.Module) -> int:
    """The short side the model resizes to in eval mode (torchvision's transform uses its last min_size)."""
    transform = model.model.transform if isinstance(model, Detector) else model.transform
    return transform.min_size[-1]


def time_once(model: torch.nn.Module, images: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        model(images)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Images/s of the CPU default and its peers (see module doc).")
    parser.add_argument("--config", default=DEFAULT_CONFIG, choices=sorted(CONFIGS), help="our model to compare")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per model and batch size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--nchw", action="store_true", help="time every model in NCHW instead of channels_last")
    parser.add_argument("--no-paper", dest="paper", action="store_false", help="leave out the slow paper config")
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        default=[],
        metavar="FIELD=JSON;...",
        help="also time our config with these fields changed (repeatable)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        models = {name: m.eval() for name, m in build_models(args.config, args.variant).items()}
    except ValueError as exc:  # an unknown field or a value that does not build
        parser.error(str(exc))
    if not args.paper:
        del models["ours:paper_1x_g3_600"]
    if not args.nchw:  # every model in the layout our checkpoints are served in (Detector.channels_last)
        models = {name: m.to(memory_format=torch.channels_last) for name, m in models.items()}
    gen = torch.Generator().manual_seed(0)
    rows = []
    for batch in args.batch_sizes:
        images = [torch.rand(3, 480, 640, generator=gen) for _ in range(batch)]
        for model in models.values():  # warm-up: allocator, kernels selection
            time_once(model, images)
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                times[name].append(time_once(model, images))
        for name, samples in times.items():
            median = statistics.median(samples)
            row = {"model": name, "batch": batch, "short_side": eval_short_side(models[name])}
            rows.append(row | {"median_s": median, "images_per_s": batch / median})
    ours = f"ours:{args.config}"
    rate = {(r["model"], r["batch"]): r["images_per_s"] for r in rows}
    ratios = {
        peer: {b: rate[(ours, b)] / rate[(peer, b)] for b in args.batch_sizes}
        for peer in ("fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large")
    }
    report = {
        "threads": args.threads,
        "layout": "NCHW" if args.nchw else "channels_last",
        "rounds": args.rounds,
        "input": "480x640 images, each model's own resize (short side 320; paper config 600)",
        "rows": rows,
        "ratios": {peer: {str(b): round(r, 3) for b, r in by_batch.items()} for peer, by_batch in ratios.items()},
        "ratio_vs_fasterrcnn_mobilenet_v3_large_320_fpn": round(
            min(ratios["fasterrcnn_mobilenet_v3_large_320_fpn"].values()), 3
        ),
        "ratio_vs_ssdlite320_mobilenet_v3_large": round(min(ratios["ssdlite320_mobilenet_v3_large"].values()), 3),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"threads={args.threads} rounds={args.rounds} layout={report['layout']} (medians)")
    width = max(40, *(len(r["model"]) for r in rows))
    print(f"{'model':<{width}} {'batch':>5} {'short side':>10} {'ms/batch':>9} {'images/s':>9}")
    for r in rows:
        print(
            f"{r['model']:<{width}} {r['batch']:>5} {r['short_side']:>10} {r['median_s'] * 1000:>9.1f} "
            f"{r['images_per_s']:>9.2f}"
        )
    for peer, by_batch in ratios.items():
        print(f"{ours} / {peer}: " + ", ".join(f"batch {b}: {x:.2f}x" for b, x in by_batch.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
