"""COCO box AP of a checkpoint (or of a results file), with model cost and speed, as a paper reports them.

    python eval/coco.py --images val2017 --annotations instances_val2017.json   # the bundled COCO model
    python eval/coco.py                                   # the synthetic-shapes demo model on its val split
    python eval/coco.py --checkpoint C.pt --images val2017 --annotations instances_val2017.json --min-size 600
    python eval/coco.py --results detections.json --annotations instances_val2017.json
    torchrun --nproc-per-node 4 eval/coco.py ...          # images sharded over processes, same numbers

Prints COCO's 12-line summary, per-class AP, multiply-adds and parameters, and speed; ``--json`` prints the
report as JSON instead, and nothing else goes to stdout. Mistakes a user can make (missing or unreadable
files, results naming unknown ids, images missing on disk) end with one line on stderr and exit status 2.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    # As a script, sys.path[0] is eval/ itself: import the package from the repo root instead of its files.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

from backbone.cli import HelpFormatter  # noqa: E402
from detector import distributed  # noqa: E402
from detector.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from detector.config import DEFAULT_CHECKPOINT, DEMO_CHECKPOINT  # noqa: E402
from detector.data import CocoDetectionDataset, DatasetError, load_coco, missing_images  # noqa: E402
from eval.inference import run_detector  # noqa: E402
from eval.report import plot_pr_curves, render_text  # noqa: E402
from eval.scoring import ResultsError, load_results, score_results  # noqa: E402

RESULTS_NAME, REPORT_NAME, PLOT_NAME = "detections.json", "report.json", "pr_curves.png"
DEFAULT_PLOT_DIR = Path("runs/eval")


class UsageError(Exception):
    """A bad combination of options or a missing optional dependency."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and status 2, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python eval/coco.py", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument(
        "--checkpoint",
        type=Path,
        help=f"detector checkpoint (default: models/{DEFAULT_CHECKPOINT.name} with --images, "
        f"models/{DEMO_CHECKPOINT.name} on the synthetic val split)",
    )
    p.add_argument("--images", type=Path, help="images directory (with --annotations; default: synthetic val)")
    p.add_argument("--annotations", type=Path, help="COCO instances JSON, e.g. instances_val2017.json")
    p.add_argument("--results", type=Path, help="score this COCO results JSON; no model is run")
    p.add_argument("--batch-size", type=int, default=8, help="images per predict call (default: 8)")
    p.add_argument("--min-size", type=int, help="test short side, overriding the checkpoint's (paper: 300, 600)")
    p.add_argument("--limit", type=int, help="evaluate only the first N images (by id)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--workers", type=int, default=0, help="data loading processes (default: 0, in-process)")
    p.add_argument("--output-dir", type=Path, help=f"write {RESULTS_NAME} (COCO results) and {REPORT_NAME} here")
    p.add_argument(
        "--plot", action="store_true", help=f"write {PLOT_NAME} to --output-dir (default {DEFAULT_PLOT_DIR})"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON (and nothing else) on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        # Everything libraries print (pycocotools' progress lines) goes to stderr: stdout is the report only.
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings(record=True):
            report = evaluate(args)
    except (UsageError, CheckpointError, DatasetError, ResultsError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    if report is None:  # a rank > 0 under torchrun: rank 0 reports
        return 0
    for note in report["warnings"]:
        print(f"warning: {note}", file=sys.stderr)
    print(json.dumps(report, indent=2, default=str) if args.json else render_text(report))
    return 0


def _check_args(args: argparse.Namespace) -> None:
    for name in ("batch_size", "limit", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.min_size is not None and args.min_size < 32:
        raise UsageError(f"--min-size must be at least 32, got {args.min_size}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device!r} is not a device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available here")
    if args.workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {args.workers}")
    if args.results is not None:
        extra = [f"--{n.replace('_', '-')}" for n in ("checkpoint", "images", "min_size") if getattr(args, n)]
        if extra:
            raise UsageError(f"--results scores a file without a model; {', '.join(extra)} does not apply")
    elif (args.images is None) != (args.annotations is None):
        raise UsageError("--images and --annotations go together (or leave both out for the synthetic val split)")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'shufflenet-detect[plot]'") from None
        if args.output_dir is None:
            args.output_dir = DEFAULT_PLOT_DIR


def evaluate(args: argparse.Namespace) -> dict | None:
    """The report of one run; None on ranks other than 0."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.results is not None:
        if int(os.environ.get("RANK", "0")) != 0:  # no model, nothing to shard: rank 0 alone scores the file
            return None
        annotations = args.annotations or _default_data()[1]
        coco_gt = load_coco(annotations)
        results = load_results(args.results)
        image_ids = sorted(coco_gt.imgs)[: args.limit]
        evaluated = {"mode": "results", "results_file": str(args.results), "annotations": str(annotations)}
        speed = cost = None
    else:
        distributed.init_from_env(args.device)
        if args.checkpoint is None:
            args.checkpoint = DEFAULT_CHECKPOINT if args.images else DEMO_CHECKPOINT
        # The test short side is configuration: the network resizes to it in eval mode, and the cost counts it.
        test_size = {"min_size": args.min_size} if args.min_size else None
        detector = load_checkpoint(
            args.checkpoint, device=distributed.device_for(args.device), config_overrides=test_size
        )
        images, annotations = (args.images, args.annotations) if args.images else _default_data()
        dataset = _dataset(images, annotations, detector)
        results, speed = run_detector(
            detector, dataset, batch_size=args.batch_size, limit=args.limit, workers=args.workers
        )
        if distributed.rank() != 0:
            return None
        coco_gt, image_ids = dataset.coco, dataset.ids[: args.limit]
        config = detector.config
        cost = _cost(config, detector)
        evaluated = {
            "mode": "model",
            "checkpoint": str(args.checkpoint),
            "config": config.name,
            "provenance": detector.provenance,
            "images": str(images),
            "annotations": str(annotations),
            "min_size": config.min_size,
            "max_size": config.max_size,
        }
    evaluated["limit"] = args.limit
    score = score_results(coco_gt, results, image_ids=image_ids)
    report = {"evaluated": evaluated, **score, "speed": speed, "cost": cost}
    if args.output_dir is not None:
        report["files"] = _write_outputs(args, report, results)
    return report


def _default_data() -> tuple[Path, Path]:
    from detector.synthetic import default_dataset  # generates the split on first use

    return default_dataset("val")


def _dataset(images: Path, annotations: Path, detector) -> CocoDetectionDataset:
    # Raises DatasetError when the file uses categories the checkpoint does not know.
    dataset = CocoDetectionDataset(images, annotations, train=False, categories=detector.categories)
    unknown = sorted({c.id for c in detector.categories.categories} - set(dataset.coco.cats))
    if unknown:
        raise UsageError(
            f"the checkpoint predicts category ids {unknown[:10]} that {annotations} does not define: "
            "it was trained for other categories"
        )
    missing = missing_images(dataset, limit=5)
    if missing:
        raise DatasetError(f"images listed in {annotations} are missing under {images}: {', '.join(missing)}")
    return dataset


def _cost(config, detector) -> dict:
    from detector.complexity import detector_complexity

    cost = detector_complexity(config, detector.categories)
    keep = ("input_size", "macs", "macs_by_part", "params", "params_by_part")
    return {key: cost[key] for key in keep}


def _write_outputs(args: argparse.Namespace, report: dict, results: list[dict]) -> dict:
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    files = {"results": str(out / RESULTS_NAME), "report": str(out / REPORT_NAME)}
    if args.plot:
        what = report["evaluated"]
        name = Path(what.get("checkpoint") or what["results_file"]).name
        title = f"{name}: AP {report['stats']['AP']:.3f}, AP50 {report['stats']['AP50']:.3f}"
        files["plot"] = str(plot_pr_curves(report["pr_curve"], out / PLOT_NAME, title=title))
    (out / RESULTS_NAME).write_text(json.dumps(results))
    (out / REPORT_NAME).write_text(json.dumps({**report, "files": files}, indent=2, default=str) + "\n")
    return files


if __name__ == "__main__":
    sys.exit(main())
