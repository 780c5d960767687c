"""The edge image's service on ONNX Runtime against the same image serving the same model in PyTorch eager.

    python bench/container_engines.py [--image localhost/shufflenet-detect:amd64] [--rounds 2] [--duration 60]

The image holds no torch (that is the point of it), so the PyTorch run mounts this checkout's virtualenv
read-only and appends its site-packages to the container's path: the same container, code, settings and
images, with only the engine changed. The runs alternate (ONNX Runtime, PyTorch, ONNX Runtime, ...), each
loaded by ``bench/load.py`` at the given concurrency, and the ratio of the medians is printed. Build the image
first (``make docker-test``, or ``podman build --format docker --pull=never -t IMAGE .``); needs podman.
"""

import argparse
import json
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deploy.smoke_test import SmokeError, run, wait_ready  # noqa: E402

# Access logs off in both: printing a line per request would be measured too.
SERVE = ["python3", "-m", "service", "--no-access-log"]
SERVE_WITH_HOST_TORCH = [
    "python3",
    "-c",
    "import runpy, sys; sys.path.append('/hostsite'); sys.argv[1:] = ['--no-access-log']; "
    "runpy.run_module('service', run_name='__main__', alter_sys=True)",
]


def start(image: str, engine: str, port: int, threads: int | None) -> str:
    name = f"shufflenet-engines-{engine}"
    run("podman", "rm", "-f", name, check=False)
    options = ["-e", "SERVICE_HOST=127.0.0.1", "-e", f"SERVICE_PORT={port}"]
    if threads:
        options += ["-e", f"SERVICE_THREADS={threads}"]
    command = SERVE
    if engine == "torch":
        site = sysconfig.get_paths()["purelib"]
        options += ["-v", f"{site}:/hostsite:ro", "-v", f"{REPO / 'models'}:/models:ro",
                    "-e", "SERVICE_CHECKPOINT=/models/demo.pt", "-e", "SERVICE_ENGINE=torch"]  # fmt: skip
        command = SERVE_WITH_HOST_TORCH
    run("podman", "run", "-d", "--name", name, "--network", "host", *options, image, *command)
    return name


def load(port: int, pid: int, concurrency: int, duration: float) -> dict:
    out = run(sys.executable, str(REPO / "bench" / "load.py"), "--url", f"http://127.0.0.1:{port}",
              "--concurrency", str(concurrency), "--duration", str(duration), "--server-pid", str(pid), "--json",
              timeout=duration + 300)  # fmt: skip
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--image", default="localhost/shufflenet-detect:amd64", help="image (default localhost/shufflenet-detect:amd64)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two engines (default 2)")
    parser.add_argument("--duration", type=float, default=60, help="seconds of load per run (default 60)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients in flight (default 8)")
    parser.add_argument("--threads", type=int, help="SERVICE_THREADS for both (default: the service's own)")
    parser.add_argument("--port", type=int, default=18090, help="host port for the container (default 18090)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")
    args = parser.parse_args(argv)
    if not (Path(sysconfig.get_paths()["purelib"]) / "torch").is_dir():
        parser.error("run it with the project's virtualenv (.venv/bin/python): its torch is mounted for PyTorch")
    runs: dict[str, list[dict]] = {"onnxruntime": [], "torch": []}
    try:
        for round_ in range(args.rounds):
            for engine in runs:
                name = start(args.image, engine, args.port, args.threads)
                try:
                    ready = wait_ready(f"http://127.0.0.1:{args.port}", 300, name)
                    pid = int(run("podman", "inspect", "-f", "{{.State.Pid}}", name).stdout)
                    report = load(args.port, pid, args.concurrency, args.duration)
                    report["ready_s"] = round(ready, 1)
                    runs[engine].append(report)
                finally:
                    run("podman", "rm", "-f", "-t", "30", name, check=False)
                if not args.json:
                    memory = report.get("server_memory_mb", {})
                    print(f"round {round_ + 1} {engine}: {report['images_per_s']} img/s, p50 "
                          f"{report['latency_ms']['p50']} ms, status {report['status']}, "
                          f"RSS max {memory.get('rss_max')} MB", flush=True)  # fmt: skip
                time.sleep(2)
    except (SmokeError, subprocess.TimeoutExpired) as exc:
        print(f"container_engines: {exc}", file=sys.stderr)
        return 1
    medians = {engine: statistics.median(r["images_per_s"] for r in reports) for engine, reports in runs.items()}
    summary = {
        "image": args.image,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "median_images_per_s": medians,
        "ratio_onnxruntime_vs_torch": round(medians["onnxruntime"] / medians["torch"], 2),
        "runs": runs,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"median img/s: ONNX Runtime {medians['onnxruntime']}, PyTorch eager {medians['torch']}: "
              f"{summary['ratio_onnxruntime_vs_torch']}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
