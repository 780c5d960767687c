"""Load test for the detection service, and the direct-model baseline it is compared with.

    python bench/load.py --url http://127.0.0.1:8000 --concurrency 8 --duration 60 [--json]
    python bench/load.py --direct --checkpoint models/demo.pt|models/demo.onnx --duration 60 [--json]

The first sends real images (COCO sample by default) from N concurrent clients for S seconds and reports
throughput, latency percentiles and responses by status; ``--server-pid`` also samples the server's resident
memory once a second (same machine only). The second runs the same model in a loop with no HTTP, at each of
``--batch-sizes``, on the same images decoded beforehand: the ceiling the service is measured against.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "coco128" / "images"


def load_images(folder: Path, limit: int) -> list[tuple[str, bytes]]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".bmp"})
    if not paths:
        raise SystemExit(f"no images in {folder}")
    return [(p.name, p.read_bytes()) for p in paths[:limit]]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time used so far: by the whole machine (pid None, all cores added up) or by one process."""
    if pid is None:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        busy = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))  # all but idle and iowait
        return busy / os.sysconf("SC_CLK_TCK")
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def others_cpu(before: tuple[float, ...], after: tuple[float, ...], elapsed: float) -> float:
    """Cores' worth of CPU used by other processes meanwhile: a benchmark shares the machine at its peril."""
    machine = after[0] - before[0]
    ours = sum(a - b for a, b in zip(after[1:], before[1:], strict=True))
    return round(max(0.0, machine - ours) / elapsed, 2)


def memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


async def run_load(args: argparse.Namespace) -> dict:
    import httpx

    images = load_images(args.images, args.max_images)
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()
    sent_images = 0
    counter = 0
    memory: list[dict[str, float]] = []

    async def client(session: httpx.AsyncClient, deadline: float) -> None:
        nonlocal counter, sent_images
        while time.monotonic() < deadline:
            batch = [images[(counter + i) % len(images)] for i in range(args.images_per_request)]
            counter += args.images_per_request
            start = time.perf_counter()
            try:
                if len(batch) == 1:
                    request = {"content": batch[0][1], "headers": {**headers, "content-type": "image/jpeg"}}
                else:
                    request = {"files": [("files", item) for item in batch], "headers": headers}
                response = await session.post(f"{args.url}/detect", **request)
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    sent_images += len(batch)
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
            latencies.append(time.perf_counter() - start)

    async def sample_memory(deadline: float) -> None:
        while time.monotonic() < deadline:
            memory.append(memory_mb(args.server_pid))
            await asyncio.sleep(1)

    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as session:
        for _, data in images[: args.concurrency]:  # warm the server and the connections
            await session.post(f"{args.url}/detect", content=data, headers={**headers, "content-type": "image/jpeg"})
        pids = [os.getpid()] + ([args.server_pid] if args.server_pid else [])
        cpu_before = (cpu_seconds(), *(cpu_seconds(pid) for pid in pids))
        start = time.monotonic()
        deadline = start + args.duration
        tasks = [client(session, deadline) for _ in range(args.concurrency)]
        if args.server_pid:
            tasks.append(sample_memory(deadline))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
        cpu_after = (cpu_seconds(), *(cpu_seconds(pid) for pid in pids))
    report = {
        "mode": "load",
        "url": args.url,
        "concurrency": args.concurrency,
        "images_per_request": args.images_per_request,
        "duration_s": round(elapsed, 1),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "images_per_s": round(sent_images / elapsed, 2),
        "latency_ms": {
            "p50": round(percentile(latencies, 50) * 1000, 1),
            "p95": round(percentile(latencies, 95) * 1000, 1),
            "p99": round(percentile(latencies, 99) * 1000, 1),
            "mean": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
            "max": round(max(latencies, default=0) * 1000, 1),
        },
        "status": {str(code): n for code, n in sorted(statuses.items())},
        "errors": dict(errors),
        "client_cpu": round((cpu_after[1] - cpu_before[1]) / elapsed, 2),
        "other_processes_cpu": others_cpu(cpu_before, cpu_after, elapsed) if args.server_pid else None,
    }
    if memory:
        rss = [m["VmRSS"] for m in memory]
        own = [m["RssAnon"] for m in memory]
        tenth = max(1, len(memory) // 10)
        report["server_memory_mb"] = {
            "rss_first": round(rss[0]),
            "rss_max": round(max(rss)),
            "rss_last": round(rss[-1]),
            "own_first": round(own[0]),
            "own_max": round(max(own)),
            "own_last": round(own[-1]),
            # growth: the last tenth of the run against the first tenth (steady state, not warm-up)
            "own_growth_last_vs_first_tenth": round(statistics.fmean(own[-tenth:]) - statistics.fmean(own[:tenth]), 1),
            "own_every_10s": [round(v) for v in own[::10]],
        }
    return report


def run_direct(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(REPO))
    from runtime import load_engine
    from runtime.images import decode

    engine = load_engine(args.checkpoint, args.engine, threads=args.threads)
    config = engine.card.config

    def prepare(data: bytes):
        return decode(data, max_pixels=10**9, min_size=config.min_size, max_size=config.max_size).array

    files = [data for _, data in load_images(args.images, args.max_images)]
    # By default decoded and shrunk as the service does it before the clock starts: only the engine is timed.
    # --decode times the loop a user would write instead: JPEG bytes in, each batch decoded, then the engine.
    tensors = files if args.decode else [prepare(data) for data in files]
    run_batch = (lambda batch: engine.predict([prepare(data) for data in batch])) if args.decode else engine.predict
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    per_size = args.duration / len(sizes)
    results = {}
    cpu_before, wall = (cpu_seconds(), cpu_seconds(os.getpid())), time.monotonic()
    for size in sizes:
        run_batch(tensors[:size])  # warm-up at this size
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < per_size:
            batch = [tensors[(done + i) % len(tensors)] for i in range(size)]
            run_batch(batch)
            done += size
        results[str(size)] = round(done / (time.perf_counter() - start), 2)
    best = max(results, key=results.get)
    cpu_after = (cpu_seconds(), cpu_seconds(os.getpid()))
    return {
        "mode": "direct",
        "checkpoint": str(args.checkpoint),
        "engine": engine.name,
        "threads": args.threads,
        "decoding_timed": args.decode,
        "images_per_s_by_batch_size": results,
        "best_batch_size": int(best),
        "best_images_per_s": results[best],
        "other_processes_cpu": others_cpu(cpu_before, cpu_after, time.monotonic() - wall),
    }


def print_report(report: dict) -> None:
    if report["mode"] == "direct":
        print(
            f"direct model{' with decoding' * report['decoding_timed']}, {report['threads']} threads: "
            + ", ".join(f"batch {size}: {rate} img/s" for size, rate in report["images_per_s_by_batch_size"].items())
        )
        print(f"best: batch {report['best_batch_size']} at {report['best_images_per_s']} img/s")
        print(f"other processes used {report['other_processes_cpu']} cores meanwhile")
        return
    lat = report["latency_ms"]
    print(f"{report['url']}  concurrency {report['concurrency']}  {report['duration_s']} s")
    print(
        f"  throughput  {report['requests_per_s']} req/s, {report['images_per_s']} img/s, {report['requests']} requests"
    )
    print(f"  latency ms  p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}")
    print(f"  status      {report['status']}  errors {report['errors'] or 'none'}")
    print(f"  cpu         client {report['client_cpu']} cores, other processes {report['other_processes_cpu']} cores")
    if "server_memory_mb" in report:
        print(f"  memory MB   {report['server_memory_mb']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="service base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--concurrency", type=int, default=8, help="clients sending at once (default 8)")
    parser.add_argument("--duration", type=float, default=30, help="seconds to run (default 30)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of images to send")
    parser.add_argument("--max-images", type=int, default=128, help="use at most this many images")
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60, help="client timeout per request, seconds")
    parser.add_argument("--api-key", help="sent as X-API-Key")
    parser.add_argument("--server-pid", type=int, help="sample this local process's resident memory")
    parser.add_argument("--direct", action="store_true", help="measure the model called directly instead")
    parser.add_argument("--checkpoint", type=Path, default=REPO / "models" / "demo.pt", help="for --direct")
    parser.add_argument("--batch-sizes", default="1,2,4,8", help="for --direct, comma-separated")
    parser.add_argument("--engine", default="auto", choices=["auto", "torch", "onnxruntime"], help="for --direct")
    parser.add_argument("--threads", type=int, default=2, help="inference threads for --direct")
    parser.add_argument("--decode", action="store_true", help="for --direct: time JPEG decoding too (in the loop)")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.duration <= 0 or args.images_per_request < 1:
        parser.error("--concurrency and --images-per-request must be >= 1, --duration > 0")
    if args.direct:
        report = run_direct(args)
    else:
        if not args.url:
            parser.error("--url is required (or --direct)")
        report = asyncio.run(run_load(args))
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
