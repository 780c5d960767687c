"""The engines behind the service: the committed ONNX export is the demo checkpoint, and it runs without torch."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from detector import DEFAULT_EXPORT, DEMO_CHECKPOINT, DEMO_EXPORT
from runtime import EngineError, load_engine

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample" / "shapes.jpg"


def sample_array(path: Path = SAMPLE) -> np.ndarray:
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255


@pytest.fixture(scope="module")
def engines():
    pair = load_engine(DEMO_CHECKPOINT, threads=1), load_engine(DEMO_EXPORT, threads=2)
    yield pair
    for engine in pair:
        engine.close()


def test_auto_picks_the_engine_by_file(engines):
    assert [engine.name for engine in engines] == ["torch", "onnxruntime"]


def test_committed_export_describes_the_demo_checkpoint(engines):
    eager, exported = engines
    assert exported.card == eager.card  # configuration, categories, cost and provenance


def test_committed_export_detects_what_the_checkpoint_detects(engines):
    eager, exported = engines
    portrait = np.ascontiguousarray(sample_array()[:, :, 64:320])  # another shape than the sample's 512x384
    for image in (sample_array(), portrait):
        (a,), (b,) = eager.predict([image]), exported.predict([image])
        assert len(a.labels) >= 3
        assert np.array_equal(a.labels, b.labels)
        np.testing.assert_allclose(b.boxes, a.boxes, atol=0.05)  # pixels
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)


def test_a_batch_gives_each_image_its_own_detections(engines):
    _, exported = engines
    image = sample_array()
    flipped = np.ascontiguousarray(image[:, :, ::-1])
    batch = exported.predict([image, flipped, image])
    alone = [exported.predict([x])[0] for x in (image, flipped, image)]
    for got, expected in zip(batch, alone, strict=True):
        assert np.array_equal(got.labels, expected.labels) and np.allclose(got.boxes, expected.boxes, atol=1e-3)
    first, mirrored = batch[0].boxes[0], batch[1].boxes[0]  # the best box, seen in the mirror
    width = image.shape[2]
    assert np.allclose([width - first[2], width - first[0]], mirrored[[0, 2]], atol=3.0)


def test_onnx_engine_needs_no_torch():
    # The edge image has no torch: block it, then load the export and detect the sample's shapes.
    script = (
        "import sys, json; sys.modules['torch'] = sys.modules['torchvision'] = None\n"
        "import numpy as np, cv2\n"
        "from runtime import load_engine\n"
        f"image = cv2.cvtColor(cv2.imread({str(SAMPLE)!r}), cv2.COLOR_BGR2RGB)\n"
        "array = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255\n"
        f"engine = load_engine({str(DEMO_EXPORT)!r})\n"
        "(found,) = engine.predict([array])\n"
        "print(json.dumps({'confident': int((found.scores >= 0.5).sum()), 'classes': engine.card.categories.names}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["confident"] >= 5 and report["classes"] == ["circle", "square", "triangle", "star"]


def test_bad_model_files_raise_one_clear_error(tmp_path):
    with pytest.raises(EngineError, match="no such model file"):
        load_engine(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    with pytest.raises(EngineError, match="garbage.onnx: not a loadable ONNX model"):
        load_engine(garbage)
    # A valid ONNX graph that is not one of ours.
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), foreign)
    with pytest.raises(EngineError, match="without a model card; export it with python -m tools.export"):
        load_engine(foreign)
    with pytest.raises(EngineError, match="missing.pt: no such checkpoint file"):
        load_engine(tmp_path / "missing.pt")
    with pytest.raises(EngineError, match="unknown engine 'tensorrt'"):
        load_engine(DEMO_EXPORT, "tensorrt")


@pytest.fixture(scope="session")
def openvino_engine():
    """OpenVINO engines of the demo export that live to the end of the session: a torch data loader's fork
    crashed the test process about one time in four when shape-specific OpenVINO graphs had just been freed."""
    from runtime.openvino import OpenVinoEngine

    alive = []

    def make(threads: int, static_shapes: int = 4, path: Path = DEMO_EXPORT) -> OpenVinoEngine:
        alive.append(OpenVinoEngine(path, threads=threads, static_shapes=static_shapes))
        return alive[-1]

    yield make
    alive.clear()


def test_openvino_gives_a_repeated_shape_its_own_graph_with_the_same_detections(openvino_engine):
    engine = openvino_engine(threads=2)
    reference = load_engine(DEMO_EXPORT, threads=1)
    image = sample_array()
    portrait = np.ascontiguousarray(image[:, :, 64:320])
    first = engine.predict([image])[0]
    assert engine.compiled_shapes == []  # one sighting: the shape-agnostic graph
    batch = engine.predict([image, portrait, image])  # the second sighting of the sample's shape compiles it
    assert engine.compiled_shapes == [image.shape]
    again = engine.predict([image])[0]
    pair = engine.predict([image, image])  # on the shape's own graph's streams
    expected = reference.predict([image])[0]
    for got in (first, batch[0], batch[2], again, *pair):
        assert len(got.labels) >= 3 and np.array_equal(got.labels, expected.labels)
        np.testing.assert_allclose(got.boxes, expected.boxes, atol=0.05)
        np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4)
    expected_portrait = reference.predict([portrait])[0]
    assert np.array_equal(batch[1].labels, expected_portrait.labels)
    np.testing.assert_allclose(batch[1].scores, expected_portrait.scores, atol=1e-4)


@pytest.mark.slow  # three OpenVINO compiles: 7 s; the default suite's own-graph test covers the policy's core
def test_openvino_keeps_at_most_its_number_of_shape_graphs(openvino_engine):
    engine = openvino_engine(threads=1, static_shapes=1)
    image = sample_array()
    portrait = np.ascontiguousarray(image[:, :, 64:320])
    engine.predict([image, image])
    engine.predict([portrait, portrait])
    assert engine.compiled_shapes == [image.shape]  # full: the portrait stays on the shape-agnostic graph
    again = engine.predict([portrait])[0]
    np.testing.assert_allclose(again.scores, engine.predict([portrait, portrait])[1].scores, atol=1e-4)
    off = openvino_engine(threads=1, static_shapes=0)
    off.predict([image, image, image])
    assert off.compiled_shapes == []


@pytest.mark.slow  # three OpenVINO compiles: 6 s
def test_openvino_pads_photos_to_the_networks_multiple_of_32_so_that_they_share_a_graph(openvino_engine):
    from runtime.preprocess import to_model_input

    engine = openvino_engine(threads=1)
    unpadded = load_engine(DEMO_EXPORT, threads=1)  # ONNX Runtime runs what it is given
    image = to_model_input(cv2.imread(str(SAMPLE)), 320, 544)  # the demo's input: 320 x 427
    narrower = np.ascontiguousarray(image[:, :, :420])
    found = [engine.predict([x])[0] for x in (image, narrower)]
    assert engine.compiled_shapes == [(3, 320, 448)]  # both padded to one shape: its second sighting compiled it
    for x, got in zip((image, narrower), found, strict=True):
        expected = unpadded.predict([x])[0]
        assert len(got.labels) >= 3 and np.array_equal(got.labels[:5], expected.labels[:5])
        np.testing.assert_allclose(got.boxes[:5], expected.boxes[:5], atol=0.5)  # pixels
        # A box at the cut edge may score a little differently: its proposals could reach into the padding.
        np.testing.assert_allclose(got.scores[:5], expected.scores[:5], atol=0.03)
        assert got.boxes[:, 0::2].max() <= x.shape[2] and got.boxes[:, 1::2].max() <= x.shape[1]
    # An image the network enlarges (short side under 320) would be enlarged by another factor padded: not padded.
    shorter = np.ascontiguousarray(image[:, :300, :])
    for _ in range(2):
        engine.predict([shorter])
    assert engine.compiled_shapes == [(3, 320, 448), (3, 300, 427)]


def test_openvino_gives_nothing_where_there_is_nothing(openvino_engine):
    # Where the network finds nothing, OpenVINO (2026.4) returns one row of stale memory with label 0 instead of
    # none: on the COCO export, blank images came back as label 0 (background) at scores of 0.9 and more.
    # One thread: the stale row comes back there too, and a batch's streams share the same decoding of outputs.
    engine = openvino_engine(threads=1, path=DEFAULT_EXPORT)
    reference = load_engine(DEFAULT_EXPORT, threads=1)
    blanks = [np.full((3, 240, 320), level, np.float32) for level in (0.0, 0.5, 1.0)]
    assert all(len(found.labels) == 0 for found in reference.predict(blanks))  # ONNX Runtime finds nothing
    photo = sample_array(REPO / "data" / "sample" / "images" / "000000000471.jpg")
    for _ in range(2):  # the shape-agnostic graph, then the shapes' own; alone and after a photo's detections
        found = [engine.predict([blank])[0] for blank in blanks] + engine.predict([photo, *blanks])[1:]
        assert [len(f.labels) for f in found] == [0] * 6, [(f.labels, f.scores) for f in found]
