"""Valid but expensive or odd input (issue 13), checked in-process and on the functions themselves.

Decoding is bounded in memory (no full-size float copy) and matches OpenCV's own float resize bit for bit;
header scans are bounded; thin images decode; a stray Authorization header does not hide a good key; every
response carries the browser-safety headers; the docs work offline; /v1/model keeps the training machine's
details to itself; multipart files never touch /tmp; settings catch misspelt variables and a container's CPU
quota.
"""

import base64
import tempfile
import time
import tracemalloc

import cv2
import numpy as np
import pytest

from runtime.images import decode, read_header
from service.settings import Settings

SIZES = {"min_size": 320, "max_size": 544}


def encode(array: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, array)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_large_png_is_shrunk_without_a_full_size_float_copy(dtype):
    flat = np.zeros((4000, 5999, 3), dtype)  # the 148 KB (16-bit) upload
    flat[::7, ::5] = np.iinfo(dtype).max // 3
    data = encode(flat, ".png")
    bitmap = flat.nbytes  # what OpenCV must allocate for a PNG, through NumPy's allocator (so it is traced)
    tracemalloc.start()
    try:
        image = decode(data, max_pixels=24_000_000, **SIZES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.array.shape == (3, 320, 480) and image.array.dtype == np.float32
    assert peak < bitmap * 1.2, f"decoding held {peak / 1e6:.0f} MB for a {bitmap / 1e6:.0f} MB bitmap"


@pytest.mark.parametrize(
    ("shape", "size"),
    [((480, 640), (427, 320)), ((4000, 5999), (480, 320)), ((37, 53), (36, 30)), ((1, 4000), (544, 1))]
    + [((500, 333), (213, 320)), ((400, 300), (320, 240))],
)
def test_shrinking_equals_opencvs_float_resize_bit_for_bit(shape, size):
    """OpenCV's portable float bilinear (what ARM runs; x86 builds may take Intel IPP's, 1e-5 apart)."""
    from runtime.preprocess import shrink_bilinear

    array = np.random.default_rng(0).integers(0, 65535, (*shape, 3)).astype(np.uint16)
    use_ipp = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    try:
        expected = cv2.resize(array.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    finally:
        cv2.ipp.setUseIPP(use_ipp)
    np.testing.assert_array_equal(shrink_bilinear(array, size), expected)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
@pytest.mark.parametrize(("height", "width"), [(4000, 1), (1, 4000)])
def test_one_pixel_wide_or_tall_images_decode(ext, height, width):
    data = encode(np.full((height, width, 3), 200, np.uint8), ext)
    image = decode(data, max_pixels=24_000_000, **SIZES)
    assert (image.width, image.height) == (width, height)
    assert min(image.array.shape[1:]) == 1 and max(image.array.shape[1:]) == 544


def test_decode_cost_counts_what_the_decoder_allocates():
    from runtime.images import decode_cost

    photo = read_header(encode(np.zeros((3000, 4000, 3), np.uint8), ".jpg"))
    png = read_header(encode(np.zeros((3000, 4000, 3), np.uint8), ".png"))
    assert decode_cost(png, **SIZES) == 12_000_000
    assert decode_cost(photo, **SIZES) == 500 * 375  # libjpeg decodes it at 1/8 scale
    progressive = read_header(
        cv2.imencode(".jpg", np.zeros((3000, 4000, 3), np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    )
    assert progressive.progressive and decode_cost(progressive, **SIZES) == 12_000_000  # no reduced decode
    wide = read_header(encode(np.zeros((3000, 4000, 3), np.uint16), ".png"))
    assert wide.wide_samples and decode_cost(wide, **SIZES) == 24_000_000  # twice the bytes


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xd8" + b"\xff\xe0\x00\x02" * (19 * 2**20 // 4),  # millions of empty segments: 4.3 s on the old scan
        b"\xff\xd8" + b"\xff" * (19 * 2**20),  # fill bytes: 2 s
    ],
    ids=["empty-segments", "fill-bytes"],
)
def test_header_scan_is_bounded(body):
    start = time.perf_counter()
    with pytest.raises(ValueError, match="JPEG"):
        read_header(body)
    assert time.perf_counter() - start < 0.25


@pytest.mark.anyio
async def test_a_malformed_basic_header_does_not_hide_a_good_key(app_factory, serve, jpeg):
    async with serve(app_factory(api_key="k3y")) as client:
        for authorization in ("Basic !!!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Digest x"):
            headers = {"X-API-Key": "k3y", "Authorization": authorization}
            assert (await client.get("/v1/model", headers=headers)).status_code == 200, authorization
        assert (await client.get("/v1/model", headers={"Authorization": "Basic !!!!"})).status_code == 401


@pytest.mark.anyio
async def test_browser_safety_headers_and_head_on_probes(app_factory, serve):
    async with serve(app_factory()) as client:
        for path in ("/healthz", "/v1/model", "/", "/docs", "/nowhere"):
            response = await client.get(path)
            assert response.headers["x-content-type-options"] == "nosniff", path
            assert response.headers["x-frame-options"] == "DENY", path
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"], path
        page = await client.get("/")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self' 'sha256-" in policy and "unsafe-inline" not in policy
        for path in ("/healthz", "/readyz"):
            head, get = await client.head(path), await client.get(path)
            assert head.status_code == get.status_code != 405 and head.content == b"", path


@pytest.mark.anyio
async def test_docs_need_no_cdn(app_factory, serve):
    async with serve(app_factory()) as client:
        page = await client.get("/docs")
        assert page.status_code == 200 and "https://" not in page.text
        for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
            asset = await client.get(f"/docs/{name}")
            assert asset.status_code == 200 and len(asset.content) > 10_000, name
        assert (await client.get("/docs/../../settings.py")).status_code == 404


def test_model_description_keeps_the_training_machine_private():
    from service.routes.model import public_provenance

    provenance = {
        "command": "/home/me/detector/train.py --data /home/me/coco --token abc",
        "dataset": {"train": "/home/me/coco/train.json", "val": "C:\\data\\val.json"},
        "epochs": 9,
        "code_version": "5fa5f2b",
    }
    public = public_provenance(provenance)
    assert public == {"dataset": {"train": "train.json", "val": "val.json"}, "epochs": 9, "code_version": "5fa5f2b"}


@pytest.mark.anyio
async def test_multipart_files_stay_in_memory(app_factory, serve, fake_model_cls, monkeypatch):
    """Compose's 64 MB /tmp filled with five 19 MB uploads (parts over 1 MB were spooled there): 500s."""
    photo = encode(np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8), ".png")
    assert len(photo) > 2**20

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_space)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_space)
    async with serve(app_factory(predict=fake_model_cls())) as client:
        response = await client.post("/detect", files=[("files", ("big.png", photo, "image/png"))])
    assert response.status_code == 200, response.text


def test_misspelt_service_variables_are_refused(monkeypatch, checkpoint):
    monkeypatch.setenv("SERVICE_MAX_BATCH", "8")
    with pytest.raises(ValueError, match="SERVICE_MAX_BATCH .did you mean SERVICE_MAX_BATCH_SIZE"):
        Settings(checkpoint=checkpoint)


def test_budgets_must_hold_one_request(checkpoint):
    with pytest.raises(ValueError, match="decode_budget_pixels"):
        Settings(checkpoint=checkpoint, max_pixels=30_000_000, decode_budget_pixels=20_000_000)
    with pytest.raises(ValueError, match="body_budget_bytes"):
        Settings(checkpoint=checkpoint, max_body_bytes=2**20, body_budget_bytes=2**19)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2, --cpus 1.5
        ({"cpu.max": "max 100000\n"}, None),  # no quota
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_threads_default_to_the_cpu_quota(tmp_path, files, expected):
    from service.settings import available_cpus

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    cpus = available_cpus(tmp_path)
    host = available_cpus(tmp_path / "absent")
    assert cpus == (min(expected, host) if expected else host)
