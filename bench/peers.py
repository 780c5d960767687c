"""The shipped model against its peers, measured in one run on one machine.

Two comparisons, each with rounds that interleave the models so machine noise hits all of them alike, and
medians reported:

- In PyTorch, against torchvision's mobile detectors: the same COCO-sized images (480x640, resized by each
  model's own transform to short side 320; the paper's 1x g=3 runs at its 600), random weights (speed does
  not depend on them, except that an untrained RPN keeps all of its proposals, the worst case for the RoI head).
- On one engine that runs both (OpenVINO), against NanoDet-m: the shipped export (models/coco.onnx) and
  NanoDet-m's IR on the same real COCO images (coco128, decoded beforehand), end to end: each model's own
  preprocessing (ours: shrink to its input size; NanoDet: its letterbox) and postprocessing (NanoDet: its
  decoding and NMS; ours: inside the graph). A batch of 8 runs as parallel single-threaded streams for both.
  NanoDet-m's IR is compiled for its one 320x320 input; ours, which takes any size, gets a graph of its own for
  the first four input shapes that recur (runtime.openvino), so the warm-up passes over the images twice. Two
  image sets: the first 16 photos (11 input shapes; ``ratio_vs_nanodet_m``), and the first 16 of coco128's
  commonest size, 640x480, as a camera's frames share one shape (``ratio_vs_nanodet_m_one_shape``).

    python bench/peers.py [--threads 2] [--rounds 7] [--json] [--variant 'neck_channels=64;box_head_width=128']
    python bench/peers.py --no-torchvision    # only the engine comparison with NanoDet-m
"""

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import torch
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn, ssdlite320_mobilenet_v3_large

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from backbone.cli import HelpFormatter  # noqa: E402
from detector import CONFIGS, DEFAULT_EXPORT, Category, CategoryMap, Detector, get_config  # noqa: E402
from detector.nanodet import NanoDetM  # noqa: E402
from runtime.openvino import OpenVinoEngine  # noqa: E402
from runtime.preprocess import to_model_input  # noqa: E402

SHIPPED_CONFIG = "coco_edge"  # the configuration of models/coco.pt
NANODET_IR = REPO.parent / "shared" / "weights" / "nanodet_m" / "nanodet_m.xml"
COCO128_IMAGES = REPO.parent / "shared" / "data" / "coco128" / "images"

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


def eval_input_size(model: torch.nn.Module) -> tuple[int, int]:
    """(H, W) the model resizes a 480 x 640 image to in eval mode (its own transform, as timed here)."""
    transform = model.model.transform if isinstance(model, Detector) else model.transform
    with torch.inference_mode():
        return tuple(transform([torch.zeros(3, 480, 640)])[0].image_sizes[0])


def time_once(model: torch.nn.Module, images: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        model(images)
    return time.perf_counter() - start


def coco_photos(folder: Path, count: int, one_shape: bool) -> list:
    """The first ``count`` JPEGs of ``folder`` (sorted by name), or with ``one_shape`` the first ``count`` of its
    most common size (as a camera's frames all have one)."""
    images = [cv2.imread(str(path), cv2.IMREAD_COLOR) for path in sorted(folder.glob("*.jpg"))]
    if one_shape:
        common = Counter(image.shape for image in images).most_common(1)[0][0]
        images = [image for image in images if image.shape == common]
    return images[:count]


def engine_rows(args: argparse.Namespace, nanodet: NanoDetM, one_shape: bool) -> tuple[list[dict], dict]:
    """Images/s of the shipped export (a fresh engine: its shape graphs start empty) and NanoDet-m on OpenVINO,
    end to end, interleaved rounds; and how many of our input shapes had a graph of their own."""
    ours = OpenVinoEngine(args.export, threads=args.threads, static_shapes=args.openvino_shapes)
    config = ours.card.config
    images = coco_photos(args.images, max(args.batch_sizes) * 2, one_shape)

    def run_ours(batch: list) -> None:
        ours.predict([to_model_input(image, config.min_size, config.max_size) for image in batch])

    runners = {f"ours:{args.export.name} (openvino)": run_ours, "nanodet_m (openvino)": nanodet.detect_batch}
    rows = []
    for size in args.batch_sizes:
        batches = [images[i : i + size] for i in range(0, len(images) - size + 1, size)]
        for run in runners.values():  # warm-up: twice, so that each input shape gets its own OpenVINO graph
            for batch in batches + batches:
                run(batch)
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                start = time.perf_counter()
                for batch in batches:
                    run(batch)
                times[name].append((time.perf_counter() - start) / len(batches))
        for name, samples in times.items():
            median = statistics.median(samples)
            row = {"model": name, "images": "one shape" if one_shape else "mixed", "batch": size}
            rows.append(row | {"median_s": median, "images_per_s": size / median})
    shapes = {"distinct": len({to_model_input(i, config.min_size, config.max_size).shape for i in images})}
    shapes["with_own_graph"] = len(ours.compiled_shapes)
    ours.close()
    return rows, shapes


def torch_section(args: argparse.Namespace, models: dict[str, torch.nn.Module]) -> tuple[list[dict], dict]:
    """Images/s in PyTorch of our config and torchvision's mobile detectors, interleaved rounds; and our
    config's ratio to each of those peers per batch size."""
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
            row = {"model": name, "batch": batch, "input_hw": eval_input_size(models[name]), "engine": "torch"}
            rows.append(row | {"median_s": median, "images_per_s": batch / median})
    ours = f"ours:{args.config}"
    rate = {(r["model"], r["batch"]): r["images_per_s"] for r in rows}
    ratios = {
        peer: {b: rate[(ours, b)] / rate[(peer, b)] for b in args.batch_sizes}
        for peer in ("fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large")
    }
    return rows, ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Images/s of the shipped model and its peers (see module doc).", formatter_class=HelpFormatter
    )
    parser.add_argument("--config", default=SHIPPED_CONFIG, choices=sorted(CONFIGS), help="our model in PyTorch")
    parser.add_argument("--threads", type=int, default=2, help="torch, ONNX Runtime and OpenVINO threads")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per model and batch size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="images per call")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--nchw", action="store_true", help="time every model in NCHW instead of channels_last")
    parser.add_argument("--no-paper", dest="paper", action="store_false", help="leave out the slow paper config")
    parser.add_argument("--export", type=Path, default=DEFAULT_EXPORT, help="our export against NanoDet-m")
    parser.add_argument("--nanodet", type=Path, default=NANODET_IR, help="NanoDet-m's OpenVINO IR (.xml)")
    parser.add_argument("--images", type=Path, default=COCO128_IMAGES, help="JPEGs for the NanoDet-m comparison")
    parser.add_argument("--no-nanodet", dest="nanodet_peer", action="store_false", help="skip NanoDet-m")
    parser.add_argument(
        "--no-torchvision",
        dest="torchvision_peers",
        action="store_false",
        help="skip the PyTorch comparison with torchvision's detectors",
    )
    parser.add_argument(
        "--openvino-shapes",
        type=int,
        default=4,
        help="input shapes that get a graph of their own in our OpenVINO engine (runtime.openvino)",
    )
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        default=[],
        metavar="FIELD=JSON;...",
        help="also time our config with these fields changed (repeatable)",
    )
    args = parser.parse_args(argv)
    if not (args.torchvision_peers or args.nanodet_peer):
        parser.error("--no-torchvision and --no-nanodet leave nothing to time")
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    ratios: dict[str, dict[int, float]] = {}
    report: dict = {"threads": args.threads, "layout": "NCHW" if args.nchw else "channels_last", "rounds": args.rounds}
    if args.torchvision_peers:
        try:
            models = {name: m.eval() for name, m in build_models(args.config, args.variant).items()}
        except ValueError as exc:  # an unknown field or a value that does not build
            parser.error(str(exc))
        torch_rows, torch_ratios = torch_section(args, models)
        rows += torch_rows
        ratios |= torch_ratios
        for peer in torch_ratios:
            report[f"ratio_vs_{peer}"] = round(min(torch_ratios[peer].values()), 3)
    if args.nanodet_peer:
        nanodet = NanoDetM(args.nanodet, threads=args.threads)
        input_shapes = {}
        for one_shape in (False, True):
            engine, shapes = engine_rows(args, nanodet, one_shape)
            rate_on = {(r["model"].startswith("ours"), r["batch"]): r["images_per_s"] for r in engine}
            peer = "nanodet_m_one_shape" if one_shape else "nanodet_m"
            ratios[peer] = {b: rate_on[(True, b)] / rate_on[(False, b)] for b in args.batch_sizes}
            input_shapes[peer] = shapes
            rows += engine
            report[f"ratio_vs_{peer}"] = round(min(ratios[peer].values()), 3)
        report["openvino_input_shapes"] = input_shapes
    report |= {
        "input": "torch: 480x640 images, each model's own resize (short side 320; paper config 600); "
        "openvino: coco128 JPEGs decoded beforehand (the first 16, and the first 16 of its commonest size), "
        "each model's own preprocessing and postprocessing",
        "rows": rows,
        "ratios": {peer: {str(b): round(r, 3) for b, r in by_batch.items()} for peer, by_batch in ratios.items()},
    }
    ours = f"ours:{args.config}"
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"threads={args.threads} rounds={args.rounds} layout={report['layout']} (medians)")
    width = max(40, *(len(r["model"]) for r in rows))
    print(f"{'model':<{width}} {'batch':>5} {'input':>10} {'ms/batch':>9} {'images/s':>9}")
    for r in rows:
        print(
            f"{r['model']:<{width}} {r['batch']:>5} {'x'.join(map(str, r.get('input_hw', '-'))):>10} "
            f"{r['median_s'] * 1000:>9.1f} "
            f"{r['images_per_s']:>9.2f}"
        )
    for peer, by_batch in ratios.items():
        print(f"{ours} / {peer}: " + ", ".join(f"batch {b}: {x:.2f}x" for b, x in by_batch.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
