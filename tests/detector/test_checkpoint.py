"""The checkpoint contract: one file rebuilds the same detector; a bad file is one clear error naming it."""

import pytest
import torch

from detector import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from detector.categories import Category, CategoryMap
from detector.checkpoint import FORMAT
from detector.config import get_config
from detector.model import Detector

CATEGORIES = CategoryMap([Category(1, "person"), Category(18, "dog"), Category(90, "toothbrush")])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    detector = Detector(
        get_config("edge", min_size=96, max_size=128, box_score_thresh=0.0),
        CATEGORIES,
        provenance={"dataset": "unit test", "epochs": 3},
    )
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(detector, path)
    return detector.eval(), path


def test_round_trip_rebuilds_the_same_detector(saved):
    original, path = saved
    loaded = load_checkpoint(path)
    assert not loaded.training
    assert loaded.config == original.config
    assert loaded.categories.to_coco() == CATEGORIES.to_coco()
    assert loaded.provenance["dataset"] == "unit test" and loaded.provenance["epochs"] == 3
    assert loaded.provenance["code_version"]
    for key, value in original.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    image = torch.rand(3, 100, 140, generator=torch.Generator().manual_seed(1))
    # A CPU checkpoint is loaded in channels-last layout (faster, and it changes rounding): compare like for like.
    expected, actual = original.channels_last().predict([image])[0], loaded.predict([image])[0]
    assert len(actual["boxes"]) > 0
    for key in ("boxes", "labels", "scores"):
        assert torch.equal(expected[key], actual[key]), key


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(CheckpointError, match="no such checkpoint file") as info:
        load_checkpoint(missing)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("cut", [0.5, 0.01])
def test_truncated_file_is_one_clear_error(saved, tmp_path, cut):
    _, path = saved
    data = path.read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as info:
        load_checkpoint(broken)
    assert str(broken) in str(info.value)
    # One whole sentence that says what was expected, not torch.load's paragraph cut off mid-sentence.
    assert "\n" not in str(info.value) and str(info.value).endswith("the file is truncated or not a torch file)")
    assert "expected a .pt file from python -m tools.train" in str(info.value)


def test_a_foreign_torch_file_is_refused(tmp_path):
    foreign = tmp_path / "classifier.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(CheckpointError, match=f"not a shufflenet-detect checkpoint.*{FORMAT}"):
        load_checkpoint(foreign)


def test_weights_that_do_not_fit_the_config_are_refused(saved, tmp_path):
    _, path = saved
    payload = read_checkpoint(path)
    payload["config"]["neck_channels"] += 32  # the stored weights are for the config's own width
    mismatched = tmp_path / "mismatched.pt"
    torch.save(payload, mismatched)
    with pytest.raises(CheckpointError, match="weights do not fit its configuration") as info:
        load_checkpoint(mismatched)
    assert str(mismatched) in str(info.value)
    payload["config"]["no_such_field"] = 1
    torch.save(payload, mismatched)
    with pytest.raises(CheckpointError, match="unknown detector config keys: no_such_field"):
        load_checkpoint(mismatched)


def test_a_failed_save_keeps_the_old_file_and_leaves_no_debris(saved, tmp_path, monkeypatch):
    detector, path = saved
    target = tmp_path / "keep.pt"
    target.write_bytes(path.read_bytes())
    before = target.read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(detector, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.pt"]
