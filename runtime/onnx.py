"""The ONNX Runtime engine: a ``.onnx`` file written by ``python -m tools.export``, run without torch.

The graph is the whole torchvision Faster R-CNN for one image of any size (its resize, normalisation, RPN,
RoI heads and box decoding), so the detections are PyTorch's. A batch is spread over ``threads``
single-threaded runs of one session (on 2 cores the edge model did 23.9 ms/image this way against 34.8 ms
for one two-threaded run after another); a lone image gets a session with all the threads, for latency.
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from detector.card import CARD_KEY, INPUT, OUTPUTS, ModelCard

from .card import Detections, EngineError

ort.disable_telemetry_events()  # an edge box reports to nobody


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle ORT threads spin by default, taking the cores that decoding and the other session need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def card_of(session: ort.InferenceSession, path: Path) -> ModelCard:
    """The model card in an export's metadata; an error that says what to do when there is none."""
    metadata = session.get_modelmeta().custom_metadata_map
    if CARD_KEY not in metadata:
        raise EngineError(f"{path}: an ONNX file without a model card; export it with python -m tools.export")
    try:
        return ModelCard.from_json(metadata[CARD_KEY])
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineError(f"{path}: its model card does not describe a detector: {exc}") from exc


def read_card(path: str | Path) -> ModelCard:
    """The model card of the export at ``path`` (for engines that do not read ONNX metadata themselves)."""
    try:
        session = _session(Path(path), 1)
    except Exception as exc:
        raise EngineError(f"{path}: not a loadable ONNX model: {str(exc).strip().splitlines()[0]}") from exc
    return card_of(session, Path(path))


class OnnxEngine:
    name = "onnxruntime"

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"{path}: no such model file")
        try:
            self._lone = _session(path, threads)
            self._each = _session(path, 1) if threads > 1 else self._lone
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/InvalidGraph types
            raise EngineError(f"{path}: not a loadable ONNX model: {str(exc).strip().splitlines()[0]}") from exc
        self.card = card_of(self._lone, path)
        names = [i.name for i in self._lone.get_inputs()], [o.name for o in self._lone.get_outputs()]
        if names != ([INPUT], OUTPUTS):
            raise EngineError(f"{path}: expected input {INPUT!r} and outputs {OUTPUTS}, found {names}")
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, "onnxruntime") if threads > 1 else None

    def predict(self, images: list[np.ndarray]) -> list[Detections]:
        if len(images) == 1 or self._pool is None:
            return [self._run(self._lone, image) for image in images]
        return list(self._pool.map(lambda image: self._run(self._each, image), images))

    @staticmethod
    def _run(session: ort.InferenceSession, image: np.ndarray) -> Detections:
        boxes, labels, scores = session.run(OUTPUTS, {INPUT: np.ascontiguousarray(image, dtype=np.float32)})
        return Detections(boxes, labels, scores)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
