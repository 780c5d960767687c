"""The parts of a training run: the learning rate of a global batch, its schedule, the optimizer, one epoch, and
the state that lets a run resume where it stopped.

``python -m tools.train`` puts them together with the data and the evaluation. Resuming needs more than the
weights and the optimizer: every rank's random state (CPU and CUDA: scale choices, flips and RoI samples go on
as if never stopped) and the arguments that place each step on the schedule, checked against the new run.
"""

import argparse
import copy
import math
import time

import torch
from torch import nn
from tqdm import tqdm

from . import distributed as dist
from .checkpoint import CheckpointError

# --lr is the peak rate for this many images per step (torchvision's 0.02 is for 16 images: 8 GPUs x 2).
REFERENCE_BATCH = 16
# What places a step on the schedule, besides the process count, steps per epoch and warmup: a resumed run must
# give the same. Step decay does not depend on the run's length, so a step-schedule run may be extended.
SCHEDULE_ARGS = {
    "step": ("optimizer", "lr", "batch_size", "schedule", "lr_steps", "lr_gamma"),
    "cosine": ("optimizer", "lr", "batch_size", "schedule", "epochs"),
}


def scaled_lr(lr: float, batch_size: int, world_size: int) -> float:
    """The peak rate for ``batch_size`` images per process on ``world_size`` processes, ``lr`` being the rate
    for ``REFERENCE_BATCH`` images: linear in the global batch (Goyal et al., 2017), so that changing the number
    of processes or the batch per process keeps the rate per image."""
    return lr * batch_size * world_size / REFERENCE_BATCH


def lr_factor(iteration: int, *, warmup_iters: int, iters_per_epoch: int, args: argparse.Namespace) -> float:
    """Multiplier of the peak lr at ``iteration``: linear warmup, then step decay or cosine to zero."""
    warmup = 1.0
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        warmup = 1e-3 * (1 - alpha) + alpha
    if args.schedule == "step":
        epoch = iteration // iters_per_epoch
        return warmup * args.lr_gamma ** sum(epoch >= s for s in args.lr_steps)
    total = args.epochs * iters_per_epoch
    return warmup * 0.5 * (1 + math.cos(math.pi * min(iteration, total) / total))


def parameter_groups(model: nn.Module, lr: float, backbone_lr_factor: float = 1.0) -> list[dict]:
    """The trainable parameters as optimizer groups: the backbone's body at ``lr * backbone_lr_factor`` (a
    pretrained body learns slower than the new neck and heads), everything else at ``lr``."""
    body, rest = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (body if name.startswith("backbone.body.") else rest).append(parameter)
    groups = [{"params": rest, "lr": lr}, {"params": body, "lr": lr * backbone_lr_factor}]
    return [group for group in groups if group["params"]]


def build_optimizer(params: list[dict], lr: float, args: argparse.Namespace) -> torch.optim.Optimizer:
    """``params``: parameter groups (``parameter_groups``), each with its own peak rate."""
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)


def seed_rank(seed: int) -> None:
    """Seed this process's CPU and CUDA generators for its rank: every rank draws its own scale choices, flips
    and RoI samples (the same seed on every rank would make them draw alike)."""
    torch.manual_seed(seed + dist.rank())


def schedule_record(args: argparse.Namespace, *, iters_per_epoch: int, warmup_iters: int) -> dict:
    """What places each step on the schedule, as a resumed run must give it again."""
    record = {name: getattr(args, name) for name in SCHEDULE_ARGS[args.schedule]}
    if args.backbone_lr_factor != 1.0:  # recorded only when set, so older checkpoints still resume
        record["backbone_lr_factor"] = args.backbone_lr_factor
    if args.repeat_threshold is not None:  # recorded only when set, as above
        record["repeat_threshold"] = args.repeat_threshold
    peak = scaled_lr(args.lr, args.batch_size, dist.world())
    steps = {"iters_per_epoch": iters_per_epoch, "warmup_iters": warmup_iters}
    return record | steps | {"world_size": dist.world(), "peak_lr": peak}


def fit_epochs(budget_s: float, elapsed_s: float, epoch_s: float, *, done: int, most: int) -> int:
    """How many epochs a run fits in a wall-clock budget, once ``done`` epochs took ``epoch_s`` seconds each and
    ``elapsed_s`` have gone (setup included); at least ``done``, at most ``most``. A tenth of what remains is kept
    spare: evaluations and the last checkpoint are not in ``epoch_s``."""
    more = int(0.9 * (budget_s - elapsed_s) / epoch_s) if epoch_s > 0 else most
    return max(done, min(most, done + more))


def rng_state(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def training_state(optimizer, scheduler, scaler, *, epoch: int, metrics, schedule: dict, device) -> dict | None:
    """What ``last.pt`` holds besides the model, on rank 0 (None on the others, which only send their RNG)."""
    rngs = dist.gather(rng_state(device))  # a collective: every rank calls it
    if rngs is None:
        return None
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "metrics": metrics,
        "schedule": schedule,
        "rng": rngs,  # one per rank, in rank order
    }


def check_resume(training: dict, schedule: dict, path) -> list[str]:
    """Raise ``CheckpointError`` when this run would put the saved steps elsewhere on the schedule; return
    warnings for what an older checkpoint cannot tell (it recorded no schedule, process count or per-rank RNG)."""
    saved = training.get("schedule")
    if saved is not None:
        differ = [k for k in {**saved, **schedule} if saved.get(k) != schedule.get(k)]
        if differ:
            was = ", ".join(f"{k} {saved.get(k)}" for k in differ)
            now = ", ".join(f"{k} {schedule.get(k)}" for k in differ)
            raise CheckpointError(
                f"{path}: was trained with {was}; this run has {now}, which moves the step schedule "
                "(resume with the same arguments and process count, or start a new --output-dir)"
            )
        return []
    # Older checkpoints: the scheduler's step count and peak rate still tell the steps per epoch and the rate.
    scheduler = training["scheduler"]
    steps = scheduler["last_epoch"] / max(training["epoch"], 1)
    if steps != schedule["iters_per_epoch"]:
        raise CheckpointError(
            f"{path}: took {steps:g} steps per epoch; this run takes {schedule['iters_per_epoch']} "
            "(another batch size or process count moves the step schedule)"
        )
    if not math.isclose(scheduler["base_lrs"][0], schedule["peak_lr"], rel_tol=1e-6):
        raise CheckpointError(
            f"{path}: was trained at peak lr {scheduler['base_lrs'][0]:.4g}; this run gives {schedule['peak_lr']:.4g}"
        )
    return [
        f"{path} predates the resume checks: it records no schedule arguments or process count (the steps per "
        "epoch and the peak lr agree) and one random state for all ranks (restored on rank 0 only)"
    ]


def restore(training: dict, optimizer, scheduler, scaler, device: torch.device) -> list[str]:
    """Load the optimizer, schedule, loss scale and this rank's RNG from ``training``; return warnings."""
    notes = []
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    if scaler.is_enabled() and training.get("scaler"):
        scaler.load_state_dict(training["scaler"])
    elif scaler.is_enabled():
        notes.append("the checkpoint was trained without --amp: the loss scale starts afresh")
    elif training.get("scaler"):
        notes.append("the checkpoint was trained with --amp; this run has none, so its loss scale is dropped")
    rngs = training.get("rng")
    if rngs is not None:
        if len(rngs) != dist.world():  # check_resume has compared the process counts; this guards the index
            raise CheckpointError(f"the checkpoint holds the random state of {len(rngs)} ranks, not {dist.world()}")
        torch.set_rng_state(rngs[dist.rank()]["cpu"])
        if device.type == "cuda" and rngs[dist.rank()]["cuda"] is not None:
            torch.cuda.set_rng_state(rngs[dist.rank()]["cuda"], device)
    elif "torch_rng" in training and dist.is_main():  # older checkpoints: rank 0's CPU state only
        torch.set_rng_state(training["torch_rng"])
    return notes


class WeightAverage:
    """An exponential moving average of a network's weights, updated after every optimizer step (the "model EMA"
    of YOLOX and NanoDet): it evens out the noise of the last steps, so it is evaluated and shipped in their
    place. ``network`` is the one being trained (not its DistributedDataParallel wrapper); the average is a copy.

    The decay ramps up from 0 (``decay * (1 - exp(-updates / ramp))``) so the first steps' random head does not
    linger in the average. YOLOX ramps over 2,000 steps in runs of 100,000s; a run here has a few thousand, so
    the default ramp is 200 (the full decay, to 0.1%, after 1,400 steps). Buffers that are not floats (counters)
    are copied, not averaged.
    """

    def __init__(self, network: nn.Module, decay: float, ramp: int = 200) -> None:
        self.source = network
        self.network = copy.deepcopy(network).eval().requires_grad_(False)
        self.decay, self.ramp, self.updates = decay, ramp, 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = self.decay * (1 - math.exp(-self.updates / self.ramp))
        current = self.source.state_dict()
        for name, average in self.network.state_dict().items():
            if average.dtype.is_floating_point:
                average.lerp_(current[name].detach(), 1 - decay)
            else:
                average.copy_(current[name])

    def state_dict(self) -> dict:
        return {"weights": self.network.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.network.load_state_dict(state["weights"])
        self.updates = state["updates"]


def train_one_epoch(model, loader, optimizer, scheduler, scaler, epoch, iters, device, args, log, average=None) -> None:
    """One pass over ``loader`` (at most ``iters`` steps); ``average``, a ``WeightAverage``, follows every step."""
    bar = tqdm(total=iters, desc=f"epoch {epoch + 1}/{args.epochs}", disable=args.no_progress or not dist.is_main())
    seen, started = 0, time.perf_counter()
    for step, (images, targets) in enumerate(loader):
        if step >= iters:
            break
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        with torch.autocast("cuda", enabled=args.amp):
            losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1} step {step}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if args.clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if average is not None:
            average.update()
        seen += len(images) * dist.world()
        rate = seen / (time.perf_counter() - started)
        lr = optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
        bar.update()
        if log and (step % 20 == 0 or step + 1 == iters):
            log.write(
                {"epoch": epoch + 1, "step": step, "lr": lr, "loss": loss.item(), "images_per_s": round(rate, 2)}
                | {k: round(v.item(), 5) for k, v in losses.items()}
            )
    bar.close()
