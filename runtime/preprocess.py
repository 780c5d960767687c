"""From a decoded image to what every engine takes: RGB float32 (3, H, W) in 0..1 at the model's input size.

The size rule is torchvision's GeneralizedRCNNTransform's (short side ``min_size``, long side at most
``max_size``); images already smaller are kept. Shrinking happens in float32, as torchvision's transform does:
OpenCV's 8-bit bilinear rounds differently on x86 and ARM, enough to move a score by 0.008.
"""

import cv2
import numpy as np


def input_scale(width: int, height: int, min_size: int, max_size: int) -> float:
    return min(min_size / min(width, height), max_size / max(width, height))


def to_model_input(bgr: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """A BGR uint8 (H, W, 3) image (OpenCV's) as the engines' input, shrunk to the model's input size."""
    height, width = bgr.shape[:2]
    scale = input_scale(width, height, min_size, max_size)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    rgb = bgr[:, :, ::-1].astype(np.float32)
    if scale < 1 and (width, height) != target:
        rgb = cv2.resize(rgb, target, interpolation=cv2.INTER_LINEAR)
    chw = rgb.transpose(2, 0, 1).copy()
    np.divide(chw, np.float32(255), out=chw)
    return chw
