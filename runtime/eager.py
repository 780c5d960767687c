"""The PyTorch engine: a ``.pt`` checkpoint run by ``Detector.predict`` (eager mode, channels-last on CPU)."""

from pathlib import Path

import numpy as np
import torch

from detector.checkpoint import CheckpointError, load_checkpoint, model_card

from .card import Detections, EngineError


class TorchEngine:
    name = "torch"

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        try:
            self.detector = load_checkpoint(path)
        except CheckpointError as exc:
            raise EngineError(str(exc)) from exc
        self.threads = threads
        self.card = model_card(self.detector)

    def predict(self, images: list[np.ndarray]) -> list[Detections]:
        # torch's thread count belongs to the calling thread's OpenMP team: set it where inference runs.
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        outputs = self.detector.predict([torch.from_numpy(image) for image in images])
        return [Detections(o["boxes"].numpy(), o["labels"].numpy(), o["scores"].numpy()) for o in outputs]

    def close(self) -> None:
        pass
