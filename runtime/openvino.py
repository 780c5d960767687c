"""The OpenVINO engine: the same ``.onnx`` export that ONNX Runtime serves, run by Intel's OpenVINO runtime.

OpenVINO reads the export directly (no conversion step) and needs no torch. Inference is pinned to float32:
its CPU plugin otherwise drops to bfloat16 where the processor has it, which moves scores by about 1e-2. A lone
image runs on all the threads; a batch runs as one single-threaded stream per thread, side by side, as the
ONNX Runtime engine does.
"""

from pathlib import Path

import numpy as np

from .card import Detections, EngineError
from .onnx import INPUT, OUTPUTS, read_card


class OpenVinoEngine:
    name = "openvino"

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise EngineError(f"{path}: the openvino engine needs the openvino package ({exc})") from exc
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"{path}: no such model file")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except RuntimeError as exc:
            raise EngineError(f"{path}: not a model OpenVINO can read: {str(exc).strip().splitlines()[0]}") from exc
        names = [i.get_any_name() for i in model.inputs], [o.get_any_name() for o in model.outputs]
        if names != ([INPUT], OUTPUTS):
            raise EngineError(f"{path}: expected input {INPUT!r} and outputs {OUTPUTS}, found {names}")
        self.card = read_card(path)  # OpenVINO does not keep ONNX's metadata
        precision = {"INFERENCE_PRECISION_HINT": "f32"}
        self._lone = core.compile_model(model, "CPU", {**precision, "INFERENCE_NUM_THREADS": threads})
        self._queue = None
        if threads > 1:
            streams = core.compile_model(
                model, "CPU", {**precision, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": threads}
            )
            self._queue = ov.AsyncInferQueue(streams, threads)
        self.threads = threads

    def predict(self, images: list[np.ndarray]) -> list[Detections]:
        if len(images) == 1 or self._queue is None:
            return [
                self._detections(self._lone({0: np.ascontiguousarray(image, dtype=np.float32)})) for image in images
            ]
        results: list[Detections | None] = [None] * len(images)

        def done(request, index: int) -> None:
            results[index] = self._detections([request.get_output_tensor(i).data.copy() for i in range(3)])

        self._queue.set_callback(done)
        for index, image in enumerate(images):
            self._queue.start_async({0: np.ascontiguousarray(image, dtype=np.float32)}, index)
        self._queue.wait_all()
        return results  # type: ignore[return-value]

    @staticmethod
    def _detections(outputs) -> Detections:
        boxes, labels, scores = (outputs[i] for i in range(3))
        return Detections(np.asarray(boxes), np.asarray(labels).astype(np.int64), np.asarray(scores))

    def close(self) -> None:
        self._queue = None
