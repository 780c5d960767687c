"""Image bytes -> a model-ready array, with the size checked from the file header before anything is decoded.

``read_header`` parses the few bytes of a JPEG, PNG, WebP or BMP header that give its dimensions, so an image
over the pixel limit (a decompression bomb) is refused before OpenCV allocates its bitmap. ``decode`` then
decodes with OpenCV (EXIF orientation applied, alpha dropped as PIL's ``convert("RGB")`` does, grayscale
expanded to RGB, 16-bit scaled to 0..1) and shrinks the image to the size the detector's own transform
would resize it to, so that only a small tensor waits in the batching queue. Large JPEGs are decoded at
1/2, 1/4 or 1/8 scale by libjpeg directly when that is still at least the detector's input size.
"""

import math
import struct
from dataclasses import dataclass

import cv2
import numpy as np

SUPPORTED = ("JPEG", "PNG", "WebP", "BMP")
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
_JPEG_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}  # markers without a length field
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


@dataclass(frozen=True)
class DecodedImage:
    array: np.ndarray  # (3, h, w) float32 RGB in 0..1, at most the detector's input size
    width: int  # the original image as displayed (EXIF orientation applied), in pixels
    height: int


def read_header(data: bytes) -> ImageHeader:
    """Format and stored dimensions from the first bytes; ImageError if not a supported, sane image."""
    if not data:
        raise ImageError("empty image: the file has no bytes")
    if data.startswith(b"\xff\xd8\xff"):
        width, height = _jpeg_size(data)
        fmt = "JPEG"
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        width, height = _png_size(data)
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
    return ImageHeader(fmt, width, height)


def check_pixels(header: ImageHeader, max_pixels: int) -> None:
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise ImageError(
            f"image too large: {header.width} x {header.height} = {pixels} pixels; the limit is {max_pixels}", 413
        )


def decode(data: bytes, *, max_pixels: int, min_size: int, max_size: int) -> DecodedImage:
    """Decode ``data`` and shrink it to the detector's input size (short side ``min_size``, long side at most
    ``max_size``, as torchvision's GeneralizedRCNNTransform computes it); smaller images are kept as they are."""
    header = read_header(data)
    check_pixels(header, max_pixels)
    scale = min(min_size / min(header.width, header.height), max_size / max(header.width, header.height))
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_ANYDEPTH  # applies EXIF orientation; drops alpha; gray -> RGB
    if header.format == "JPEG":
        factor, reduced = next(((f, flag) for f, flag in _REDUCED if f * scale <= 1), (1, None))
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
    target = (round(width * scale), round(height * scale))
    # Resized in float32, as torchvision's transform does in training and evaluation: OpenCV's 8-bit bilinear
    # rounds differently on x86 and ARM (one level on a quarter of the pixels, enough to move a score by 0.008),
    # while in float the two agree within 1e-5.
    if scale < 1 and (array.shape[1], array.shape[0]) != target:
        array = cv2.resize(array.astype(np.float32), target, interpolation=cv2.INTER_LINEAR)
    chw = array.transpose(2, 0, 1).astype(np.float32, order="C")  # one contiguous copy, resized or not
    np.divide(chw, np.float32(divisor), out=chw)
    return DecodedImage(chw, width, height)


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


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos < len(data):
        if data[pos] != 0xFF:
            raise ImageError("corrupt JPEG image: a marker is missing before the frame header")
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes
            pos += 1
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
            return width, height
        pos += 1 + length
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
