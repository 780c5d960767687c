"""Inference engines for one model, measured in one run: PyTorch eager, TorchScript, torch.export, ONNX Runtime
fp32 and int8.

For each engine: AP on the synthetic validation split (an engine counts only within 0.5 AP point of PyTorch
eager), milliseconds per image at batch 1 and at ``--batch`` (rounds interleave the engines so machine noise
hits all alike; medians), and the peak resident memory of a process that runs that engine alone (the ONNX
Runtime ones with torch blocked, as in the edge image). The int8 model is made here by ONNX Runtime's static
quantization of convolutions and matrix products, calibrated on synthetic training images.

    python bench/engines.py [--checkpoint models/demo.pt] [--threads 2] [--batch 4] [--rounds 5] [--json]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from backbone.cli import HelpFormatter  # noqa: E402
from runtime import Detections, load_engine  # noqa: E402

ENGINES = ("pytorch-eager", "torchscript", "torch-export", "onnxruntime", "onnxruntime-int8")
AP_TOLERANCE = 0.005  # half an AP point


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255


def torchscript(model):
    """``torch.jit.script`` of torchvision's FasterRCNN; scripted, it returns (losses, detections)."""
    import torch

    scripted = torch.jit.script(model)
    return lambda images: scripted(images)[1]


def torch_export(model, min_size: int, max_size: int):
    """``torch.export`` (non-strict) of the same model, run as the exported program's module."""
    import torch

    example = [torch.rand(3, min_size, max_size)]
    return torch.export.export(model.eval(), (example,), strict=False).module()


class CompiledTorchEngine:
    """The checkpoint's model compiled by ``compile_name`` ("torchscript" or "torch-export"), behind the
    engines' predict interface."""

    def __init__(self, compile_name: str, checkpoint: Path, threads: int) -> None:
        import torch

        from detector import load_checkpoint

        torch.set_num_threads(threads)
        detector = load_checkpoint(checkpoint)
        if compile_name == "torchscript":
            self.forward = torchscript(detector.model)
        else:
            self.forward = torch_export(detector.model, detector.config.min_size, detector.config.max_size)

    def predict(self, images: list[np.ndarray]) -> list[Detections]:
        import torch

        with torch.inference_mode():
            outputs = self.forward([torch.from_numpy(image) for image in images])
        return [Detections(o["boxes"].numpy(), o["labels"].numpy(), o["scores"].numpy()) for o in outputs]

    def close(self) -> None:
        pass


def quantize_int8(source: Path, target: Path, calibration: list[np.ndarray]) -> Path:
    """Static QDQ int8 quantization of Conv/MatMul/Gemm, keeping the model card so the engine can load it."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from runtime.onnx import CARD_KEY, INPUT

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self):
            image = next(self.items, None)
            return None if image is None else {INPUT: image}

    target.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(source),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    card = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}[CARD_KEY]
    model = onnx.load(str(target))
    onnx.helper.set_model_props(model, {CARD_KEY: card})
    onnx.save(model, str(target))
    return target


def model_files(args) -> dict[str, Path]:
    exported = args.checkpoint.with_suffix(".onnx")
    int8 = args.work_dir / (exported.stem + ".int8.onnx")
    return {"pytorch-eager": args.checkpoint, "torchscript": args.checkpoint, "torch-export": args.checkpoint,
            "onnxruntime": exported, "onnxruntime-int8": int8}  # fmt: skip


def open_engine(name: str, path: Path, threads: int):
    if name in ("torchscript", "torch-export"):
        return CompiledTorchEngine(name, path, threads)
    return load_engine(path, "torch" if name == "pytorch-eager" else "onnxruntime", threads=threads)


def evaluate_ap(engine, images: list[tuple[int, Path]], annotations: Path, categories) -> float:
    """AP of each image's own answer. In a PyTorch batch, torchvision pads the images to one size, which moves
    its detections a little (about 0.6 AP point on this split); the ONNX engines always see an image alone."""
    from detector.data import load_coco
    from eval.scoring import score_results

    results = []
    for image_id, path in images:
        for found in engine.predict([read_rgb(path)]):
            for (x1, y1, x2, y2), label, score in zip(found.boxes.tolist(), found.labels.tolist(),
                                                      found.scores.tolist(), strict=True):  # fmt: skip
                results.append({"image_id": image_id, "category_id": categories.category_id(label),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})  # fmt: skip
    return score_results(load_coco(annotations), results, image_ids=[i for i, _ in images])["stats"]["AP"]


def memory_of(name: str, path: Path, threads: int, images: list[np.ndarray], batch: int) -> dict:
    """Run in a child process: load, predict a few batches, report peak and current resident memory (MB)."""
    engine = open_engine(name, path, threads)
    for _ in range(3):
        engine.predict(images[:1])
        engine.predict(images[:batch])
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {key: int(status[key].split()[0]) / 1024 for key in ("VmHWM", "VmRSS")} | {
        "torch_loaded": sys.modules.get("torch") is not None  # the blocker leaves None there
    }


def measure_memory(name: str, path: Path, args) -> dict:
    blocker = "sys.modules['torch'] = sys.modules['torchvision'] = None; " if name.startswith("onnxruntime") else ""
    script = (
        f"import sys; {blocker}sys.argv = {[__file__, '--memory-of', name, *sys.argv[1:]]!r}; "
        f"sys.path.insert(0, {str(REPO / 'bench')!r}); import engines; engines.main(sys.argv[1:])"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=REPO)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def timing_images(val_images: list[Path], count: int, min_size: int, max_size: int) -> list[np.ndarray]:
    """The service's input: decoded and shrunk to the model's input size before they reach the engine."""
    chosen = []
    for path in val_images[:count]:
        image = read_rgb(path)
        _, h, w = image.shape
        scale = min(min_size / min(h, w), max_size / max(h, w))
        resized = cv2.resize(image.transpose(1, 2, 0), (round(w * scale), round(h * scale)))
        chosen.append(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=REPO / "models" / "demo.pt",
        help="a .pt checkpoint with its export beside it (.onnx, from python -m tools.export)",
    )
    parser.add_argument("--threads", type=int, default=2, help="inference threads of every engine")
    parser.add_argument("--batch", type=int, default=4, help="the batched measurement's size")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, each over every engine (medians reported)")
    parser.add_argument("--limit", type=int, default=200, help="validation images scored for AP")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "engines", help="for the int8 model")
    parser.add_argument("--json", action="store_true", help="print the table as JSON only")
    parser.add_argument("--memory-of", choices=ENGINES, help=argparse.SUPPRESS)  # internal: one engine alone
    args = parser.parse_args(argv)
    if min(args.threads, args.batch, args.rounds, args.limit) < 1:
        parser.error("--threads, --batch, --rounds and --limit must be at least 1")
    files = model_files(args)
    for name in ("pytorch-eager", "onnxruntime"):
        if not files[name].is_file():
            parser.error(f"{files[name]}: missing (run python -m tools.export --checkpoint {args.checkpoint})")

    from detector.synthetic import default_dataset

    images_dir, annotations = default_dataset("val")
    listing = json.loads(annotations.read_text())["images"]
    val = [(entry["id"], images_dir / entry["file_name"]) for entry in listing][: args.limit]
    card = load_engine(files["onnxruntime"]).card
    timed = timing_images([p for _, p in val], 8, card.config.min_size, card.config.max_size)
    if args.memory_of:
        print(json.dumps(memory_of(args.memory_of, files[args.memory_of], args.threads, timed, args.batch)))
        return 0

    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    if not files["onnxruntime-int8"].is_file():
        say("quantizing to int8 (calibration: 32 synthetic training images)")
        train_dir, train_annotations = default_dataset("train")
        names = [e["file_name"] for e in json.loads(train_annotations.read_text())["images"][:32]]
        quantize_int8(files["onnxruntime"], files["onnxruntime-int8"], [read_rgb(train_dir / n) for n in names])

    engines, rows = {}, {}
    for name in ENGINES:
        try:
            engines[name] = open_engine(name, files[name], args.threads)
            rows[name] = {"model_file": files[name].name, "file_mb": round(files[name].stat().st_size / 2**20, 2)}
        except Exception as exc:  # an engine that cannot take this model is a finding, not a crash
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"}
            say(f"{name}: {rows[name]['error']}")
    for name, engine in engines.items():
        say(f"{name}: AP on {len(val)} validation images")
        rows[name]["AP"] = round(evaluate_ap(engine, val, annotations, card.categories), 4)
    samples = {name: {"batch_1": [], f"batch_{args.batch}": []} for name in engines}
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for name, engine in engines.items():
            t0 = time.perf_counter()
            for image in timed:
                engine.predict([image])
            t1 = time.perf_counter()
            for start in range(0, len(timed), args.batch):
                engine.predict(timed[start : start + args.batch])
            t2 = time.perf_counter()
            if round_index:
                samples[name]["batch_1"].append((t1 - t0) / len(timed) * 1000)
                samples[name][f"batch_{args.batch}"].append((t2 - t1) / len(timed) * 1000)
        say(f"round {round_index}/{args.rounds} done")
    for name, engine in engines.items():
        engine.close()
        for key, values in samples[name].items():
            rows[name][f"ms_per_image_{key}"] = round(statistics.median(values), 1)
        say(f"{name}: memory of a process running it alone")
        rows[name]["memory_mb"] = measure_memory(name, files[name], args)
    reference = rows["pytorch-eager"].get("AP")
    for row in rows.values():
        if "AP" in row and reference is not None:
            row["matches_pytorch"] = abs(row["AP"] - reference) <= AP_TOLERANCE
    report = {"threads": args.threads, "batch": args.batch, "rounds": args.rounds, "val_images": len(val),
              "timing_images": len(timed), "engines": rows}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'engine':<18} {'AP':>6} {'ms/img b1':>10} {'ms/img b' + str(args.batch):>10} {'peak MB':>8}  match")
    for name, row in rows.items():
        if "error" in row:
            print(f"{name:<18} {row['error']}")
            continue
        print(f"{name:<18} {row['AP']:>6.3f} {row['ms_per_image_batch_1']:>10.1f} "
              f"{row[f'ms_per_image_batch_{args.batch}']:>10.1f} {row['memory_mb'].get('VmHWM', float('nan')):>8.0f}"
              f"  {row.get('matches_pytorch')}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
