"""python eval/coco.py: model and results modes, the files it writes, and one clear line for bad input."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from detector.categories import CategoryMap
from detector.checkpoint import load_checkpoint, save_checkpoint
from detector.config import get_config
from detector.data import CocoDetectionDataset, load_coco
from detector.model import Detector
from eval import coco as cli
from eval.scoring import STAT_KEYS

REPO = cli.Path(__file__).resolve().parents[2]
FAKE100 = ("results/instances_val2014_fakebbox100_results.json", "gt/instances_val2014_100.json")
SMALL = dict(min_size=128, max_size=192)  # a fast test-time size for random-weight checkpoints


def fingerprint(image: torch.Tensor) -> str:
    return hashlib.sha1(image.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class GroundTruthModel(nn.Module):
    """Stands in for FasterRCNN in eval mode and answers each image with its ground truth.

    The truth goes through torchvision's own resize and ``postprocess`` (which scales boxes back to each
    image's original size), so what is tested is everything after the network: coordinates and categories.
    """

    def __init__(self, transform: nn.Module, truth: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.transform = transform
        self.truth = truth
        self.resized: list[tuple[int, int]] = []

    def forward(self, images: list[torch.Tensor], targets=None) -> list[dict]:
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        keys = [fingerprint(image) for image in images]
        batch, _ = self.transform(images)
        self.resized += batch.image_sizes
        detections = []
        for key, (h, w), (rh, rw) in zip(keys, original_sizes, batch.image_sizes, strict=True):
            boxes, labels = self.truth[key]
            scale = torch.tensor([rw / w, rh / h, rw / w, rh / h])
            detections.append({"boxes": boxes * scale, "labels": labels, "scores": torch.ones(len(labels))})
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)


@pytest.fixture(scope="module")
def coco128_checkpoint(coco128, tmp_path_factory):
    """A random-weight detector for coco128's 80 categories (ids 1..90 with gaps)."""
    torch.manual_seed(0)
    categories = CategoryMap.from_coco(load_coco(coco128 / "instances.json").dataset["categories"])
    path = tmp_path_factory.mktemp("ckpt") / "coco128_random.pt"
    save_checkpoint(Detector(get_config("edge", **SMALL), categories), path)
    return path


def model_args(coco128, checkpoint, *extra) -> list[str]:
    return [
        "--checkpoint", str(checkpoint), "--images", str(coco128 / "images"),
        "--annotations", str(coco128 / "instances.json"), *extra,
    ]  # fmt: skip


def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_model_round_trip_scores_ap_one(coco128, coco128_checkpoint, monkeypatch, capsys, tmp_path):
    limit = 8
    dataset = CocoDetectionDataset(coco128 / "images", coco128 / "instances.json", train=False)
    truth = {}
    for index in range(limit):
        image, target = dataset[index]
        anns = [a for a in dataset.coco.imgToAnns[target["image_id"]] if not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = torch.tensor([dataset.categories.label(a["category_id"]) for a in anns], dtype=torch.int64)
        truth[fingerprint(image)] = (boxes.float(), labels)
    oracles = []

    def load_with_oracle(path, **kwargs):
        detector = load_checkpoint(path, **kwargs)
        detector.model = GroundTruthModel(detector.model.transform, truth)
        oracles.append(detector.model)
        return detector

    monkeypatch.setattr(cli, "load_checkpoint", load_with_oracle)
    out_dir = tmp_path / "out"
    argv = model_args(coco128, coco128_checkpoint, "--limit", str(limit), "--batch-size", "3", "--min-size", "96")
    code, out, err = run_main(capsys, [*argv, "--output-dir", str(out_dir), "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["stats"]["AP"] == pytest.approx(1.0, abs=1e-9)
    assert report["stats"]["AR_100"] == pytest.approx(1.0, abs=1e-9)
    assert report["num_images"] == limit and report["evaluated"]["min_size"] == 96
    assert all(min(size) == 96 for size in oracles[0].resized)  # --min-size reached the model's resize
    assert report["cost"]["input_size"][0] == 96 and report["cost"]["macs"] > 0 and report["cost"]["params"] > 0

    # The written results file is standard COCO results: scoring it with no model gives the same numbers.
    detections = json.loads((out_dir / "detections.json").read_text())
    assert {d["category_id"] for d in detections} <= set(dataset.coco.cats)
    code, out, err = run_main(
        capsys,
        ["--results", str(out_dir / "detections.json"), "--annotations", str(coco128 / "instances.json"),
         "--limit", str(limit), "--json"],
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["stats"] == report["stats"]


def test_text_report_files_and_plot(coco128, coco128_checkpoint, capsys, tmp_path):
    argv = model_args(coco128, coco128_checkpoint, "--limit", "2", "--output-dir", str(tmp_path), "--plot")
    code, out, err = run_main(capsys, argv)
    assert code == 0, err
    assert out.count(" Average Precision  (AP) @[") == 6 and out.count(" Average Recall     (AR) @[") == 6
    assert "Per-class AP" in out and "toothbrush" in out
    assert "multiply-adds" in out and "M parameters" in out
    assert "ms/image" in out and "images/s" in out and "batch size 8" in out
    assert "evaluating" in err  # the progress bar, on stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["stats"]) == list(STAT_KEYS)
    assert len(report["per_class_ap"]) == 80
    assert {"ms_per_image", "images_per_second", "batch_size", "threads"} <= set(report["speed"])
    assert report["evaluated"]["checkpoint"] == str(coco128_checkpoint)
    assert isinstance(json.loads((tmp_path / "detections.json").read_text()), list)
    assert (tmp_path / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_mode_as_a_script_prints_only_json(cocoapi_fixtures, tmp_path):
    results, gt = (str(cocoapi_fixtures / p) for p in FAKE100)
    argv = ["--results", results, "--annotations", gt, "--json", "--output-dir", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "eval/coco.py", *argv], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # stdout is the JSON report and nothing else
    assert report["stats"]["AP"] == pytest.approx(0.5045806987249628, abs=1e-9)
    assert report["speed"] is None and report["cost"] is None  # no model at all
    assert json.loads((tmp_path / "report.json").read_text())["stats"] == report["stats"]


def test_empty_results_give_zero_and_a_warning(cocoapi_fixtures, tmp_path, capsys):
    (tmp_path / "empty.json").write_text("[]")
    code, out, err = run_main(
        capsys, ["--results", str(tmp_path / "empty.json"), "--annotations", str(cocoapi_fixtures / FAKE100[1])]
    )
    assert code == 0
    assert "= 0.000" in out and "warning:" in err and "no detections" in err


def write(path, text: str):
    path.write_text(text)
    return path


BAD_INPUTS = {
    "missing checkpoint": (lambda t, c, f, k: ["--checkpoint", str(t / "absent.pt")], "no such checkpoint"),
    "corrupt checkpoint": (lambda t, c, f, k: ["--checkpoint", str(write(t / "x.pt", "junk"))], "not a readable"),
    "an export": (
        lambda t, c, f, k: ["--checkpoint", str(REPO / "models" / "demo.onnx")],
        "demo.onnx: an ONNX export, not a checkpoint; give the .pt checkpoint it was exported from",
    ),
    "missing annotations": (
        lambda t, c, f, k: ["--results", str(f / FAKE100[0]), "--annotations", str(t / "absent.json")],
        "not found",
    ),
    "annotations not JSON": (
        lambda t, c, f, k: ["--results", str(f / FAKE100[0]), "--annotations", str(write(t / "a.json", "{"))],
        "not readable JSON",
    ),
    "annotations unreadable": (
        lambda t, c, f, k: ["--results", str(f / FAKE100[0]), "--annotations", str(t)],
        "not found",
    ),
    "missing results": (
        lambda t, c, f, k: ["--results", str(t / "absent.json"), "--annotations", str(f / FAKE100[1])],
        "no such results file",
    ),
    "results not JSON": (
        lambda t, c, f, k: ["--results", str(write(t / "r.json", "[{")), "--annotations", str(f / FAKE100[1])],
        "not JSON",
    ),
    "unknown image ids": (
        lambda t, c, f, k: [
            "--results",
            str(write(t / "r.json", '[{"image_id": 77, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]')),
            "--annotations",
            str(f / FAKE100[1]),
        ],
        "image ids are not in the ground truth: 77",
    ),  # fmt: skip
    "unknown category ids": (
        lambda t, c, f, k: [
            "--results",
            str(write(t / "r.json", '[{"image_id": 9, "category_id": 12, "bbox": [0, 0, 5, 5], "score": 0.5}]')),
            "--annotations",
            str(c / "instances.json"),
        ],
        "category ids are not in the ground truth: 12",
    ),  # fmt: skip
    "images missing on disk": (
        lambda t, c, f, k: ["--checkpoint", str(k), "--images", str(t), "--annotations", str(c / "instances.json")],
        "missing under",
    ),
    "images without annotations": (lambda t, c, f, k: ["--images", str(t)], "go together"),
    # The shapes model's ids 1, 2, 4, 7 are COCO's person, bicycle, motorcycle, train: not the same classes.
    "category names differ": (
        lambda t, c, f, k: [
            "--checkpoint",
            str(REPO / "models" / "demo.pt"),
            "--images",
            str(c / "images"),
            "--annotations",
            str(c / "instances.json"),
        ],
        "names the model's categories differently (id 1 is 'circle' to the model but 'person' there",
    ),
    "bad batch size": (lambda t, c, f, k: ["--batch-size", "0"], "at least 1"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_status_2(case, tmp_path, coco128, cocoapi_fixtures, coco128_checkpoint, capsys):
    make_argv, expected = BAD_INPUTS[case]
    code, out, err = run_main(capsys, make_argv(tmp_path, coco128, cocoapi_fixtures, coco128_checkpoint))
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err and "Traceback" not in err
    if case == "images missing on disk":
        assert "000000000009.jpg" in err and err.count(".jpg") == 5  # the first few, by name


@pytest.mark.slow
def test_torchrun_gives_the_numbers_of_one_process(coco128, tmp_path):
    """Two gloo processes shard the images; rank 0 gathers and writes the same detections and stats."""
    # Two categories, so that random weights score above the detector's 0.05 threshold and detect plenty.
    full = json.loads((coco128 / "instances.json").read_text())
    images = full["images"][:6]
    kept = {1, 3}
    subset = {
        "images": images,
        "categories": [c for c in full["categories"] if c["id"] in kept],
        "annotations": [
            a for a in full["annotations"] if a["category_id"] in kept and a["image_id"] in {i["id"] for i in images}
        ],
    }
    annotations = write(tmp_path / "people_and_cars.json", json.dumps(subset))
    torch.manual_seed(0)
    checkpoint = tmp_path / "two_classes.pt"
    save_checkpoint(Detector(get_config("edge", **SMALL), CategoryMap.from_coco(subset["categories"])), checkpoint)
    argv = ["--checkpoint", str(checkpoint), "--images", str(coco128 / "images"), "--annotations", str(annotations)]
    argv += ["--batch-size", "2", "--threads", "1", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reports = {}
    for world in (1, 2):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world)]
        launcher += ["--master-port", str(29500 + os.getpid() % 1000)]
        out = tmp_path / str(world)
        proc = subprocess.run(
            [*launcher, "eval/coco.py", *argv, "--output-dir", str(out)],
            cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        reports[world] = (json.loads(proc.stdout), json.loads((out / "detections.json").read_text()))
    assert reports[2][0]["speed"]["world_size"] == 2
    assert reports[1][0]["num_detections"] > 100
    assert reports[2][0]["stats"] == reports[1][0]["stats"]
    assert reports[2][1] == reports[1][1]
