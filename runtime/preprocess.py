"""From a decoded image to what every engine takes: RGB float32 (3, H, W) in 0..1 at the model's input size.

The one shrinking path, shared by the service's decoder (``runtime.images``), the export's check and the
benchmarks. The size rule is torchvision's GeneralizedRCNNTransform's (short side ``min_size``, long side at most
``max_size``); images already smaller are kept. Shrinking is bilinear in float32, as torchvision's transform
resizes: OpenCV's 8-bit bilinear rounds differently on x86 and ARM, enough to move a score by 0.008.
"""

import numpy as np

from detector.config import input_scale

_ROWS_AT_ONCE = 64  # source rows gathered per step of the horizontal pass


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
    # A contiguous RGB copy (8-bit, cheap): gathering from a reversed-channel view took twice as long.
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    return shrink_to_input(rgb, width, height, input_scale(width, height, min_size, max_size), 255)


def shrink_bilinear(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) integer samples -> (h, w, C) float32 at ``size`` = (w, h): bit for bit what OpenCV's own
    ``cv2.resize(INTER_LINEAR)`` of a float32 copy gives (x86 builds may take Intel IPP's instead, 1e-5 apart),
    without that full-size float copy.

    Bilinear reads only the two source rows and columns around each output pixel, so only the source rows it
    reads are gathered, each blended horizontally once (output rows share source rows), and only the columns
    it reads become float. In float32, as torchvision's transform resizes in training: OpenCV's 8-bit bilinear
    rounds differently on x86 and ARM (enough to move a score by 0.008), while NumPy's separate float32
    multiplies and adds give the same bits on both.
    """
    (x0, x1, wx), (y0, y1, wy) = _taps(array.shape[1], size[0]), _taps(array.shape[0], size[1])
    channels = array.shape[2]
    rows, row_of = np.unique(np.concatenate([y0, y1]), return_inverse=True)
    # Horizontal pass over flat (W * C) rows, a few source rows at a time (a full-width copy of every row read
    # would be tens of MB for a 24 MP upload): one gather per tap, channels side by side.
    columns = [(x[:, None] * channels + np.arange(channels)).ravel() for x in (x0, x1)]
    wx = np.repeat(wx, channels)
    blended = np.empty((len(rows), len(columns[0])), np.float32)
    for start in range(0, len(rows), _ROWS_AT_ONCE):
        chunk = np.take(array, rows[start : start + _ROWS_AT_ONCE], axis=0)
        chunk = chunk.reshape(len(chunk), -1)
        left = np.take(chunk, columns[0], axis=1).astype(np.float32)
        left *= 1 - wx
        right = np.take(chunk, columns[1], axis=1).astype(np.float32)
        right *= wx
        np.add(left, right, out=blended[start : start + len(chunk)])
    # Vertical pass: each output row from its two blended source rows.
    wy = wy[:, None]
    top = np.take(blended, row_of[: len(y0)], axis=0)
    top *= 1 - wy
    bottom = np.take(blended, row_of[len(y0) :], axis=0)
    bottom *= wy
    top += bottom
    return top.reshape(len(y0), len(x0), channels)


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
