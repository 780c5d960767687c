"""Header parsing and decoding: sizes from headers, limits before decoding, orientation, depth and channels."""

import io
import struct

import cv2
import numpy as np
import pytest
from PIL import Image

from runtime.images import ImageError, check_pixels, decode, read_header


def encode(array: np.ndarray, ext: str, *params: int) -> bytes:
    ok, data = cv2.imencode(ext, array, list(params))
    assert ok
    return data.tobytes()


def rgb(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(("ext", "fmt"), [(".jpg", "JPEG"), (".png", "PNG"), (".webp", "WebP"), (".bmp", "BMP")])
def test_header_gives_format_and_size(ext, fmt):
    header = read_header(encode(rgb(37, 53), ext))
    assert (header.format, header.width, header.height) == (fmt, 53, 37)


def test_header_of_lossy_and_extended_webp():
    lossy = encode(rgb(37, 53), ".webp", cv2.IMWRITE_WEBP_QUALITY, 80)
    assert (read_header(lossy).width, read_header(lossy).height) == (53, 37)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((37, 53, 4), np.uint8)).save(buffer, "WEBP", lossless=False, exif=b"Exif\x00\x00")
    extended = buffer.getvalue()
    assert extended[12:16] == b"VP8X"
    assert (read_header(extended).width, read_header(extended).height) == (53, 37)


def test_real_photo_header(jpeg):
    header = read_header(jpeg)
    assert (header.format, header.width, header.height) == ("JPEG", 640, 480)


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"hello, world" * 10, 400, "not an image"),
        (b"GIF89a" + bytes(20), 415, "GIF images are not supported"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", 400, "truncated JPEG"),
        (b"\xff\xd8\xff\xda\x00\x08" + bytes(20), 400, "no frame header"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", 400, "truncated PNG"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", 400, "truncated WebP"),
        (b"BM" + bytes(10), 400, "truncated BMP"),
    ],
)
def test_bad_headers_say_what_is_wrong(data, status, words):
    with pytest.raises(ImageError, match=words) as info:
        read_header(data)
    assert info.value.status_code == status


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge size: a decompression bomb's first bytes."""
    small = encode(np.zeros((8, 8, 3), np.uint8), ".png")
    return small[:16] + struct.pack(">II", width, height) + small[24:]


def jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(encode(rgb(8, 8), ".jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("make", [png_declaring, jpeg_declaring])
def test_pixel_limit_is_checked_from_the_header(make):
    bomb = make(60000, 60000)
    with pytest.raises(ImageError, match="60000 x 60000") as info:
        decode(bomb, max_pixels=10_000_000, min_size=320, max_size=544)
    assert info.value.status_code == 413
    check_pixels(read_header(make(100, 100)), 10_000)  # exactly at the limit is fine


def test_decode_shrinks_to_the_detector_input_and_keeps_the_original_size(jpeg):
    image = decode(jpeg, max_pixels=10**8, min_size=320, max_size=544)
    assert (image.width, image.height) == (640, 480)
    assert image.array.shape == (3, 320, 427)
    assert image.array.dtype == np.float32 and 0 <= image.array.min() and image.array.max() <= 1


def test_small_images_are_not_enlarged():
    image = decode(encode(rgb(30, 40), ".png"), max_pixels=10**8, min_size=320, max_size=544)
    assert image.array.shape == (3, 30, 40) and (image.width, image.height) == (40, 30)


def test_exif_orientation_is_applied():
    array = np.zeros((40, 100, 3), np.uint8)
    array[:, :50] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: red ends up on top
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    image = decode(buffer.getvalue(), max_pixels=10**8, min_size=320, max_size=544)
    assert (image.width, image.height) == (40, 100)
    red = image.array[0]
    assert red[:50].mean() > 0.9 and red[50:].mean() < 0.1


def test_large_jpeg_is_decoded_reduced_with_its_full_size_reported():
    array = cv2.resize(rgb(30, 40), (4000, 3000), interpolation=cv2.INTER_NEAREST)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotated 90 degrees: displayed 3000 wide, 4000 high
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", exif=exif.tobytes(), quality=90)
    image = decode(buffer.getvalue(), max_pixels=10**8, min_size=320, max_size=544)
    assert (image.width, image.height) == (3000, 4000)
    assert image.array.shape == (3, 427, 320)


def test_grayscale_alpha_and_16_bit_become_rgb_in_0_1():
    gray = encode(np.full((20, 30), 128, np.uint8), ".png")
    rgba = encode(np.dstack([np.full((20, 30, 3), 200, np.uint8), np.zeros((20, 30), np.uint8)]), ".png")
    deep = encode(np.full((20, 30, 3), 65535, np.uint16), ".png")
    deep_gray = encode(np.full((20, 30), 32768, np.uint16), ".png")
    for data, value in [(gray, 128 / 255), (rgba, 200 / 255), (deep, 1.0), (deep_gray, 32768 / 65535)]:
        image = decode(data, max_pixels=10**8, min_size=320, max_size=544)
        assert image.array.shape == (3, 20, 30)
        assert image.array.mean() == pytest.approx(value, abs=1e-3)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp"])
def test_truncated_images_are_refused(ext):
    data = encode(rgb(64, 64), ext)
    with pytest.raises(ImageError) as info:
        decode(data[: len(data) // 2], max_pixels=10**8, min_size=320, max_size=544)
    assert info.value.status_code == 400


def test_corrupt_body_after_a_valid_header_is_refused():
    data = encode(rgb(64, 64), ".png")
    corrupt = data[:40] + bytes(len(data) - 40)
    with pytest.raises(ImageError, match="corrupt"):
        decode(corrupt, max_pixels=10**8, min_size=320, max_size=544)
