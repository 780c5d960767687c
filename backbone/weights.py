"""Reading and writing weights files locally and safely. Nothing here downloads anything."""

import os
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn


class WeightsError(ValueError):
    """A weights file that is missing, unreadable, or does not fit the model. The message says which."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path``: a bare state dict, or one under "state_dict"/"model" (training checkpoints)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({type(exc).__name__}: {exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: holds no state dict of tensors")
    # DDP wraps the model as `module`; its weights are still ours.
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True, ignore: Collection[str] = ()) -> None:
    """Load ``path`` into ``model``. Strict by default: any missing, unexpected or misshapen key is one error.

    ``ignore``: keys of the file to leave out, e.g. a classifier the model no longer has.
    """
    load_state(model, {k: v for k, v in read_state_dict(path).items() if k not in ignore}, source=path, strict=strict)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], *, source: str | Path, strict: bool = True) -> None:
    """Load ``state`` (read from ``source``) into ``model``; a misfit is one ``WeightsError`` naming the keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if misshapen or (strict and (missing or unexpected)):
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        raise WeightsError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=strict)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """``write`` into a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from other users (a container's app user)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: object, path: str | Path) -> None:
    """``torch.save`` atomically (see ``atomic_write``)."""
    atomic_write(path, lambda f: torch.save(obj, f))
