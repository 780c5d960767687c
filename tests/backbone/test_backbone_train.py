"""``python -m backbone.train``: a training step learns, a tiny ImageFolder trains end to end, bad input exits 2."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from backbone import create_backbone, read_state_dict
from backbone.train import (
    TrainState,
    build_optimizer,
    build_scheduler,
    evaluate,
    load_checkpoint,
    lr_factor,
    main,
    train_step,
)

REPO = Path(__file__).resolve().parents[2]
ARCH = "shufflenet_v1_g3_0.25x"
COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


def _write_image_folder(root: Path, per_class: int = 6) -> Path:
    for split in ("train", "val"):
        for name, rgb in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                shade = tuple(min(255, c + 4 * i) for c in rgb)
                Image.new("RGB", (72 + 4 * i, 64), shade).save(folder / f"{i}.png")
    return root


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(data), "--arch", ARCH, "--output-dir", str(out), "--image-size", "64",
        "--batch-size", "6", "--lr", "0.1", "--workers", "0", "--device", "cpu", *extra,
    ]  # fmt: skip


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _write_image_folder(tmp_path_factory.mktemp("imagefolder"))


@pytest.fixture(scope="module")
def two_epochs(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    assert main(_argv(data, out, "--epochs", "2", "--schedule", "linear")) == 0
    return out


def test_lr_schedule_warms_up_then_decays_to_zero():
    def f(step, schedule):
        return lr_factor(step, total_steps=100, warmup_steps=10, schedule=schedule)

    assert f(0, "linear") == pytest.approx(0.1)
    assert f(9, "linear") == pytest.approx(1.0)
    assert f(10, "cosine") == pytest.approx(1.0)
    assert f(55, "linear") == pytest.approx(0.5)
    assert f(55, "cosine") == pytest.approx(0.5)
    assert f(100, "linear") == f(100, "cosine") == pytest.approx(0.0)
    assert f(30, "cosine") > f(30, "linear")  # cosine stays high longer


def test_optimizer_exempts_norm_and_bias_from_weight_decay():
    model = create_backbone(ARCH, num_classes=3)
    decayed, exempt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=4e-5).param_groups
    assert decayed["weight_decay"] == 4e-5 and exempt["weight_decay"] == 0.0
    assert all(p.ndim == 4 or p.ndim == 2 for p in decayed["params"])
    assert all(p.ndim == 1 for p in exempt["params"])
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))


def test_training_steps_change_weights_and_lower_the_loss():
    torch.manual_seed(0)
    model = create_backbone(ARCH, num_classes=3).train()
    images, targets = torch.randn(6, 3, 64, 64), torch.tensor([0, 1, 2, 0, 1, 2])
    optimizer = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=4e-5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = [train_step(model, images, targets, nn.CrossEntropyLoss(), optimizer).item() for _ in range(8)]
    assert losses[-1] < 0.5 * losses[0], losses
    after = model.state_dict()
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert not torch.equal(after["conv1.0.weight"], before["conv1.0.weight"])


def test_evaluate_counts_top1_and_top5():
    # The "model" passes fixed logits through: class scores rank 0 > 1 > ... > 6 for every image.
    logits = torch.linspace(1.0, 0.0, 7).repeat(4, 1)
    targets = torch.tensor([0, 3, 4, 6])  # ranks 1, 4, 5, 7: top-1 hits 1 of 4, top-5 hits 3 of 4
    metrics = evaluate(
        nn.Identity(), DataLoader(TensorDataset(logits, targets), batch_size=3), device=torch.device("cpu")
    )
    assert metrics["top1"] == pytest.approx(25.0)
    assert metrics["top5"] == pytest.approx(75.0)
    assert metrics["val_loss"] == pytest.approx(nn.functional.cross_entropy(logits, targets).item())


def test_two_epochs_write_checkpoints_and_a_log(two_epochs):
    log = _log(two_epochs)
    assert [r["epoch"] for r in log] == [1, 2]
    for record in log:
        assert 0.0 <= record["top1"] <= record["top5"] <= 100.0
        assert record["train_loss"] > 0 and record["images_per_s"] > 0
    state = torch.load(two_epochs / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["arch"] == ARCH and state["classes"] == sorted(COLOURS)
    assert state["scheduler"]["last_epoch"] == 2 * 3  # 18 images / batch 6 = 3 steps per epoch
    assert not list(two_epochs.glob("*.tmp"))  # atomic writes leave no temporaries behind


def test_backbone_weights_load_into_create_backbone(two_epochs):
    weights = read_state_dict(two_epochs / "backbone.pt")
    model = create_backbone(ARCH, num_classes=len(COLOURS), weights=two_epochs / "backbone.pt")
    assert weights.keys() == model.state_dict().keys()
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value), key
    body = create_backbone(ARCH, num_classes=len(COLOURS), features_only=True, weights=two_epochs / "backbone.pt")
    assert len(body.forward_features(torch.randn(1, 3, 64, 64))) == 3


def test_resume_continues_from_epoch_two_to_three(data, two_epochs, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(two_epochs, out)
    assert main(_argv(data, out, "--epochs", "3", "--schedule", "linear", "--resume")) == 0
    log = _log(out)
    assert [r["epoch"] for r in log] == [1, 2, 3]  # epochs 1-2 were not trained again
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 3
    # The scheduler continued from step 6: the linear schedule ends exactly at 0 after 9 steps in all.
    assert state["scheduler"]["last_epoch"] == 9
    assert log[-1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_resume_restores_optimizer_and_scheduler_state(two_epochs):
    saved = torch.load(two_epochs / "last.pt", map_location="cpu", weights_only=True)
    model = create_backbone(ARCH, num_classes=len(COLOURS))
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=4e-5)
    scheduler = build_scheduler(optimizer, schedule="linear", total_steps=9, warmup_steps=0)
    ts = TrainState(model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False))
    assert load_checkpoint(two_epochs / "last.pt", ts, arch=ARCH, classes=sorted(COLOURS)) == 2
    restored = optimizer.state_dict()
    assert restored["state"].keys() == saved["optimizer"]["state"].keys() != set()
    for index, buffers in saved["optimizer"]["state"].items():
        assert torch.equal(restored["state"][index]["momentum_buffer"], buffers["momentum_buffer"])
    assert scheduler.last_epoch == 6
    assert torch.equal(model.state_dict()["fc.weight"], saved["model"]["fc.weight"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--arch": "resnet50"}, "unknown --arch 'resnet50'"),
        ({"--epochs": "0"}, "--epochs must be positive"),
        ({"--batch-size": "-2"}, "--batch-size must be positive"),
        ({"--lr": "0"}, "--lr must be positive"),
        ({"--image-size": "16"}, "--image-size must be at least 32"),
        ({"--device": "cpu", "--amp": None}, "--amp needs a CUDA"),
        ({"--device": "nonsense"}, "--device 'nonsense'"),
        ({"--resume": None}, "--resume: no checkpoint"),
        ({"--momentum": "1.5"}, "--momentum and --label-smoothing must be in [0, 1)"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(data, tmp_path, capsys, change, message):
    argv = _argv(data, tmp_path / "out")
    for flag, value in change.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag] if value is None else [flag, value]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_missing_split_or_empty_folder_exits_2(tmp_path, capsys):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(tmp_path, tmp_path / "o"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no such directory: {tmp_path / 'val'}" in err[0], err
    (tmp_path / "val" / "a").mkdir(parents=True)  # class folders but no images: ImageFolder's error, one line
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(tmp_path, tmp_path / "o"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data:" in err[0], err


def test_nonexistent_data_exits_2_with_one_line_in_a_subprocess(tmp_path):
    missing = tmp_path / "nowhere"
    out = subprocess.run(
        [sys.executable, "-m", "backbone.train", "--data", str(missing), "--arch", ARCH],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "Traceback" not in out.stderr, out.stderr
    assert out.stdout == ""


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(data, tmp_path):
    out = tmp_path / "out"
    argv = _argv(data, out, "--epochs", "2")
    argv[argv.index("--batch-size") + 1] = "3"  # per process: still 3 steps an epoch
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "backbone.train", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 process(es)" in result.stdout and result.stdout.count("epoch 2:") == 1  # rank 0 alone reports
    assert [r["epoch"] for r in _log(out)] == [1, 2]
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 6
    assert not any(k.startswith("module.") for k in state["model"])
