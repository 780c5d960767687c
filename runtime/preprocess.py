"""From a decoded image to what every engine takes: RGB float32 (3, H, W) in 0..1 at the model's input size.

The one shrinking path, shared by the service's decoder (``runtime.images``), the export's check and the
benchmarks. The size rule is torchvision's GeneralizedRCNNTransform's (short side ``min_size``, long side at most
``max_size``); images already smaller are kept. Shrinking is bilinear in float32, as torchvision's transform
resizes: OpenCV's 8-bit bilinear rounds differently on x86 and ARM, enough to move a score by 0.008.
"""

import numpy as np


def input_scale(width: int, height: int, min_size: int, max_size: int) -> float:
    """The detector's resize factor for a ``width`` x ``height`` image; under 1 means it is shrunk."""
    return min(min_size / min(width, height), max_size / max(width, height))


def shrink_to_input(array: np.ndarray, width: int, height: int, scale: float, divisor: float) -> np.ndarray:
    """(H, W, 3) integer RGB samples of a ``width`` x ``height`` image (``array`` may be a reduced decode of it)
    as (3, h, w) float32 in 0..1 at ``scale``, never enlarged; ``divisor`` is the samples' full scale."""
    # At least one pixel: a 1 x 4000 image would otherwise round to an empty width.
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if scale < 1 and (array.shape[1], array.shape[0]) != target:
        hwc = shrink_bilinear(array, target)
    else:
        hwc = array.astype(np.float32)  # at most the detector's input size
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    np.divide(chw, np.float32(divisor), out=chw)
    return chw


def to_model_input(bgr: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """A BGR uint8 (H, W, 3) image (OpenCV's ``imread``) as the engines' input, shrunk as the service shrinks."""
    height, width = bgr.shape[:2]
    return shrink_to_input(bgr[:, :, ::-1], width, height, input_scale(width, height, min_size, max_size), 255)


def shrink_bilinear(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) integer samples -> (h, w, C) float32 at ``size`` = (w, h): bit for bit what OpenCV's own
    ``cv2.resize(INTER_LINEAR)`` of a float32 copy gives (x86 builds may take Intel IPP's instead, 1e-5 apart),
    without that full-size float copy.

    Bilinear reads only the two source rows and columns around each output pixel, so those are gathered from the
    integer bitmap and only they become float. In float32, as torchvision's transform resizes in training: OpenCV's
    8-bit bilinear rounds differently on x86 and ARM (enough to move a score by 0.008), while NumPy's separate
    float32 multiplies and adds give the same bits on both.
    """
    (x0, x1, wx), (y0, y1, wy) = _taps(array.shape[1], size[0]), _taps(array.shape[0], size[1])
    wx, wy = wx[None, :, None], wy[:, None, None]
    rows = [
        array[np.ix_(y, x0)].astype(np.float32) * (1 - wx) + array[np.ix_(y, x1)].astype(np.float32) * wx
        for y in (y0, y1)
    ]
    return rows[0] * (1 - wy) + rows[1] * wy


def _taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR sampling along one axis: the two source indices and the second one's weight for
    each output index (pixel centres aligned; clamped at the edges, where the weight becomes 0)."""
    scale = 1 / (target / source)  # computed as OpenCV does, so that the positions agree to the last bit
    position = ((np.arange(target, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    weight = position - first
    weight[first < 0] = 0
    first = np.clip(first, 0, source - 1)
    weight[first >= source - 1] = 0
    return first, np.minimum(first + 1, source - 1), weight.astype(np.float32)
