"""ImageNet-style classification pretraining of a registered backbone: ``python -m backbone.train``.

``--data`` is an ImageFolder root with ``train/`` and ``val/`` (one subfolder per class, same classes in both).
Every epoch, rank 0 writes to ``--output-dir``:

- ``last.pt``: model, optimizer, scheduler, scaler and the number of finished epochs (what ``--resume`` reads);
- ``backbone.pt``: the bare model state dict, for ``create_backbone(arch, num_classes=..., weights=...)`` and the
  detector's ``--pretrained-backbone`` (which builds with 1000 classes: the head must be ImageNet's to fit);
- ``log.jsonl``: one JSON object per epoch (train loss, lr, val loss, top-1/top-5 in percent, images/s).

Several GPUs or nodes: ``torchrun --nproc-per-node N -m backbone.train ...`` (``--batch-size`` is per process).
"""

import argparse
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchvision import datasets, transforms
from tqdm import tqdm

from .cli import HelpFormatter
from .registry import BACKBONES, create_backbone
from .weights import atomic_save

PROG = "python -m backbone.train"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAPER_LR, PAPER_BATCH = 0.5, 1024  # ShuffleNet: lr 0.5 at batch 1024, decayed linearly to 0


class UsageError(Exception):
    """Bad input the user can fix; reported as one line on stderr with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block: the message says what to fix
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Classification pretraining of a ShuffleNet backbone on an ImageFolder.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="ImageFolder root holding train/ and val/")
    p.add_argument("--arch", required=True, metavar="NAME", help="a backbone name, e.g. shufflenet_v1_g3_1x")
    p.add_argument("--epochs", type=int, default=240, help="the paper's 3e5 iterations at batch 1024 are ~240")
    p.add_argument("--batch-size", type=int, default=256, help="images per process and step")
    p.add_argument("--lr", type=float, default=None, help="peak lr; None: 0.5 * global batch / 1024 (the paper's)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    p.add_argument("--weight-decay", type=float, default=4e-5, help="on conv and linear weights only")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="of the training loss")
    p.add_argument("--schedule", choices=("linear", "cosine"), default="linear", help="per-step decay to 0")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear lr warmup from 0")
    p.add_argument("--image-size", type=int, default=224, help="side of the train and val crops")
    p.add_argument("--workers", type=int, default=8, help="data-loading processes per training process")
    p.add_argument("--output-dir", type=Path, default=None, help="None: runs/backbone/<arch>")
    p.add_argument("--resume", action="store_true", help="continue from <output-dir>/last.pt")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--amp", action="store_true", help="float16 autocast (CUDA only)")
    p.add_argument("--limit-steps", type=int, default=None, help="cap train and val batches per epoch (smoke runs)")
    p.add_argument("--seed", type=int, default=0, help="torch seed (plus the process rank)")
    p.add_argument("--threads", type=int, help="torch threads per process (default: torch's choice)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Raise UsageError naming the first bad argument; fill in the documented defaults."""
    if args.arch not in BACKBONES:
        raise UsageError(f"unknown --arch {args.arch!r}; known: {', '.join(BACKBONES)}")
    for flag in ("epochs", "batch_size", "image_size", "limit_steps", "lr", "threads"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    for flag in ("workers", "warmup_epochs", "weight_decay"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag.replace('_', '-')} must not be negative, got {getattr(args, flag)}")
    if not 0 <= args.momentum < 1 or not 0 <= args.label_smoothing < 1:
        raise UsageError(
            f"--momentum and --label-smoothing must be in [0, 1), got {args.momentum}, {args.label_smoothing}"
        )
    if args.nesterov and args.momentum == 0:
        raise UsageError("--nesterov needs a positive --momentum")
    if args.warmup_epochs >= args.epochs:
        raise UsageError(f"--warmup-epochs ({args.warmup_epochs}) must be less than --epochs ({args.epochs})")
    if args.image_size < 32:
        raise UsageError(f"--image-size must be at least 32 (the backbone's stride), got {args.image_size}")
    for path in (args.data, args.data / "train", args.data / "val"):
        if not path.is_dir():
            raise UsageError(f"--data: no such directory: {path}")
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UsageError(f"--device {args.device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available here")
    if args.amp and device.type != "cuda":
        raise UsageError("--amp needs a CUDA --device")
    if args.output_dir is None:
        args.output_dir = Path("runs") / "backbone" / args.arch
    if args.resume and not (args.output_dir / "last.pt").is_file():
        raise UsageError(f"--resume: no checkpoint at {args.output_dir / 'last.pt'}")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_arg: str) -> tuple[Dist, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    device = torch.device(device_arg)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(), device
    info = Dist(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def build_datasets(root: Path, image_size: int) -> tuple[datasets.ImageFolder, datasets.ImageFolder]:
    """RandomResizedCrop + flip for training; resize to size / 0.875 and centre-crop for validation."""
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    val_tf = transforms.Compose(
        [
            transforms.Resize(int(image_size / 0.875)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            normalize,
        ]
    )
    try:
        train, val = datasets.ImageFolder(root / "train", train_tf), datasets.ImageFolder(root / "val", val_tf)
    except FileNotFoundError as exc:  # ImageFolder's "no class folder" / "no valid file" messages name the folder
        raise UsageError(f"--data: {exc}") from None
    if train.classes != val.classes:
        raise UsageError(f"--data: train/ has {len(train.classes)} classes and val/ {len(val.classes)}, or they differ")
    return train, val


def build_loaders(
    train: datasets.ImageFolder, val: datasets.ImageFolder, args: argparse.Namespace, info: Dist, device: torch.device
) -> tuple[DataLoader, DataLoader]:
    if len(train) < args.batch_size * info.world_size:
        raise UsageError(f"--data: train/ has {len(train)} images, fewer than one global batch")
    # Validation shards without DistributedSampler's padding, so each image is counted exactly once.
    val_part = Subset(val, range(info.rank, len(val), info.world_size)) if info.world_size > 1 else val
    sampler = DistributedSampler(train, info.world_size, info.rank, shuffle=True) if info.world_size > 1 else None
    common = dict(num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    train_loader = DataLoader(
        train, args.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True, **common
    )
    return train_loader, DataLoader(val_part, args.batch_size, **common)


def build_optimizer(
    model: nn.Module, *, lr: float, momentum: float, weight_decay: float, nesterov: bool = False
) -> torch.optim.SGD:
    """SGD; BN affine parameters and biases (the 1-d tensors) get no weight decay, as in the authors' code."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak lr before optimizer step ``step`` (0-based): warmup, then decay to 0 at the end."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, schedule: str, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration (the paper decays per iteration, not per epoch)."""

    def factor(step: int) -> float:
        return lr_factor(step, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_step(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
) -> Tensor:
    """One forward/backward/update on (N, 3, H, W) normalized images and (N,) class indices; returns the loss."""
    use_amp = scaler is not None and scaler.is_enabled()
    with torch.autocast(images.device.type, enabled=use_amp):
        loss = criterion(model(images), targets)
    optimizer.zero_grad(set_to_none=True)
    if use_amp:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach()


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


@dataclass
class TrainState:
    """What a checkpoint restores. ``model`` is the bare network (never the DDP wrapper), so keys carry no prefix."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler


def train_one_epoch(
    net: nn.Module, loader: DataLoader, criterion: nn.Module, ts: TrainState, *, epoch: int, args, info: Dist
) -> dict:
    """One pass over ``loader`` (at most ``--limit-steps`` batches) with ``net``, the model or its DDP wrapper."""
    net.train()
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    device = next(ts.model.parameters()).device
    steps = min(len(loader), args.limit_steps or len(loader))
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not info.is_main, dynamic_ncols=True)
    loss_sum, seen, start = torch.zeros((), device=device), 0, time.perf_counter()
    for step, (images, targets) in enumerate(itertools.islice(loader, steps)):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        loss = train_step(net, images, targets, criterion, ts.optimizer, ts.scaler)
        ts.scheduler.step()
        loss_sum += loss.float() * len(targets)
        seen += len(targets)
        bar.update()
        if step % 10 == 0 or step == steps - 1:  # .item() waits for the GPU, so not every step
            speed = seen * info.world_size / (time.perf_counter() - start)
            lr = ts.scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4g}", img_s=f"{speed:.0f}")
    bar.close()
    elapsed = time.perf_counter() - start
    total_loss, total_seen = _all_sum([loss_sum.item(), seen], device)
    return {
        "train_loss": total_loss / total_seen,
        "lr": ts.scheduler.get_last_lr()[0],
        "images_per_s": round(total_seen / elapsed, 1),
    }


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, device: torch.device, limit: int | None = None) -> dict:
    """Val loss (no smoothing) and top-1/top-5 in percent, summed over every process's shard.

    With fewer than 5 classes, "top5" is top-k over all classes (100%).
    """
    model.eval()
    totals = [0.0, 0.0, 0.0, 0.0]  # loss sum, top-1 hits, top-5 hits, images
    for images, targets in itertools.islice(loader, limit):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(images)
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices == targets[:, None]
        totals[0] += nn.functional.cross_entropy(logits.float(), targets, reduction="sum").item()
        totals[1] += hits[:, 0].sum().item()
        totals[2] += hits.any(dim=1).sum().item()
        totals[3] += len(targets)
    loss, top1, top5, n = _all_sum(totals, device)
    n = max(n, 1.0)
    return {"val_loss": loss / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n}


def save_checkpoint(out_dir: Path, ts: TrainState, *, epoch: int, extra: dict) -> None:
    """``last.pt`` (everything ``--resume`` needs) and ``backbone.pt`` (the model's own state dict, on CPU)."""
    weights = {k: v.detach().cpu() for k, v in ts.model.state_dict().items()}
    state = {
        "model": weights,
        "optimizer": ts.optimizer.state_dict(),
        "scheduler": ts.scheduler.state_dict(),
        "scaler": ts.scaler.state_dict(),
        "epoch": epoch,  # finished epochs
        **extra,
    }
    atomic_save(state, out_dir / "last.pt")
    atomic_save(weights, out_dir / "backbone.pt")


def load_checkpoint(path: Path, ts: TrainState, *, arch: str, classes: list[str]) -> int:
    """Restore a ``last.pt`` into ``ts``; returns the number of finished epochs."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("arch") != arch:
        raise UsageError(f"--resume: {path} holds a {state.get('arch')}, not --arch {arch}")
    if state.get("classes") != classes:
        raise UsageError(f"--resume: {path} was trained on other classes than those in --data")
    ts.model.load_state_dict(state["model"])
    ts.optimizer.load_state_dict(state["optimizer"])
    ts.scheduler.load_state_dict(state["scheduler"])
    if ts.scaler.is_enabled() and state["scaler"]:  # a run started without --amp has no scaler state
        ts.scaler.load_state_dict(state["scaler"])
    return int(state["epoch"])


def build_state(args: argparse.Namespace, num_classes: int, steps_per_epoch: int, info: Dist, device) -> TrainState:
    model = create_backbone(args.arch, num_classes=num_classes).to(device)
    lr = args.lr or PAPER_LR * args.batch_size * info.world_size / PAPER_BATCH
    optimizer = build_optimizer(
        model, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay, nesterov=args.nesterov
    )
    scheduler = build_scheduler(
        optimizer,
        schedule=args.schedule,
        total_steps=args.epochs * steps_per_epoch,
        warmup_steps=round(args.warmup_epochs * steps_per_epoch),
    )
    return TrainState(model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=args.amp))


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    info, device = init_distributed(args.device)
    torch.manual_seed(args.seed + info.rank)
    torch.backends.cudnn.benchmark = True
    train_set, val_set = build_datasets(args.data, args.image_size)
    train_loader, val_loader = build_loaders(train_set, val_set, args, info, device)
    steps_per_epoch = min(len(train_loader), args.limit_steps or len(train_loader))
    ts = build_state(args, len(train_set.classes), steps_per_epoch, info, device)
    start = 0
    if args.resume:
        start = load_checkpoint(args.output_dir / "last.pt", ts, arch=args.arch, classes=train_set.classes)
    net = ts.model
    if info.world_size > 1:
        net = DistributedDataParallel(ts.model, device_ids=[device] if device.type == "cuda" else None)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    extra = {
        "arch": args.arch,
        "classes": train_set.classes,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    if info.is_main:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        tqdm.write(
            f"{args.arch}: {len(train_set)} train / {len(val_set)} val images in {len(train_set.classes)} classes, "
            f"{info.world_size} process(es), peak lr {ts.scheduler.base_lrs[0]:.4g}, epochs {start + 1}..{args.epochs}"
        )
    if start >= args.epochs and info.is_main:
        tqdm.write(f"{args.output_dir / 'last.pt'} already has {start} epochs; raise --epochs to train more")
    for epoch in range(start, args.epochs):
        begin = time.time()
        record = {"epoch": epoch + 1}
        record |= train_one_epoch(net, train_loader, criterion, ts, epoch=epoch, args=args, info=info)
        # The bare model: shards differ in length, and a DDP forward must not wait for the other processes.
        record |= evaluate(ts.model, val_loader, device=device, limit=args.limit_steps)
        record["epoch_time_s"] = round(time.time() - begin, 2)
        if info.is_main:
            save_checkpoint(args.output_dir, ts, epoch=epoch + 1, extra={**extra, "metrics": record})
            with open(args.output_dir / "log.jsonl", "a") as log:
                log.write(json.dumps(record) + "\n")
            tqdm.write(
                f"epoch {epoch + 1}: loss {record['train_loss']:.4f}  top-1 {record['top1']:.2f}%  "
                f"top-5 {record['top5']:.2f}%  ({record['epoch_time_s']:.0f} s)"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
        return run(args)
    except UsageError as exc:
        parser.error(str(exc))
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 2  # unreachable: parser.error exits


if __name__ == "__main__":
    sys.exit(main())
