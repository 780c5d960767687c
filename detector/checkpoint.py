"""The checkpoint file: the one contract between training, evaluation and serving.

One ``torch.save`` file holds the weights, the full ``DetectorConfig``, the categories (names with their
dataset ids), and provenance (dataset, epochs, metrics, code version); training checkpoints also carry the
optimizer state under "training" so that ``--resume`` continues exactly. Saving is atomic.
"""

import subprocess
from collections.abc import Mapping
from pathlib import Path

import torch

from backbone.weights import atomic_save

from .card import ModelCard
from .categories import CategoryMap
from .complexity import detector_complexity
from .config import DEFAULT_CHECKPOINT, DetectorConfig
from .model import Detector

FORMAT = "shufflenet-detect/checkpoint-v1"
REPO = Path(__file__).resolve().parents[1]


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit; the message names the file and the problem."""


def code_version() -> str:
    """The git commit of this checkout when there is one (a source tree), else the package version."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shufflenet-detect")
    except PackageNotFoundError:
        return "unknown"


def save_checkpoint(detector: Detector, path: str | Path, *, training_state: dict | None = None) -> None:
    """Write ``detector`` (and, for resuming, ``training_state``) to ``path`` atomically."""
    provenance = {"code_version": code_version(), **detector.provenance}
    payload = {
        "format": FORMAT,
        "config": detector.config.to_dict(),
        "categories": detector.categories.to_coco(),
        "provenance": provenance,
        "state_dict": detector.model.state_dict(),
    }
    if training_state is not None:
        payload["training"] = training_state
    atomic_save(payload, path)


def read_checkpoint(path: str | Path) -> dict:
    """The raw payload of a checkpoint, validated; raises CheckpointError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(
            f"{path}: an ONNX export, not a checkpoint; give the .pt checkpoint it was exported from "
            "(exports run through runtime.load_engine, as the service does)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zips, pickles of other things, random bytes: all one problem to a user
        # torch's own message runs to paragraphs about pickling; its type is all that helps here.
        raise CheckpointError(
            f"{path}: not a readable checkpoint (expected a .pt file from python -m tools.train; torch.load "
            f"failed with {type(exc).__name__}: the file is truncated or not a torch file)"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a shufflenet-detect checkpoint (expected format {FORMAT!r})")
    for key in ("config", "categories", "state_dict"):
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint has no {key!r}")
    # Checkpoints from before the neck was configurable named their FPN "backbone.fpn".
    old = "backbone.fpn."
    payload["state_dict"] = {
        "backbone.neck." + k[len(old) :] if k.startswith(old) else k: v for k, v in payload["state_dict"].items()
    }
    return payload


def load_checkpoint(
    path: str | Path = DEFAULT_CHECKPOINT,
    *,
    device: str | torch.device = "cpu",
    config_overrides: Mapping[str, object] | None = None,
) -> Detector:
    """A ready ``Detector`` in eval mode on ``device``: configuration, categories and weights all from ``path``.

    ``config_overrides`` replaces configuration fields that do not shape the weights (e.g. the test short side
    ``min_size`` for evaluation at another size); the detector's ``config`` then says what it runs.
    """
    payload = read_checkpoint(path)
    try:
        config = DetectorConfig.from_dict({**payload["config"], **(config_overrides or {})})
        categories = CategoryMap.from_coco(payload["categories"])
        detector = Detector(config, categories, provenance=payload.get("provenance"))
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: its configuration does not build a detector: {exc}") from exc
    try:
        detector.model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: weights do not fit its configuration: {' '.join(first[:3])}") from exc
    detector = detector.to(device).eval()
    return detector.channels_last() if torch.device(device).type == "cpu" else detector


def model_card(detector: Detector) -> ModelCard:
    """The card of a loaded detector; counting its cost runs one image through a fresh copy of the network."""
    cost = detector_complexity(detector.config, detector.categories)
    cost = {key: cost[key] for key in ("input_size", "macs", "macs_by_part", "params")}
    return ModelCard(detector.config, detector.categories, cost, dict(detector.provenance))
