"""NanoDet-m (the NanoDet authors' COCO detector) run as its authors run it, on OpenVINO's runtime.

The teacher for distillation and a peer in the benchmarks. Preprocessing (nanodet/data/transform/warp.py,
keep_ratio): the BGR image is warped to fit inside 320x320, centred, black border; the IR normalises inside.
Decoding (nanodet/model/head/gfl_head.py): per level, softmax over the 8 distance bins, expectation x stride
from the point (x * stride + (stride - 1) / 2, y * stride + (stride - 1) / 2); the top 1000 points by best
class score, scores > 0.05, class-wise NMS at IoU 0.6, at most 100 boxes. Facts from
../shared/weights/nanodet_m/README.md; the weights are Apache-2.0 (see NOTICE).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.ops import batched_nms

from backbone.weights import WeightsError

from .coco_classes import coco_category_map

INPUT_SIZE = 320
STRIDES = (8, 16, 32)
REG_MAX = 7
SCORE_THRESH = 0.05
NMS_IOU = 0.6
PRE_NMS_TOP_K = 1000
MAX_DETECTIONS = 100
ATTRIBUTION = (
    "NanoDet-m weights by RangiLyu and the NanoDet authors (github.com/RangiLyu/nanodet, commit c1b1824c), "
    "Apache-2.0 (Copyright 2020-2021 RangiLyu); used as backbone initialisation and distillation teacher."
)


@dataclass
class Detections:
    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2 in the original image's pixels
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64, contiguous 0..79 (COCO's order: see coco_classes)


def letterbox_matrix(width: int, height: int, size: int = INPUT_SIZE) -> np.ndarray:
    """NanoDet's keep-ratio warp: centre the image on the origin, scale it to fit, centre it in the square."""
    ratio = size / height if width / height < 1.0 else size / width
    centre = np.array([[1, 0, -width / 2], [0, 1, -height / 2], [0, 0, 1]], dtype=np.float64)
    scale = np.diag([ratio, ratio, 1.0])
    move = np.array([[1, 0, size / 2], [0, 1, size / 2], [0, 0, 1]], dtype=np.float64)
    return move @ scale @ centre


def preprocess(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1, 3, 320, 320) float32 raw BGR input and the 3x3 warp matrix that made it."""
    matrix = letterbox_matrix(bgr.shape[1], bgr.shape[0])
    warped = cv2.warpPerspective(bgr, matrix, dsize=(INPUT_SIZE, INPUT_SIZE))
    return warped.transpose(2, 0, 1)[None].astype(np.float32), matrix


def decode(outputs: list[np.ndarray], matrix: np.ndarray, width: int, height: int) -> Detections:
    """Boxes in the original image from the six raw outputs (class scores and distributions per level)."""
    all_boxes, all_scores = [], []
    for level, stride in enumerate(STRIDES):
        scores, dists = outputs[2 * level][0], outputs[2 * level + 1][0]
        side = INPUT_SIZE // stride
        ys, xs = np.divmod(np.arange(side * side), side)
        centres = np.stack([xs, ys], axis=1).astype(np.float32) * stride + (stride - 1) / 2
        if len(scores) > PRE_NMS_TOP_K:
            keep = np.argsort(-scores.max(axis=1), kind="stable")[:PRE_NMS_TOP_K]
            scores, dists, centres = scores[keep], dists[keep], centres[keep]
        logits = dists.reshape(-1, 4, REG_MAX + 1)
        probs = np.exp(logits - logits.max(axis=2, keepdims=True))
        probs /= probs.sum(axis=2, keepdims=True)
        distances = (probs * np.arange(REG_MAX + 1, dtype=np.float32)).sum(axis=2) * stride  # left, top, right, bottom
        boxes = np.concatenate([centres - distances[:, :2], centres + distances[:, 2:]], axis=1)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, INPUT_SIZE)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, INPUT_SIZE)
        all_boxes.append(boxes)
        all_scores.append(scores)
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    point, label = np.nonzero(scores > SCORE_THRESH)
    boxes, scores = boxes[point], scores[point, label]
    keep = class_wise_nms(boxes, scores, label, NMS_IOU)[:MAX_DETECTIONS]
    boxes, scores, label = boxes[keep], scores[keep], label[keep]
    # Back to the original image through the inverse warp (scale and offset only).
    inverse = np.linalg.inv(matrix)
    boxes = boxes * inverse[0, 0] + np.array([inverse[0, 2], inverse[1, 2]] * 2)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return Detections(boxes.astype(np.float32), scores.astype(np.float32), label.astype(np.int64))


def class_wise_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by NMS within each class, best score first: torchvision's batched_nms, as NanoDet runs it."""
    kept = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), iou)
    return kept.numpy()


class NanoDetM:
    """NanoDet-m from its OpenVINO IR. ``detect(bgr)`` runs the whole pipeline on one BGR uint8 image.

    ``threads``: OpenVINO's inference threads (None: its choice). Inference is in float32: OpenVINO's CPU
    plugin otherwise runs bf16 where the processor has it, which moves outputs by 1e-2.
    """

    categories = coco_category_map()

    def __init__(self, xml_path: str | Path, *, threads: int | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise WeightsError("NanoDet-m runs on OpenVINO: pip install openvino (the 'train' extra)") from exc
        xml_path = Path(xml_path)
        for path in (xml_path, xml_path.with_suffix(".bin")):
            if not path.is_file():
                raise WeightsError(f"{path}: no such file (NanoDet-m is an OpenVINO .xml with its .bin beside it)")
        self.config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(str(xml_path))
            self.compiled = self.core.compile_model(self.model, "CPU", self.config)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"{xml_path}: OpenVINO cannot read this IR: {first}") from None
        shapes = [tuple(out.get_partial_shape().to_shape()) for out in self.compiled.outputs]
        expected = [(1, (INPUT_SIZE // s) ** 2, n) for s in STRIDES for n in (80, 4 * (REG_MAX + 1))]
        if shapes != expected:
            raise WeightsError(f"{xml_path}: outputs {shapes} are not NanoDet-m's (expected {expected})")
        self.path = xml_path
        # The IR's channel shuffles fix the batch at 1, so a batch runs as parallel single-image streams, one
        # thread each (as this project's engines run theirs).
        self._queue = None
        if threads and threads > 1:
            streams = self.core.compile_model(self.model, "CPU", {**self.config, "NUM_STREAMS": threads})
            self._queue = ov.AsyncInferQueue(streams, threads)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Raw outputs for a (1, 3, 320, 320) input."""
        result = self.compiled(batch)
        return [result[output] for output in self.compiled.outputs]

    def detect(self, bgr: np.ndarray) -> Detections:
        batch, matrix = preprocess(bgr)
        return decode(self.infer(batch), matrix, bgr.shape[1], bgr.shape[0])

    def detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        """The whole pipeline on BGR uint8 images, the network runs side by side (one stream per thread)."""
        if self._queue is None or len(images) == 1:
            return [self.detect(image) for image in images]
        results: list[Detections | None] = [None] * len(images)
        prepared = [preprocess(image) for image in images]

        def done(request, index: int) -> None:
            outputs = [request.get_output_tensor(i).data.copy() for i in range(len(self.compiled.outputs))]
            image = images[index]
            results[index] = decode(outputs, prepared[index][1], image.shape[1], image.shape[0])

        self._queue.set_callback(done)
        for index, (batch, _) in enumerate(prepared):
            self._queue.start_async({0: batch}, index)
        self._queue.wait_all()
        return results  # type: ignore[return-value]
