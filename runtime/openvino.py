"""The OpenVINO engine: the same ``.onnx`` export that ONNX Runtime serves, run by Intel's OpenVINO runtime.

OpenVINO reads the export directly (no conversion step) and needs no torch. Inference is pinned to float32:
its CPU plugin otherwise drops to bfloat16 where the processor has it, which moves scores by about 1e-2. A lone
image runs on all the threads; a batch runs as one single-threaded stream per thread, side by side, as the
ONNX Runtime engine does.

The export takes any image size, but OpenVINO runs a graph compiled for one input shape about a third faster
(the COCO model on 16 coco128 photos: 11.5 against 17.0 ms an image at batch 1, 2 threads), because it plans
its memory layouts once. So an input shape seen twice gets a graph of its own (half a second to compile, about
40 MB, and 55 MB more once it has run a batch), for the first ``static_shapes`` shapes that recur: a camera's
frames all share one shape. Later shapes stay on the shape-agnostic graph, so a client that sends ever new
shapes costs at most ``static_shapes`` compiles in the engine's life. The detections are the same either way.

Photos come in many sizes (the first 16 of coco128 in 11 at the COCO model's input), but the network pads every
input to a multiple of 32 before its backbone. The engine does that padding itself, with the normalisation's mean
(which the network's normalisation turns into the zeros it pads with), wherever the network would not resize the
padded image: so photos of one aspect ratio share a shape and a graph (those 11 are 6 shapes, and 4 graphs cover
14 of the 16). The backbone sees what it saw unpadded; proposals may now reach into the padding, and boxes are
clipped back to the image: on coco128 the COCO model's AP is 0.169 padded against 0.168 unpadded.
"""

from collections import OrderedDict
from pathlib import Path

import numpy as np

from detector.config import input_scale

from .card import Detections, EngineError
from .onnx import INPUT, OUTPUTS, read_card

_SIGHTINGS_BEFORE_COMPILE = 2
_SHAPES_REMEMBERED = 256  # sightings are counted for this many recent shapes (a bounded memory)
_SIZE_DIVISIBLE = 32  # torchvision's GeneralizedRCNNTransform pads every batch to a multiple of this


class _Compiled:
    """One graph (shape-agnostic or for one input shape), compiled for a lone image and, at once with
    ``batches_now`` or else when first needed, for batches as one single-threaded stream per thread."""

    def __init__(self, core, model, threads: int, *, batches_now: bool = False) -> None:
        self._core, self._model, self._threads = core, model, threads
        self._config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
        self.lone = core.compile_model(model, "CPU", self._config)
        self._queue = None
        if batches_now:
            self.queue  # noqa: B018 (compiles it)

    @property
    def queue(self):
        if self._queue is None:
            import openvino as ov

            streams = self._core.compile_model(self._model, "CPU", {**self._config, "NUM_STREAMS": self._threads})
            self._queue = ov.AsyncInferQueue(streams, self._threads)
        return self._queue


class OpenVinoEngine:
    name = "openvino"

    def __init__(self, path: str | Path, *, threads: int = 1, static_shapes: int = 4) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise EngineError(f"{path}: the openvino engine needs the openvino package ({exc})") from exc
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"{path}: no such model file")
        self._core = ov.Core()
        try:
            model = self._core.read_model(str(path))
        except RuntimeError as exc:
            raise EngineError(f"{path}: not a model OpenVINO can read: {str(exc).strip().splitlines()[0]}") from exc
        names = [i.get_any_name() for i in model.inputs], [o.get_any_name() for o in model.outputs]
        if names != ([INPUT], OUTPUTS):
            raise EngineError(f"{path}: expected input {INPUT!r} and outputs {OUTPUTS}, found {names}")
        self.card = read_card(path)  # OpenVINO does not keep ONNX's metadata
        self.threads = threads
        config = self.card.config
        self._sizes = config.min_size, config.max_size
        self._fill = np.asarray(config.image_mean, dtype=np.float32)[:, None, None]
        self._model = model
        # The shape-agnostic graph's streams are compiled now, so that no request waits for them; a shape's
        # own only when a batch of that shape comes (most shapes of a camera's stream arrive one at a time).
        self._any_shape = _Compiled(self._core, model, threads, batches_now=threads > 1)
        self._static_shapes = static_shapes
        self._by_shape: dict[tuple[int, ...], _Compiled] = {}
        self._sightings: OrderedDict[tuple[int, ...], int] = OrderedDict()

    @property
    def compiled_shapes(self) -> list[tuple[int, ...]]:
        """The input shapes that have a graph of their own, in the order they got it."""
        return list(self._by_shape)

    def _graph_for(self, shape: tuple[int, ...]) -> _Compiled:
        if shape in self._by_shape:
            return self._by_shape[shape]
        if len(self._by_shape) >= self._static_shapes:
            return self._any_shape
        self._sightings[shape] = self._sightings.pop(shape, 0) + 1
        if len(self._sightings) > _SHAPES_REMEMBERED:
            self._sightings.popitem(last=False)
        if self._sightings[shape] < _SIGHTINGS_BEFORE_COMPILE:
            return self._any_shape
        del self._sightings[shape]
        model = self._model.clone()
        model.reshape({0: list(shape)})
        self._by_shape[shape] = compiled = _Compiled(self._core, model, self.threads)
        return compiled

    def _padded(self, image: np.ndarray) -> np.ndarray:
        """``image`` padded at the bottom and right to the multiple of 32 the network pads it to, when the
        network's resize leaves both the image and the padded image as they are; else ``image`` itself."""
        _, height, width = image.shape
        padded_h, padded_w = (-(-side // _SIZE_DIVISIBLE) * _SIZE_DIVISIBLE for side in (height, width))
        if (padded_h, padded_w) == (height, width):
            return image
        if input_scale(width, height, *self._sizes) != 1 or input_scale(padded_w, padded_h, *self._sizes) != 1:
            return image  # the network would resize one of them, by different factors: padding would show
        out = np.empty((image.shape[0], padded_h, padded_w), dtype=np.float32)
        out[:] = self._fill
        out[:, :height, :width] = image
        return out

    def predict(self, images: list[np.ndarray]) -> list[Detections]:
        sizes = [image.shape[1:] for image in images]
        images = [self._padded(np.ascontiguousarray(image, dtype=np.float32)) for image in images]
        return [_clipped(found, *size) for found, size in zip(self._run(images), sizes, strict=True)]

    def _run(self, images: list[np.ndarray]) -> list[Detections]:
        graphs = [self._graph_for(image.shape) for image in images]
        if len(images) == 1 or self.threads == 1:
            return [self._detections(graph.lone({0: image})) for graph, image in zip(graphs, images, strict=True)]
        # A batch runs on one graph's streams: a shape's own when they all share it (a camera's), otherwise
        # the shape-agnostic one, which keeps every thread busy where per-shape groups of one would not. (Each
        # image on its own shape's graph was slower: 17.7 against 14.8 ms an image for a mixed batch of 8 of
        # coco128, as the graphs' weights evict each other from the cache.)
        graph = graphs[0] if all(g is graphs[0] for g in graphs) else self._any_shape
        results: list[Detections | None] = [None] * len(images)

        def done(request, index: int) -> None:
            results[index] = self._detections([request.get_output_tensor(i).data.copy() for i in range(3)])

        graph.queue.set_callback(done)
        for index, image in enumerate(images):
            graph.queue.start_async({0: image}, index)
        graph.queue.wait_all()
        return results  # type: ignore[return-value]

    @staticmethod
    def _detections(outputs) -> Detections:
        boxes, labels, scores = (np.asarray(outputs[i]) for i in range(3))
        # Where the network finds nothing, OpenVINO returns one row of stale memory with label 0 instead of an
        # empty result; a Faster R-CNN's labels start at 1 (0 is background), so such rows are not detections.
        found = labels >= 1
        return Detections(boxes[found], labels[found].astype(np.int64), scores[found])

    def close(self) -> None:
        self._by_shape.clear()
        self._any_shape = None


def _clipped(found: Detections, height: int, width: int) -> Detections:
    """``found`` with its boxes clipped to a ``width`` x ``height`` image (the network clipped them to the padded
    one)."""
    boxes = found.boxes.copy()
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    return Detections(boxes, found.labels, found.scores)
