"""POST /detect in-process: real images through the random-weight model, options, and every bad input."""

import struct

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.anyio
NAMES = {"person": 1, "car": 3, "dog": 18}


@pytest.fixture(scope="module")
async def api(app_factory, serve):
    """The app on the random-weight model, small limits so that tests can cross them cheaply."""
    app = app_factory(max_body_bytes=2_000_000, max_pixels=5_000_000, max_images_per_request=4, queue_size=16)
    async with serve(app) as client:
        yield client


def reencode(jpeg: bytes, ext: str, *params: int) -> bytes:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(ext, image, list(params))[1].tobytes()


def check_result(result: dict, width: int, height: int) -> None:
    assert (result["width"], result["height"]) == (width, height)
    for d in result["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        assert NAMES[d["label"]] == d["category_id"] and 0 <= d["score"] <= 1


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for word in words:
        assert word in detail, detail


async def test_raw_jpeg_body(api, jpeg):
    response = await api.post(
        "/detect", params={"score_threshold": 0}, content=jpeg, headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["results"]) == 1
    check_result(body["results"][0], 640, 480)
    assert body["results"][0]["detections"], "random weights at threshold 0 still give boxes"
    model = {"name": "edge", "backbone": "shufflenet_v2_x0_5", "checkpoint": "random-edge.pt", "engine": "torch"}
    assert body["model"] == model
    timings = body["timings"]
    assert timings["inference_ms"] > 0 and timings["total_ms"] >= timings["queue_ms"] and timings["batch_sizes"] == [1]


async def test_multipart_images_come_back_in_order(api, image_paths):
    chosen = [image_paths[i] for i in (0, 1, 2, 3)]
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in chosen]
    response = await api.post("/detect", files=files, data={"score_threshold": "0"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    for path, result in zip(chosen, results, strict=True):
        height, width = cv2.imread(str(path)).shape[:2]
        check_result(result, width, height)


async def test_single_file_field_and_grayscale_photo(api, coco128):
    gray = (coco128 / "images" / "000000000086.jpg").read_bytes()
    response = await api.post("/detect", files={"file": ("gray.jpg", gray, "image/jpeg")})
    assert response.status_code == 200, response.text
    height, width = cv2.imread(str(coco128 / "images" / "000000000086.jpg")).shape[:2]
    check_result(response.json()["results"][0], width, height)


@pytest.mark.parametrize(("ext", "mime"), [(".png", "image/png"), (".webp", "image/webp"), (".bmp", "image/bmp")])
async def test_other_formats_as_raw_body(api, jpeg, ext, mime):
    response = await api.post("/detect", content=reencode(jpeg, ext), headers={"content-type": mime})
    assert response.status_code == 200, response.text
    check_result(response.json()["results"][0], 640, 480)


async def test_options_limit_and_filter(api, jpeg):
    raw = {"content": jpeg, "headers": {"content-type": "image/jpeg"}}
    few = await api.post("/detect", params={"score_threshold": 0, "max_detections": 2}, **raw)
    assert len(few.json()["results"][0]["detections"]) == 2
    everything = await api.post("/detect", params={"score_threshold": 0}, **raw)
    found = {d["label"] for d in everything.json()["results"][0]["detections"]}
    assert found, "the random-weight model detects something at threshold 0"
    wanted = sorted(found)[0]
    only = await api.post("/detect", params={"score_threshold": 0, "classes": wanted}, **raw)
    labels = {d["label"] for d in only.json()["results"][0]["detections"]}
    assert labels == {wanted}
    two = await api.post(
        "/detect", params=[("score_threshold", 0), ("classes", "dog,car"), ("classes", "person")], **raw
    )
    assert two.status_code == 200
    none = await api.post("/detect", params={"score_threshold": 0.99}, **raw)
    assert none.json()["results"][0]["detections"] == []
    form = await api.post(
        "/detect",
        files={"files": ("a.jpg", jpeg)},
        data={"score_threshold": "0", "max_detections": "1", "classes": wanted},
    )
    assert [d["label"] for d in form.json()["results"][0]["detections"]] == [wanted]


async def test_boxes_are_in_original_pixels(app_factory, serve, fake_model_cls, jpeg):
    model = fake_model_cls()
    async with serve(app_factory(predict=model)) as client:
        big = reencode(jpeg, ".png")
        small = cv2.imencode(".png", np.full((60, 80, 3), 100, np.uint8))[1].tobytes()
        files = [("files", ("big.png", big)), ("files", ("small.png", small))]
        response = await client.post("/detect", files=files, params={"score_threshold": 0})
    big_result, small_result = response.json()["results"]
    # The stand-in model boxes the middle half of the image it was given (resized to 427 x 320 for the big one).
    assert big_result["detections"][0]["box"] == pytest.approx([160, 120, 480, 360], abs=1)
    assert small_result["detections"][0]["box"] == pytest.approx([20, 15, 60, 45], abs=0.01)
    assert small_result["detections"][0]["score"] == pytest.approx(100 / 255, abs=1e-3)


def png_declaring(width: int, height: int) -> bytes:
    small = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    return small[:16] + struct.pack(">II", width, height) + small[24:]


BAD_RAW = [
    ("empty body", b"", "image/jpeg", 400, ["empty body"]),
    ("not an image", b"this is not an image at all", "image/jpeg", 400, ["not an image"]),
    ("unsupported type", b"hello", "text/plain", 415, ["unsupported Content-Type", "text/plain"]),
    ("gif type", b"GIF89a" + bytes(30), "image/gif", 415, ["image/gif"]),
    ("gif bytes", b"GIF89a" + bytes(30), "application/octet-stream", 415, ["GIF images are not supported"]),
    ("json", b"{}", "application/json", 415, ["application/json"]),
    ("bomb", png_declaring(100_000, 100_000), "image/png", 413, ["100000 x 100000", "limit"]),
]


@pytest.mark.parametrize(("case", "data", "mime", "status", "words"), BAD_RAW, ids=[c[0] for c in BAD_RAW])
async def test_bad_raw_bodies(api, case, data, mime, status, words):
    assert_error(await api.post("/detect", content=data, headers={"content-type": mime}), status, *words)


async def test_truncated_and_corrupt_images(api, jpeg):
    truncated = await api.post("/detect", content=jpeg[: len(jpeg) // 2], headers={"content-type": "image/jpeg"})
    assert_error(truncated, 400, "truncated")
    png = reencode(jpeg, ".png")
    corrupt = png[:100] + bytes(len(png) - 100)
    assert_error(await api.post("/detect", content=corrupt, headers={"content-type": "image/png"}), 400, "corrupt")


async def test_missing_content_type(api, jpeg):
    assert_error(await api.post("/detect", content=jpeg, headers={"content-type": ""}), 415, "no Content-Type")


async def test_body_over_the_limit_declared(api):
    big = bytes(2_000_001)
    assert_error(await api.post("/detect", content=big, headers={"content-type": "image/jpeg"}), 413, "limit")


async def test_body_over_the_limit_is_stopped_while_reading(api):
    sent = []

    async def chunks():  # no Content-Length: the service must count
        for _ in range(100):
            sent.append(1)
            yield bytes(100_000)

    response = await api.post("/detect", content=chunks(), headers={"content-type": "image/jpeg"})
    assert_error(response, 413, "over the limit of 2000000 bytes")
    assert len(sent) <= 22, "reading stopped at the limit, not at the end of the body"


async def test_multipart_over_the_limit(api, jpeg):
    files = [("files", (f"{i}.jpg", bytes(600_000))) for i in range(4)]
    assert_error(await api.post("/detect", files=files), 413, "limit")


async def test_too_many_images(api, jpeg):
    files = [("files", (f"{i}.jpg", jpeg)) for i in range(5)]
    assert_error(await api.post("/detect", files=files), 413, "too many images", "4")


async def test_bad_image_among_good_ones_is_named(api, jpeg):
    files = [
        ("files", ("good.jpg", jpeg)),
        ("files", ("bad.jpg", b"nope")),
        ("files", ("bomb.png", png_declaring(9000, 9000))),
    ]
    assert_error(await api.post("/detect", files=files), 400, "bad.jpg", "not an image")


async def test_bomb_among_good_ones_is_refused_before_decoding(api, jpeg):
    files = [("files", ("good.jpg", jpeg)), ("files", ("bomb.png", png_declaring(9000, 9000)))]
    assert_error(await api.post("/detect", files=files), 413, "bomb.png", "81000000 pixels")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"score_threshold": "abc"}, "score_threshold"),
        ({"score_threshold": "-0.1"}, "score_threshold"),
        ({"score_threshold": "1.5"}, "score_threshold"),
        ({"max_detections": "-1"}, "max_detections"),
        ({"max_detections": "2.5"}, "max_detections"),
        ({"max_detections": "100000"}, "max_detections"),
        ({"unknown_option": "1"}, "unknown_option"),
    ],
)
async def test_bad_option_values(api, jpeg, params, field):
    raw = await api.post("/detect", params=params, content=jpeg, headers={"content-type": "image/jpeg"})
    assert_error(raw, 422, field)
    assert raw.json()["errors"][0]["loc"][-1] == field
    form = await api.post("/detect", data=params, files={"files": ("a.jpg", jpeg)})
    assert_error(form, 422, field)


async def test_unknown_class_and_option_given_twice(api, jpeg):
    raw = {"content": jpeg, "headers": {"content-type": "image/jpeg"}}
    assert_error(await api.post("/detect", params={"classes": "unicorn"}, **raw), 422, "unicorn", "dog")
    twice = await api.post(
        "/detect",
        params={"max_detections": 3, "score_threshold": 0},
        data={"max_detections": "1"},
        files={"files": ("a.jpg", jpeg)},
    )
    assert len(twice.json()["results"][0]["detections"]) == 1, "the form field wins"


MULTIPART = "multipart/form-data; boundary=xyz"
BAD_MULTIPART = [
    ("no boundary", "multipart/form-data", b"--xyz--\r\n", 400, ["boundary"]),
    ("garbage", MULTIPART, b"\x00\x01garbage" * 50, 400, ["multipart"]),
    ("no name", MULTIPART, b"--xyz\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--xyz--\r\n", 400, ["name"]),
    (
        "only options",
        MULTIPART,
        b'--xyz\r\nContent-Disposition: form-data; name="max_detections"\r\n\r\n3\r\n--xyz--\r\n',
        400,
        ["no image"],
    ),
    (
        "text as image",
        MULTIPART,
        b'--xyz\r\nContent-Disposition: form-data; name="files"\r\n\r\nabc\r\n--xyz--\r\n',
        422,
        ["file upload"],
    ),
    (
        "other file field",
        MULTIPART,
        b'--xyz\r\nContent-Disposition: form-data; name="img"; filename="a.jpg"\r\n\r\nabc\r\n--xyz--\r\n',
        422,
        ["'img'"],
    ),
    (
        "empty file",
        MULTIPART,
        b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\n\r\n--xyz--\r\n',
        400,
        ["a.jpg", "empty"],
    ),
    (
        "huge option",
        MULTIPART,
        b'--xyz\r\nContent-Disposition: form-data; name="classes"\r\n\r\n' + b"x" * 10_000 + b"\r\n--xyz--\r\n",
        400,
        ["maximum size"],
    ),
]


@pytest.mark.parametrize(("case", "mime", "data", "status", "words"), BAD_MULTIPART, ids=[c[0] for c in BAD_MULTIPART])
async def test_broken_multipart(api, case, mime, data, status, words):
    assert_error(await api.post("/detect", content=data, headers={"content-type": mime}), status, *words)


async def test_wrong_method_and_unknown_path_are_json(api):
    assert_error(await api.get("/detect"), 405, "Method Not Allowed")
    assert_error(await api.get("/nope"), 404, "Not Found")
