"""python -m tools.train: it learns at the rate of its global batch, resumes exactly (and refuses what would move
the schedule), gives every DDP rank its own random draws with the same weights, and refuses bad input."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from detector import read_checkpoint, synthetic
from detector.config import get_config
from detector.data import CocoDetectionDataset, make_loader
from detector.model import Detector
from detector.training import WeightAverage, fit_epochs, restore
from tools.train import main

REPO = Path(__file__).resolve().parents[2]
# A detector small enough to train for a few steps in seconds on one CPU thread.
SMALL = ["--set", "min_size=96", "--set", "max_size=128", "--set", "train_min_sizes=[96]"]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> tuple[Path, Path]:
    return synthetic.generate(tmp_path_factory.mktemp("tiny") / "set", num_images=8, seed=11, image_size=(96, 128))


def _args(tiny_set, out: Path, *extra: str) -> list[str]:
    images, annotations = tiny_set
    data = ["--train-images", str(images), "--train-annotations", str(annotations)]
    run = ["--output-dir", str(out), "--workers", "0", "--no-progress", "--device", "cpu", "--batch-size", "4"]
    return [*data, *run, *SMALL, *extra]


def test_a_few_iterations_lower_the_loss(tiny_set):
    torch.manual_seed(0)
    dataset = CocoDetectionDataset(*tiny_set, train=False)
    images, targets = next(iter(make_loader(dataset, batch_size=4, train=False, workers=0)))
    detector = Detector(get_config("edge", min_size=96, max_size=128, train_min_sizes=(96,)), dataset.categories)
    detector.train()
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(12):
        loss = sum(detector(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


def test_resume_continues_from_the_saved_step_and_optimizer_state(tiny_set, tmp_path, capsys):
    # A step schedule depends only on the epoch, so two epochs in one go and one-then-resume must agree.
    schedule = ["--schedule", "step", "--lr-steps", "1", "--warmup-iters", "1", "--lr", "0.01", "--eval-every", "0"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(_args(tiny_set, straight, "--epochs", "2", *schedule)) == 0
    assert main(_args(tiny_set, stopped, "--epochs", "1", *schedule)) == 0
    after_one = read_checkpoint(stopped / "last.pt")
    assert after_one["training"]["epoch"] == 1
    assert after_one["training"]["scheduler"]["last_epoch"] == 2  # 8 images / batch 4
    assert after_one["training"]["optimizer"]["state"], "momentum buffers are saved"
    capsys.readouterr()
    assert main(_args(tiny_set, stopped, "--epochs", "2", "--resume", *schedule)) == 0
    assert "resumed from" in capsys.readouterr().out
    resumed = read_checkpoint(stopped / "last.pt")
    assert resumed["training"]["epoch"] == 2 and resumed["training"]["scheduler"]["last_epoch"] == 4
    assert resumed["provenance"]["epochs"] == 2
    expected, actual = _weights(straight / "final.pt"), _weights(stopped / "final.pt")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    # The second epoch really trained: the weights moved on from the one-epoch checkpoint.
    assert any(not torch.equal(after_one["state_dict"][k], actual[k]) for k in actual)


@pytest.mark.slow  # four training runs with evaluation: 6 s; exact resume without the average is in the default suite
def test_weight_average_follows_every_step_ships_as_final_and_resumes_exactly(tiny_set, tmp_path, capsys):
    schedule = ["--schedule", "step", "--lr-steps", "5", "--warmup-iters", "1", "--lr", "0.01", "--eval-every", "1"]
    average = ["--weight-average", "0.5"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(_args(tiny_set, straight, "--epochs", "2", *schedule, *average)) == 0
    assert main(_args(tiny_set, stopped, "--epochs", "1", *schedule, *average)) == 0
    capsys.readouterr()
    assert main(_args(tiny_set, stopped, "--epochs", "2", "--resume", *schedule, *average)) == 0
    assert "warning" not in capsys.readouterr().out
    last, final = read_checkpoint(straight / "last.pt"), read_checkpoint(straight / "final.pt")
    kept = last["training"]["weight_average"]
    assert kept["updates"] == 4 and kept["decay"] == 0.5  # 2 epochs of 8 images in batches of 4
    # final.pt is the average, not the last weights, and says so with both evaluations.
    trained = [k for k, v in last["state_dict"].items() if v.is_floating_point() and "box_predictor" in k]
    for key in final["state_dict"]:
        assert torch.equal(final["state_dict"][key], kept["weights"][f"model.{key}"]), key
    assert any(not torch.equal(final["state_dict"][k], last["state_dict"][k]) for k in trained)
    records = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval" in r]
    assert len(evals) == 2 and all({"AP", "AP50"} <= r["eval_average"]["stats"].keys() for r in evals)
    assert final["provenance"]["metrics"] == evals[-1]["eval_average"]
    assert final["provenance"]["last_weights_metrics"] == evals[-1]["eval"]
    assert final["provenance"]["weight_average"] == {"decay": 0.5, "updates": 4}
    # Resumed, the average goes on as if never stopped.
    resumed = read_checkpoint(stopped / "final.pt")["state_dict"]
    for key in resumed:
        assert torch.equal(resumed[key], final["state_dict"][key]), key
    # Resuming without the option drops the average, saying so.
    assert main(_args(tiny_set, stopped, "--epochs", "3", "--resume", *schedule)) == 0
    assert "has no --weight-average, so it is dropped" in capsys.readouterr().out


def test_weight_average_is_the_ramped_exponential_average_of_the_weights():
    network = torch.nn.Linear(2, 1)
    average = WeightAverage(network, decay=0.9, ramp=2)
    expected = network.weight.detach().clone()
    for step in range(1, 4):
        with torch.no_grad():
            network.weight.add_(1.0)
        average.update()
        decay = 0.9 * (1 - math.exp(-step / 2))
        expected = decay * expected + (1 - decay) * network.weight.detach()
        assert torch.allclose(average.network.weight, expected)
    assert not average.network.weight.requires_grad


def test_log_and_checkpoints_are_written(tiny_set, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [a for a in _args(tiny_set, out, "--epochs", "1", "--warmup-iters", "1") if a != "--no-progress"]
    assert main(argv) == 0
    progress = capsys.readouterr().err
    assert "epoch 1/1" in progress and "evaluating" in progress  # bars for training and for validation
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps and all({"lr", "loss", "images_per_s", "loss_classifier"} <= r.keys() for r in steps)
    evals = [r["eval"] for r in records if "eval" in r]
    assert len(evals) == 1 and {"AP", "AP50"} <= evals[0]["stats"].keys()
    final = read_checkpoint(out / "final.pt")
    assert "training" not in final  # the deliverable carries no optimizer state
    assert final["provenance"]["metrics"]["stats"] == evals[0]["stats"]
    assert final["config"]["min_size"] == 96


def test_adamw_without_flips_with_repeats_trains_and_saves_its_state(tiny_set, tmp_path):
    out = tmp_path / "adamw"
    extra = ("--optimizer", "adamw", "--lr", "1e-3", "--hflip", "0", "--repeat-threshold", "0.9")
    assert main(_args(tiny_set, out, "--epochs", "1", *extra)) == 0
    training = read_checkpoint(out / "last.pt")["training"]
    state = training["optimizer"]["state"]
    assert state and all({"exp_avg", "exp_avg_sq"} <= s.keys() for s in state.values())  # Adam's moments
    # The repeats lengthen the epoch, so a resume must be given them again.
    assert training["schedule"]["repeat_threshold"] == 0.9


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--epochs", "0"], "--epochs must be positive"),
        (["--set", "neck_width=3"], "unknown detector config fields: neck_width"),
        (["--set", "min_size=3OO"], "min_size must be int, got '3OO'"),
        (["--set", "anchor_sizes=[[16, 32], [64], [128], [256]]"], "anchor_sizes needs the same number of sizes"),
        (["--train-images", "/nowhere"], "give --train-images and --train-annotations together"),
        (["--hflip", "1.5"], "--hflip is a probability in [0, 1]"),
        (["--repeat-threshold", "0"], "--repeat-threshold is a fraction of the images in (0, 1]"),
        (["--crop", "-0.1"], "--crop is a probability in [0, 1]"),
        (["--zoom-out", "2"], "--zoom-out is a probability in [0, 1]"),
        (["--weight-average", "1"], "--weight-average is a decay in (0, 1)"),
        (["--optimizer", "adam"], "invalid choice: 'adam'"),
        (["--time-budget", "5"], "--time-budget takes positive minutes and fits a cosine schedule"),
        (["--time-budget", "0", "--schedule", "cosine"], "--time-budget takes positive minutes"),
        (["--teacher-ignore-score", "0.4"], "--teacher-ignore-score is a score in (0, --teacher-score)"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(extra)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_annotations_and_resume_without_checkpoint_exit_2(tiny_set, tmp_path, capsys):
    images, _ = tiny_set
    missing = tmp_path / "nope.json"
    argv = ["--train-images", str(images), "--train-annotations", str(missing), "--output-dir", str(tmp_path)]
    assert main([*argv, "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0]
    assert main(_args(tiny_set, tmp_path / "empty", "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "last.pt" in err[-1]


_RANK_WORKER = """
    import os, sys, torch
    import tools.train as train

    evaluate = train.evaluate

    def evaluate_and_dump(detector, val, batch_size, **kwargs):  # runs on every rank after the last epoch
        torch.save(detector.model.state_dict(), os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
        return evaluate(detector, val, batch_size, **kwargs)

    train.evaluate = evaluate_and_dump
    sys.exit(train.main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_two_process_torchrun_ends_with_identical_weights(tiny_set, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(_RANK_WORKER))
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(worker)]
    command += [str(tmp_path), *_args(tiny_set, out, "--epochs", "1", "--warmup-iters", "1", "--batch-size", "2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    saved = _weights(out / "final.pt")
    assert rank0.keys() == rank1.keys() == saved.keys()
    # Parameters must agree exactly. BatchNorm running statistics are each rank's own (DDP broadcasts rank 0's
    # at every forward, then each rank updates them from its batch); the checkpoint holds rank 0's.
    parameters = [k for k in rank0 if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(parameters) > 100
    for key in parameters:
        assert torch.equal(rank0[key], rank1[key]), key
    for key in rank0:
        assert torch.equal(rank0[key], saved[key]), key
    # Each rank drew its own flips, scales and RoI samples, and resuming gets each its own state back.
    training = read_checkpoint(out / "last.pt")["training"]
    assert training["schedule"]["world_size"] == 2 and len(training["rng"]) == 2
    assert not torch.equal(training["rng"][0]["cpu"], training["rng"][1]["cpu"])
    # The same run on one process would move the schedule: refused, naming what differs.
    assert main(_args(tiny_set, out, "--epochs", "2", "--warmup-iters", "1", "--batch-size", "2", "--resume")) == 2


def test_lr_is_for_16_images_and_scales_with_the_global_batch(tiny_set, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_set, out, "--epochs", "1", "--lr", "0.02", "--eval-every", "0")) == 0
    assert "peak lr 0.005: --lr 0.02 for 16 images, scaled to 4 per step" in capsys.readouterr().out
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert start["peak_lr"] == pytest.approx(0.005) and start["global_batch"] == 4
    optimizer = read_checkpoint(out / "last.pt")["training"]["optimizer"]
    assert optimizer["param_groups"][0]["initial_lr"] == pytest.approx(0.005)
    provenance = read_checkpoint(out / "final.pt")["provenance"]
    assert provenance["peak_lr"] == pytest.approx(0.005) and provenance["global_batch"] == 4


def test_fit_epochs_spends_nine_tenths_of_what_remains():
    # 10 min budget, 60 s gone of which the first epoch took 50 s: 0.9 * 540 / 50 = 9.7, so 9 more.
    assert fit_epochs(600, 60, 50, done=1, most=100) == 10
    assert fit_epochs(600, 60, 50, done=1, most=6) == 6  # --epochs stays the ceiling
    assert fit_epochs(60, 90, 50, done=1, most=100) == 1  # over budget already: stop after the epoch done


def test_time_budget_sets_the_run_length_and_a_resume_keeps_it(tiny_set, tmp_path, capsys):
    out = tmp_path / "run"
    budget = ["--schedule", "cosine", "--eval-every", "0", "--epochs", "40", "--time-budget", "0.001"]
    assert main(_args(tiny_set, out, *budget)) == 0  # 0.06 s: fits the one epoch already done
    assert "so 1 epochs" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {r["epoch"] for r in records if "loss" in r} == {1}
    assert [r["epochs"] for r in records if "time_budget_min" in r] == [1]
    assert read_checkpoint(out / "final.pt")["provenance"]["epochs"] == 1
    assert read_checkpoint(out / "last.pt")["training"]["schedule"]["epochs"] == 1
    # A resume with a generous budget continues the fitted schedule (here: already complete), not a new one.
    assert main(_args(tiny_set, out, *budget[:-1], "30", "--resume")) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {r["epoch"] for r in records if "loss" in r} == {1}


@pytest.mark.slow  # two training runs: 3 s
def test_init_starts_a_fresh_schedule_from_a_checkpoints_weights(tiny_set, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(_args(tiny_set, first, "--epochs", "1", "--eval-every", "0")) == 0
    # lr 0: the second run's weights can only be the ones it started from.
    zero = ["--epochs", "1", "--eval-every", "0", "--lr", "1e-12", "--warmup-iters", "1", "--init"]
    assert main(_args(tiny_set, second, *zero, str(first / "final.pt"))) == 0
    before, after = _weights(first / "final.pt"), _weights(second / "final.pt")
    learnt = [k for k in before if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in learnt)
    provenance = read_checkpoint(second / "final.pt")["provenance"]
    assert provenance["init"] == "final.pt" and provenance["epochs"] == 1
    training = read_checkpoint(second / "last.pt")["training"]
    assert training["epoch"] == 1  # a new schedule, not the first run's continued
    capsys.readouterr()
    # Training-only fields may change (that is fine-tuning); the network may not.
    scales = [*SMALL[:-1], "train_min_sizes=[96, 112]", "--epochs", "1", "--eval-every", "0"]
    assert main([*_args(tiny_set, tmp_path / "third", "--init", str(first / "final.pt")), *scales]) == 0
    wider = ["--set", "box_head_width=64", "--epochs", "1"]
    assert main([*_args(tiny_set, tmp_path / "fourth", "--init", str(first / "final.pt")), *wider]) == 2
    assert "--init needs a checkpoint of the same network" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(_args(tiny_set, first, "--resume", "--init", str(first / "final.pt")))
    assert exit_info.value.code == 2


def test_resume_refuses_another_batch_size(tiny_set, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_set, out, "--epochs", "1", "--eval-every", "0")) == 0
    capsys.readouterr()
    assert main([*_args(tiny_set, out, "--epochs", "2", "--resume", "--eval-every", "0"), "--batch-size", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch_size 4" in err[0] and "batch_size 2" in err[0], err


@pytest.mark.slow  # two training runs: 3 s
def test_a_checkpoint_from_before_the_resume_checks_still_resumes_exactly(tiny_set, tmp_path, capsys):
    schedule = ["--schedule", "step", "--lr-steps", "1", "--warmup-iters", "1", "--eval-every", "0"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(_args(tiny_set, straight, "--epochs", "2", *schedule)) == 0
    assert main(_args(tiny_set, stopped, "--epochs", "1", *schedule)) == 0
    # Rewrite last.pt as the code before the resume checks wrote it: one CPU RNG state, no schedule record.
    payload = read_checkpoint(stopped / "last.pt")
    training = payload["training"]
    training["torch_rng"] = training.pop("rng")[0]["cpu"]
    del training["schedule"]
    torch.save(payload, stopped / "last.pt")
    capsys.readouterr()
    assert main(_args(tiny_set, stopped, "--epochs", "2", "--resume", *schedule)) == 0
    out = capsys.readouterr().out
    assert "warning:" in out and "predates the resume checks" in out
    expected, actual = _weights(straight / "final.pt"), _weights(stopped / "final.pt")
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    # Such a checkpoint still refuses a run that would move its steps: here a batch of 2 instead of 4.
    torch.save(payload, stopped / "last.pt")
    assert main([*_args(tiny_set, stopped, "--epochs", "2", "--resume", *schedule), "--batch-size", "2"]) == 2
    assert "took 2 steps per epoch; this run takes 4" in capsys.readouterr().err


def test_resuming_with_mixed_precision_starts_a_fresh_loss_scale():
    # A run without --amp saves an empty scaler state; loading it into an enabled scaler used to raise.
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.SGD(params, lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    saved = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
        "rng": [{"cpu": torch.get_rng_state(), "cuda": None}],
    }
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    notes = restore(saved, optimizer, scheduler, scaler, torch.device("cpu"))
    assert scaler.is_enabled() and scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()
    assert notes == ["the checkpoint was trained without --amp: the loss scale starts afresh"]


def test_ranks_flip_differently_but_shuffle_alike(tiny_set):
    dataset = CocoDetectionDataset(*tiny_set, train=True, hflip=0.5)
    plain = CocoDetectionDataset(*tiny_set, train=False)

    def flips(rank: int) -> tuple[list[int], list[bool]]:
        loader = make_loader(dataset, batch_size=8, train=True, workers=1, seed=3, rank=rank)
        images, targets = next(iter(loader))
        ids = [t["image_id"] for t in targets]
        return ids, [not torch.equal(image, plain[plain.ids.index(i)][0]) for image, i in zip(images, ids, strict=True)]

    (order0, flipped0), (order1, flipped1) = flips(0), flips(1)
    assert order0 == order1, "every rank must shuffle alike to take its share of one permutation"
    assert flipped0 != flipped1, "workers on different ranks must not draw the same flips"


def test_the_backbone_can_learn_slower_than_the_head(tiny_set, tmp_path, capsys):
    out = tmp_path / "run"
    slow_body = ["--epochs", "1", "--eval-every", "0", "--warmup-iters", "1", "--set", "trainable_backbone_layers=1"]
    assert main(_args(tiny_set, out, *slow_body, "--lr", "0.02", "--backbone-lr-factor", "0.1")) == 0
    training = read_checkpoint(out / "last.pt")["training"]
    head, body = (group["initial_lr"] for group in training["optimizer"]["param_groups"])
    assert head == pytest.approx(0.005) and body == pytest.approx(0.0005)
    assert training["schedule"]["backbone_lr_factor"] == 0.1
    capsys.readouterr()
    # Another factor would put the resumed steps at other rates: refused.
    assert main(_args(tiny_set, out, *slow_body[:1], "2", *slow_body[2:], "--lr", "0.02", "--resume")) == 2
    assert "backbone_lr_factor 0.1" in capsys.readouterr().err
