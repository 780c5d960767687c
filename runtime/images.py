"""Image bytes -> a model-ready array, with the size checked from the file header before anything is decoded,
and the model's detections back in the image's own pixels: the one way an image is seen, by the service and by
``python -m tools.predict`` alike.

``read_header`` parses the few bytes of a JPEG, PNG, WebP or BMP header that give its dimensions, so an image
over the pixel limit (a decompression bomb) is refused before OpenCV allocates its bitmap. ``decode`` then
decodes with OpenCV (EXIF orientation applied, alpha dropped as PIL's ``convert("RGB")`` does, grayscale
expanded to RGB, 16-bit scaled to 0..1) and shrinks the image to the size the detector's own transform
would resize it to, so that only a small tensor waits in the batching queue. Large baseline JPEGs are decoded
at 1/2, 1/4 or 1/8 scale by libjpeg directly when that is still at least the detector's input size; other
images are decoded at full size (8 or 16 bits a sample, never float) and shrunk by sampling only the pixels
bilinear interpolation reads. ``decode_cost`` says, from the header, how many pixels a decode will allocate,
which is what the service budgets. ``detections_in_image`` maps an engine's detections on the decoded array
back to the original image, best first, filtered by score (``DEFAULT_SCORE_THRESHOLD`` unless asked otherwise).
"""

import math
import re
import struct
from dataclasses import dataclass

import cv2
import numpy as np

from detector.config import input_scale

from .card import Detections, ModelCard
from .preprocess import shrink_to_input

SUPPORTED = ("JPEG", "PNG", "WebP", "BMP")
# The defaults of every way to run the model on images (the service's settings, tools.predict's options).
DEFAULT_SCORE_THRESHOLD = 0.3
DEFAULT_MAX_PIXELS = 24_000_000  # width x height from the header: a decompression bomb stops here
# Formats we recognise only to say that they are not supported.
_OTHER_MAGIC = {
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"\x00\x00\x01\x00": "ICO",
    b"%PDF": "PDF",
}
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_JPEG_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}  # markers without a length field
# Real files have a few dozen segments before the frame header (split ICC profiles included); a file of
# millions of tiny segments is an attack on the scan, so the scan stops here and its cost is bounded.
MAX_JPEG_SEGMENTS = 1000
_FILL = re.compile(rb"\xff*")  # skipped at C speed: any number of fill bytes may precede a marker
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))

cv2.setNumThreads(1)  # decoding runs in our own threads; OpenCV's pool would fight inference's for the cores
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # we report bad images ourselves


class ImageError(ValueError):
    """An image the service refuses; ``status_code`` is the HTTP status (400, 413 or 415)."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class ImageHeader:
    format: str  # one of SUPPORTED
    width: int  # as stored, before any EXIF rotation
    height: int
    progressive: bool = False  # a progressive JPEG: libjpeg buffers every coefficient, so no reduced decode
    wide_samples: bool = False  # 16 bits a sample (PNG): the bitmap takes twice the memory


@dataclass(frozen=True)
class DecodedImage:
    array: np.ndarray  # (3, h, w) float32 RGB in 0..1, at most the detector's input size
    width: int  # the original image as displayed (EXIF orientation applied), in pixels
    height: int


def read_header(data: bytes) -> ImageHeader:
    """Format and stored dimensions from the first bytes; ImageError if not a supported, sane image."""
    if not data:
        raise ImageError("empty image: the file has no bytes")
    progressive = wide = False
    if data.startswith(b"\xff\xd8\xff"):
        width, height, progressive = _jpeg_frame(data)
        fmt = "JPEG"
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        width, height = _png_size(data)
        wide = data[24] == 16  # IHDR's bit depth
        fmt = "PNG"
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        width, height = _webp_size(data)
        fmt = "WebP"
    elif data[:2] == b"BM":
        width, height = _bmp_size(data)
        fmt = "BMP"
    else:
        other = next((name for magic, name in _OTHER_MAGIC.items() if data.startswith(magic)), None)
        if other is not None:
            raise ImageError(f"{other} images are not supported; send {', '.join(SUPPORTED)}", 415)
        raise ImageError(f"not an image: the bytes are not {', '.join(SUPPORTED[:-1])} or {SUPPORTED[-1]}")
    if width <= 0 or height <= 0:
        raise ImageError(f"corrupt {fmt} image: its header declares {width} x {height} pixels")
    return ImageHeader(fmt, width, height, progressive, wide)


def check_pixels(header: ImageHeader, max_pixels: int) -> None:
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise ImageError(
            f"image too large: {header.width} x {header.height} = {pixels} pixels; the limit is {max_pixels}", 413
        )


def shrink_scale(header: ImageHeader, *, min_size: int, max_size: int) -> float:
    """The detector's resize factor for this image (GeneralizedRCNNTransform's: short side ``min_size``, long side
    at most ``max_size``); under 1 means the service shrinks it while decoding."""
    return input_scale(header.width, header.height, min_size, max_size)


def decode_cost(header: ImageHeader, *, min_size: int, max_size: int) -> int:
    """Pixels that decoding this image allocates, in 8-bit pixels' worth (a 16-bit one counts twice): what the
    service's decode budget counts. OpenCV holds about twice the bitmap while it decodes (measured: 140 MB for
    a 24 MP 8-bit PNG), so memory is about 6 bytes per pixel counted."""
    factor, _ = _jpeg_reduction(header, shrink_scale(header, min_size=min_size, max_size=max_size))
    pixels = math.ceil(header.width / factor) * math.ceil(header.height / factor)
    return pixels * (2 if header.wide_samples else 1)


def decode(data: bytes, *, max_pixels: int, min_size: int, max_size: int) -> DecodedImage:
    """Decode ``data`` and shrink it to the detector's input size (short side ``min_size``, long side at most
    ``max_size``, as torchvision's GeneralizedRCNNTransform computes it); smaller images are kept as they are."""
    header = read_header(data)
    check_pixels(header, max_pixels)
    scale = shrink_scale(header, min_size=min_size, max_size=max_size)
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_ANYDEPTH  # applies EXIF orientation; drops alpha; gray -> RGB
    _, reduced = _jpeg_reduction(header, scale)
    if reduced is not None:  # libjpeg's DCT scaling: the full bitmap is never allocated
        flags = (reduced & ~cv2.IMREAD_COLOR) | cv2.IMREAD_COLOR_RGB
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        array = cv2.imdecode(buffer, flags)
    except cv2.error as exc:  # OpenCV raises for some malformed inputs rather than returning None
        raise ImageError(f"corrupt {header.format} image: {_first_line(exc)}") from None
    if array is None or array.ndim != 3 or array.shape[2] != 3 or array.size == 0:
        raise ImageError(f"corrupt or truncated {header.format} image: it cannot be decoded")
    width, height = _displayed_size(header, array.shape[1], array.shape[0])
    if array.dtype == np.uint16:
        divisor = 65535
    elif array.dtype == np.uint8:
        divisor = 255
    else:
        raise ImageError(f"unsupported {header.format} sample type {array.dtype}")
    return DecodedImage(shrink_to_input(array, width, height, scale, divisor), width, height)


def detections_in_image(
    result: Detections,
    image: DecodedImage,
    card: ModelCard,
    *,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    max_detections: int = 100,
    classes: set[str] | None = None,
) -> list[dict]:
    """An engine's ``result`` on ``image.array`` in the original image's pixels (boxes clipped to it), best
    first, at least ``score_threshold``, at most ``max_detections``, only ``classes`` when given: a list of
    {"label", "category_id", "score", "box": [x1, y1, x2, y2]}."""
    _, height, width = image.array.shape
    sx, sy = image.width / width, image.height / height
    boxes, labels, scores = result.boxes.tolist(), result.labels.tolist(), result.scores.tolist()
    detections = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if len(detections) >= max_detections or scores[i] < score_threshold:
            break
        name = card.categories.name(labels[i])
        if classes is not None and name not in classes:
            continue
        x1, y1, x2, y2 = boxes[i]
        box = [
            round(min(max(x1 * sx, 0.0), image.width), 2),
            round(min(max(y1 * sy, 0.0), image.height), 2),
            round(min(max(x2 * sx, 0.0), image.width), 2),
            round(min(max(y2 * sy, 0.0), image.height), 2),
        ]
        detections.append(
            {"label": name, "category_id": card.categories.category_id(labels[i]), "score": scores[i], "box": box}
        )
    return detections


def _jpeg_reduction(header: ImageHeader, scale: float) -> tuple[int, int | None]:
    """(factor, OpenCV flag) of the reduced decode libjpeg can do for this image; (1, None) for none."""
    if header.format != "JPEG" or header.progressive:
        return 1, None
    return next(((f, flag) for f, flag in _REDUCED if f * scale <= 1), (1, None))


def _displayed_size(header: ImageHeader, decoded_w: int, decoded_h: int) -> tuple[int, int]:
    """The full image's (width, height) after EXIF orientation, from what OpenCV returned (maybe reduced)."""
    stored = (header.width, header.height)
    if (decoded_w, decoded_h) == stored:
        return stored
    if (decoded_w, decoded_h) == stored[::-1]:
        return stored[::-1]
    # A reduced decode: the aspect ratio tells whether EXIF rotated it by 90 degrees.
    aspect = decoded_w / decoded_h
    rotated = abs(math.log(aspect * header.height / header.width)) > abs(
        math.log(aspect * header.width / header.height)
    )
    return stored[::-1] if rotated else stored


def _jpeg_frame(data: bytes) -> tuple[int, int, bool]:
    """(width, height, progressive) from the frame header; the work is bounded by ``MAX_JPEG_SEGMENTS``."""
    pos = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        if pos >= len(data):
            break
        if data[pos] != 0xFF:
            raise ImageError("corrupt JPEG image: a marker is missing before the frame header")
        pos = _FILL.match(data, pos).end()
        if pos >= len(data):
            break
        marker = data[pos]
        if marker in _JPEG_STANDALONE:
            pos += 1
            continue
        if marker in (0xD9, 0xDA):
            raise ImageError("corrupt JPEG image: no frame header before the image data")
        if pos + 3 > len(data):
            break
        (length,) = struct.unpack(">H", data[pos + 1 : pos + 3])
        if length < 2:
            raise ImageError(f"corrupt JPEG image: segment length {length}")
        if marker in _JPEG_SOF:
            if pos + 8 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 4 : pos + 8])
            return width, height, marker in _JPEG_PROGRESSIVE
        pos += 1 + length
    else:
        raise ImageError(f"corrupt JPEG image: no frame header within its first {MAX_JPEG_SEGMENTS} segments")
    raise ImageError("truncated JPEG image: it ends before its frame header")


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 33:
        raise ImageError("truncated PNG image: it ends inside its header")
    if data[12:16] != b"IHDR":
        raise ImageError("corrupt PNG image: the first chunk is not IHDR")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        if data[23:26] != b"\x9d\x01\x2a":
            raise ImageError("corrupt WebP image: bad VP8 start code")
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        if data[20] != 0x2F:
            raise ImageError("corrupt WebP image: bad VP8L signature")
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk in (b"VP8 ", b"VP8L", b"VP8X"):
        raise ImageError("truncated WebP image: it ends inside its header")
    raise ImageError(f"corrupt WebP image: unknown first chunk {chunk!r}")


def _bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise ImageError("truncated BMP image: it ends inside its header")
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit unsigned dimensions
        width, height = struct.unpack("<HH", data[18:22])
        return width, height
    if dib_size < 16:
        raise ImageError(f"corrupt BMP image: header size {dib_size}")
    width, height = struct.unpack("<ii", data[18:26])
    return width, abs(height)  # a negative height means rows stored top-down


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
