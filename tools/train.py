"""Train a detector: ``python -m tools.train`` (one process) or ``torchrun ... -m tools.train`` (DDP).

With no dataset arguments it trains on the embedded synthetic set. ``--lr`` is the peak rate for
``REFERENCE_BATCH`` (16) images per step, scaled with the global batch (``--batch-size`` x processes); the rate
used is printed and logged. Every epoch it writes ``last.pt`` (the checkpoint plus optimizer, schedule, epoch,
every rank's RNG state and the arguments that shape the schedule, so ``--resume`` continues where it stopped,
with ``--workers 0`` bit for bit) and appends to ``log.jsonl``; every ``--eval-every`` epochs it scores the
validation set with the evaluation code; at the end it writes ``final.pt`` (weights, config, categories,
provenance with the last metrics; no optimizer).

A command on top of ``detector`` (the model, data and training loop) and ``eval`` (the scoring).
"""

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from backbone.cli import HelpFormatter
from backbone.weights import WeightsError
from detector import distributed as dist
from detector.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from detector.config import CONFIGS, DEFAULT_CONFIG, ConfigError, DetectorConfig, get_config
from detector.data import ZOOM_OUT_MAX, CocoDetectionDataset, DatasetError, make_loader, set_epoch
from detector.distill import write_distilled_set
from detector.model import Detector
from detector.nanodet import ATTRIBUTION as NANODET_ATTRIBUTION
from detector.synthetic import default_dataset
from detector.training import (
    REFERENCE_BATCH,
    WeightAverage,
    build_optimizer,
    check_resume,
    fit_epochs,
    lr_factor,
    parameter_groups,
    restore,
    scaled_lr,
    schedule_record,
    seed_rank,
    train_one_epoch,
    training_state,
)
from eval.inference import run_detector
from eval.scoring import score_results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.train",
        description="Train a ShuffleNet Faster R-CNN on a COCO-format dataset (default: the embedded synthetic set).",
        formatter_class=HelpFormatter,
    )
    data = p.add_argument_group("data (default: the synthetic train/val splits, generated on first use)")
    data.add_argument("--train-images", type=Path, help="folder of training images")
    data.add_argument("--train-annotations", type=Path, help="COCO instances JSON for the training images")
    data.add_argument("--val-images", type=Path, help="folder of validation images")
    data.add_argument("--val-annotations", type=Path, help="COCO instances JSON for the validation images")
    data.add_argument(
        "--teacher",
        type=Path,
        help="a teacher's OpenVINO IR (NanoDet-m's .xml): its detections label every class the training set lacks",
    )
    data.add_argument("--teacher-score", type=float, default=0.35, help="lowest teacher score kept as a label")
    data.add_argument(
        "--teacher-ignore-score",
        type=float,
        help="teacher detections from this score up to --teacher-score are regions to ignore: neither objects nor "
        "background in the RoI head (default: none, they are background)",
    )
    model = p.add_argument_group("model")
    model.add_argument("--config", default=DEFAULT_CONFIG, choices=sorted(CONFIGS), help="named configuration")
    model.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field (JSON value), e.g. --set min_size=300 --set 'train_min_sizes=[300]'",
    )
    model.add_argument(
        "--pretrained-backbone",
        type=Path,
        help="local backbone weights: an ImageNet state dict, or an OpenVINO IR holding the body (NanoDet-m's "
        ".xml; with --set neck=nanodet_m the neck comes from the same IR)",
    )
    model.add_argument(
        "--init",
        type=Path,
        metavar="CHECKPOINT",
        help="start from a detector checkpoint's weights (same network and categories; scales and trainable layers "
        "may differ) with a fresh optimizer and schedule: fine-tuning, or another cycle (unlike --resume)",
    )
    model.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (DDP)")
    opt = p.add_argument_group("optimization")
    opt.add_argument("--epochs", type=int, default=26, help="length of the schedule")
    opt.add_argument(
        "--optimizer",
        choices=["sgd", "adamw"],
        default="sgd",
        help="sgd (with --momentum; torchvision's recipe) or adamw (faster to fit a small set from scratch)",
    )
    opt.add_argument("--batch-size", type=int, default=2, help="images per process per step")
    opt.add_argument(
        "--lr",
        type=float,
        default=0.02,
        help=f"peak learning rate for {REFERENCE_BATCH} images per step, scaled by --batch-size x processes / "
        f"{REFERENCE_BATCH} (torchvision's 0.02 is for {REFERENCE_BATCH} images)",
    )
    opt.add_argument(
        "--backbone-lr-factor",
        type=float,
        default=1.0,
        help="the backbone's trainable layers learn at --lr times this (see --set trainable_backbone_layers=N)",
    )
    opt.add_argument("--momentum", type=float, default=0.9, help="SGD's momentum")
    opt.add_argument("--weight-decay", type=float, default=1e-4, help="L2 penalty (SGD) or decoupled decay (AdamW)")
    opt.add_argument(
        "--schedule", choices=["step", "cosine"], default="step", help="step decay at --lr-steps, or cosine to 0"
    )
    opt.add_argument(
        "--time-budget",
        type=float,
        metavar="MINUTES",
        help="fit a cosine schedule to this wall-clock budget: after the first epoch, --epochs becomes what fits "
        "(at most --epochs); a resumed run keeps the length it was fitted to",
    )
    opt.add_argument("--lr-steps", type=int, nargs="+", default=[16, 22], help="epochs where step decays the lr")
    opt.add_argument("--lr-gamma", type=float, default=0.1, help="factor of each step decay")
    opt.add_argument("--warmup-iters", type=int, default=1000, help="linear warmup from lr/1000")
    opt.add_argument(
        "--weight-average",
        type=float,
        metavar="DECAY",
        help="keep an exponential moving average of the weights at this decay per step (e.g. 0.999), evaluated "
        "beside them and written as final.pt (default: none, final.pt holds the last weights)",
    )
    opt.add_argument("--clip-grad", type=float, default=10.0, help="max gradient norm (0: off)")
    opt.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    opt.add_argument("--hflip", type=float, default=0.5, help="probability of a horizontal flip in training")
    opt.add_argument(
        "--crop",
        type=float,
        default=0.0,
        help="probability of SSD's random crop in training (the same objects at other scales and contexts)",
    )
    opt.add_argument(
        "--zoom-out",
        type=float,
        default=0.0,
        help="probability of SSD's zoom-out in training, before the crop (the photo on a canvas up to "
        f"{ZOOM_OUT_MAX:g}x its sides, filled with the normalisation mean: objects seen smaller)",
    )
    opt.add_argument(
        "--repeat-threshold",
        type=float,
        metavar="T",
        help="repeat factor sampling: an image whose rarest class is in a fraction f < T of the images is seen "
        "round(sqrt(T / f)) times an epoch (LVIS's recipe for long-tailed sets; default: each image once)",
    )
    run = p.add_argument_group("run")
    run.add_argument("--output-dir", type=Path, default=Path("runs/train"), help="where checkpoints and the log go")
    run.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pt")
    run.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (0: only at the end)")
    run.add_argument("--max-iters", type=int, default=0, help="stop each epoch after N steps (smoke tests)")
    run.add_argument("--workers", type=int, default=2, help="data loader processes per training process")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    run.add_argument("--seed", type=int, default=0, help="initial weights; rank r draws from seed + r")
    run.add_argument("--threads", type=int, help="torch threads per process (default: torch's choice)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "lr", "backbone_lr_factor"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.repeat_threshold is not None and not 0 < args.repeat_threshold <= 1:
        p.error(f"--repeat-threshold is a fraction of the images in (0, 1], got {args.repeat_threshold}")
    for name in ("hflip", "crop", "zoom_out"):
        if not 0 <= getattr(args, name) <= 1:
            p.error(f"--{name.replace('_', '-')} is a probability in [0, 1], got {getattr(args, name)}")
    if (args.train_images is None) != (args.train_annotations is None):
        p.error("give --train-images and --train-annotations together")
    if (args.val_images is None) != (args.val_annotations is None):
        p.error("give --val-images and --val-annotations together")
    if args.init is not None and args.resume:
        p.error("--init starts a new run from a checkpoint's weights; --resume continues OUTPUT_DIR/last.pt")
    if args.teacher is not None and args.train_images is None:
        p.error("--teacher labels a dataset given with --train-images and --train-annotations")
    if not 0 < args.teacher_score <= 1:
        p.error(f"--teacher-score is a score in (0, 1], got {args.teacher_score}")
    if args.teacher_ignore_score is not None and not 0 < args.teacher_ignore_score < args.teacher_score:
        p.error(f"--teacher-ignore-score is a score in (0, --teacher-score), got {args.teacher_ignore_score}")
    if args.weight_average is not None and not 0 < args.weight_average < 1:
        p.error(f"--weight-average is a decay in (0, 1), got {args.weight_average}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be positive, got {args.threads}")
    if args.time_budget is not None and (args.time_budget <= 0 or args.schedule != "cosine"):
        p.error("--time-budget takes positive minutes and fits a cosine schedule (give --schedule cosine)")
    if args.amp and not args.device.startswith("cuda"):
        p.error("--amp needs a CUDA device")
    try:
        args.model_config = get_config(args.config, **dict(_parse_override(o) for o in args.overrides))
    except ValueError as exc:
        p.error(str(exc))
    return args


def _parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"--set takes FIELD=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare string such as a backbone name


def build_datasets(args: argparse.Namespace) -> tuple[CocoDetectionDataset, CocoDetectionDataset]:
    if args.train_images is None:
        if dist.is_main():  # one process generates, the others wait and read
            default_dataset("train"), default_dataset("val")
        dist.barrier()
        train_images, train_ann = default_dataset("train")
    else:
        train_images, train_ann = args.train_images, args.train_annotations
    if args.teacher is not None:
        merged = args.output_dir / "distilled_annotations.json"
        if dist.is_main():
            merged = write_distilled_set(
                args.teacher,
                train_images,
                train_ann,
                args.output_dir,
                min_score=args.teacher_score,
                ignore_score=args.teacher_ignore_score,
                progress=not args.no_progress,
            )
        dist.barrier()
        train_ann = merged
    train = CocoDetectionDataset(
        train_images,
        train_ann,
        train=True,
        hflip=args.hflip,
        crop=args.crop,
        zoom_out=args.zoom_out,
        fill=args.model_config.image_mean,
    )
    if args.val_images is not None:
        val_images, val_ann = args.val_images, args.val_annotations
    elif args.train_images is None:
        val_images, val_ann = default_dataset("val")
    else:
        val_images, val_ann = train_images, train_ann  # no val set given: report training-set fit
    val = CocoDetectionDataset(val_images, val_ann, train=False, categories=train.categories)
    return train, val


def evaluate(detector: Detector, val: CocoDetectionDataset, batch_size: int, *, progress: bool) -> dict | None:
    """COCO stats on ``val`` through the evaluation code (all ranks infer, rank 0 scores)."""
    detector.eval()
    # Evaluation must not move training's RNG (its DataLoader draws a seed), or resuming would not be exact.
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_initialized() else []):
        results, timing = run_detector(detector, val, batch_size=batch_size, progress=progress)
    detector.train()
    if not dist.is_main():
        return None
    report = score_results(val.coco, results)
    return {"stats": report["stats"], "per_class_ap": report["per_class_ap"], "ms_per_image": timing["ms_per_image"]}


def train(args: argparse.Namespace) -> int:
    started = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    dist.init_from_env(args.device)
    device = dist.device_for(args.device)
    config: DetectorConfig = args.model_config
    train_set, val_set = build_datasets(args)
    loader = make_loader(
        train_set,
        batch_size=args.batch_size,
        train=True,
        workers=args.workers,
        distributed=dist.world() > 1,
        seed=args.seed,
        rank=dist.rank(),
        repeat_threshold=args.repeat_threshold,
    )
    resume_path = args.output_dir / "last.pt"
    resume_state = _read_resume(resume_path, config) if args.resume else None
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    detector = _build_detector(config, args, train_set, val_set)
    seed_rank(args.seed)  # from here on each rank draws its own scale choices, flips and RoI samples
    if resume_state is not None:
        detector.model.load_state_dict(resume_state["state_dict"])
    elif args.init is not None:
        _load_init(detector, args.init)
    if args.sync_bn and dist.world() > 1:
        detector = nn.SyncBatchNorm.convert_sync_batchnorm(detector)
    detector.to(device).train()
    average = WeightAverage(detector, args.weight_average) if args.weight_average else None
    model = dist.wrap(detector, device)
    peak_lr = scaled_lr(args.lr, args.batch_size, dist.world())
    optimizer = build_optimizer(parameter_groups(detector.model, peak_lr, args.backbone_lr_factor), peak_lr, args)
    iters_per_epoch = len(loader) if not args.max_iters else min(len(loader), args.max_iters)
    warmup_iters = min(args.warmup_iters, iters_per_epoch * args.epochs // 2)
    if resume_state is not None and args.time_budget:  # the length was fitted once, when the run began
        args.epochs = resume_state["training"].get("schedule", {}).get("epochs", args.epochs)
    schedule = schedule_record(args, iters_per_epoch=iters_per_epoch, warmup_iters=warmup_iters)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, warmup_iters=warmup_iters, iters_per_epoch=iters_per_epoch, args=args)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp)
    start_epoch, metrics, average_metrics = 0, None, None
    if resume_state is not None:
        training = resume_state["training"]
        notes = check_resume(training, schedule, resume_path)
        notes += restore(training, optimizer, scheduler, scaler, device)
        notes += _restore_average(average, training.get("weight_average"))
        start_epoch, metrics, average_metrics = (
            training["epoch"],
            training.get("metrics"),
            training.get("average_metrics"),
        )
        for note in notes:
            dist.log_main(f"warning: {note}")
        dist.log_main(f"resumed from {resume_path} at epoch {start_epoch}")
    global_batch = args.batch_size * dist.world()
    # What --lr meant depends on the code's version; the rate and batch themselves travel with the model.
    detector.provenance.update(peak_lr=peak_lr, global_batch=global_batch)
    dist.log_main(
        f"peak lr {peak_lr:.4g}: --lr {args.lr:g} for {REFERENCE_BATCH} images, scaled to {global_batch} per step "
        f"({args.batch_size} x {dist.world()} process{'es' if dist.world() > 1 else ''})"
    )
    log = _JsonLog(args.output_dir / "log.jsonl") if dist.is_main() else None
    if log:
        log.write({"start_epoch": start_epoch, "peak_lr": peak_lr, "global_batch": global_batch} | schedule)
    epoch = start_epoch
    while epoch < args.epochs:  # not range(): --time-budget sets args.epochs after the first epoch
        set_epoch(loader, epoch)
        epoch_started = time.monotonic()
        train_one_epoch(model, loader, optimizer, scheduler, scaler, epoch, iters_per_epoch, device, args, log, average)
        if args.time_budget and epoch == 0:
            _fit_to_budget(
                args, schedule, elapsed_s=time.monotonic() - started, epoch_s=time.monotonic() - epoch_started, log=log
            )
        last = epoch + 1 == args.epochs
        if (args.eval_every and (epoch + 1) % args.eval_every == 0) or last:
            metrics = evaluate(detector, val_set, args.batch_size, progress=not args.no_progress)
            if average is not None:
                average_metrics = evaluate(average.network, val_set, args.batch_size, progress=not args.no_progress)
            if log:
                log.write(
                    {"epoch": epoch + 1, "eval": metrics} | ({"eval_average": average_metrics} if average else {})
                )
                dist.log_main(
                    f"epoch {epoch + 1}: {_summary(metrics)}"
                    + (f"; averaged weights {_summary(average_metrics)}" if average else "")
                )
        state = training_state(
            optimizer, scheduler, scaler, epoch=epoch + 1, metrics=metrics, schedule=schedule, device=device
        )
        if state is not None:  # rank 0
            if average is not None:
                state |= {"weight_average": average.state_dict(), "average_metrics": average_metrics}
            detector.provenance.update(epochs=epoch + 1, metrics=metrics)
            save_checkpoint(detector, args.output_dir / "last.pt", training_state=state)
        epoch += 1
    if dist.is_main():
        detector.provenance["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        final = detector
        if average is not None:  # the average is what ships; last.pt keeps the last weights
            final = average.network
            final.provenance = detector.provenance | {
                "metrics": average_metrics,
                "weight_average": {"decay": average.decay, "updates": average.updates},
                "last_weights_metrics": metrics,
            }
        save_checkpoint(final, args.output_dir / "final.pt")
        dist.log_main(f"wrote {args.output_dir / 'final.pt'}")
    dist.barrier()
    dist.shutdown()
    return 0


def _fit_to_budget(args: argparse.Namespace, schedule: dict, *, elapsed_s: float, epoch_s: float, log) -> None:
    """Set the run's length (and the cosine it follows) from the first epoch's time; rank 0 decides for all."""
    fitted = fit_epochs(args.time_budget * 60, elapsed_s, epoch_s, done=1, most=args.epochs)
    args.epochs = schedule["epochs"] = dist.broadcast(fitted)
    dist.log_main(
        f"time budget {args.time_budget:g} min: the first epoch took {epoch_s:.0f} s, so {args.epochs} epochs"
    )
    if log:
        log.write({"time_budget_min": args.time_budget, "first_epoch_s": round(epoch_s, 1), "epochs": args.epochs})


def _provenance(args: argparse.Namespace, train_set: CocoDetectionDataset, val_set: CocoDetectionDataset) -> dict:
    """Where the model came from, without this machine's paths: files by name, the command by its arguments."""
    provenance = {
        "dataset": {"train": train_set.annotation_file.name, "val": val_set.annotation_file.name},
        "images": {"train": len(train_set), "val": len(val_set)},
        "command": "python -m tools.train " + " ".join(sys.argv[1:]),
    }
    if args.pretrained_backbone:
        provenance["backbone_weights"] = args.pretrained_backbone.name
    if args.init:
        provenance["init"] = args.init.name
    if args.teacher:
        provenance["teacher"] = {"weights": args.teacher.name, "min_score": args.teacher_score}
        if args.teacher_ignore_score is not None:
            provenance["teacher"]["ignore_score"] = args.teacher_ignore_score
        if args.teacher.suffix == ".xml":
            provenance["attribution"] = NANODET_ATTRIBUTION
    elif args.pretrained_backbone and args.pretrained_backbone.suffix == ".xml":
        provenance["attribution"] = NANODET_ATTRIBUTION
    return provenance


def _build_detector(config, args, train_set, val_set) -> Detector:
    weights = str(args.pretrained_backbone) if args.pretrained_backbone else None
    ir = weights if weights and args.pretrained_backbone.suffix == ".xml" else None
    try:
        return Detector(
            config,
            train_set.categories,
            backbone_weights=weights,
            neck_weights=ir if config.neck == "nanodet_m" else None,
            provenance=_provenance(args, train_set, val_set),
        )
    except (ConfigError, WeightsError):
        raise
    except ValueError as exc:  # a backbone name or activation the backbone registry does not know
        raise ConfigError(f"{config.name}: {exc}") from exc


def _load_init(detector: Detector, path: Path) -> None:
    """The weights of ``path`` into ``detector``: same network and categories; training-only fields (scales,
    trainable layers) may differ, which is what fine-tuning changes."""
    payload = read_checkpoint(path)
    if payload["categories"] != detector.categories.to_coco():
        raise CheckpointError(f"{path}: --init needs a checkpoint of the training set's categories")
    try:
        detector.model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: --init needs a checkpoint of the same network ({first})") from None


def _summary(metrics: dict) -> str:
    return f"AP {metrics['stats']['AP']:.4f} AP50 {metrics['stats']['AP50']:.4f}"


def _restore_average(average: WeightAverage | None, saved: dict | None) -> list[str]:
    """Load the saved weight average into ``average``; return warnings where the run and the checkpoint differ."""
    if average is None:
        return (
            ["the checkpoint kept a weight average; this run has no --weight-average, so it is dropped"]
            if saved
            else []
        )
    if saved is None:
        return ["the checkpoint kept no weight average: it starts afresh from the resumed weights"]
    average.load_state_dict(saved)
    if saved["decay"] != average.decay:
        return [f"the weight average was kept at decay {saved['decay']:g}; it goes on at {average.decay:g}"]
    return []


def _read_resume(path: Path, config: DetectorConfig) -> dict:
    payload = read_checkpoint(path)
    if "training" not in payload:
        raise CheckpointError(f"{path}: has no training state to resume from")
    if DetectorConfig.from_dict(payload["config"]) != config:
        raise CheckpointError(f"{path}: was trained with a different configuration than --config/--set give")
    return payload


class _JsonLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def write(self, record: dict) -> None:
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except (DatasetError, CheckpointError, WeightsError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
