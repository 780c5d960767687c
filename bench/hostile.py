"""Hostile clients against a real server (issue 13), while a normal client and a health probe measure the damage.

    python bench/hostile.py --duration 30 --json                 # starts `python -m service` with default settings
    python bench/hostile.py --url http://127.0.0.1:8000 --server-pid PID --json      # a running server (a container)

Every attack of issue 13 runs in its own client threads for ``--duration`` seconds, alongside the malformed-input
set of tests/service/test_fuzz.py: pairs of flat 5999 x 4000 PNGs (8 and 16 bits), 16 flat 24 MP PNGs in one
request, 19 MB of empty JPEG segments and of fill bytes, 30 connections that send 19.5 MB of a 20 MB body and
stall, heads that never end, a 1 MiB header and 5,000 header lines, 1 x 4000 and 4000 x 1 images, five concurrent
19 MB multipart uploads, a malformed Basic header beside a good key (with ``--api-key``), and an overload of
16-image requests. Meanwhile one client sends a normal one-image request (the bundled sample) every 0.25 s and
another GETs /healthz every 0.1 s on a fresh connection, on the service's port and, where the server has one, on its
probe port (``--probe-port``; the server started here gets one); the server's resident memory (VmRSS) is sampled
every 0.1 s.

The JSON holds ``status_counts`` (attack responses by status; ``error:...`` for a dropped connection),
``by_attack``, ``responses_5xx`` (5xx answers other than 503 with Retry-After, the deliberate "busy, retry"; those
are counted in ``responses_503``; ``responses_5xx_all`` counts every 5xx), ``peak_rss_mb``, ``healthz_p99_ms``,
``healthz_p50_ms``, ``probe_healthz_p99_ms`` and ``probe_healthz_p50_ms`` (the probe port's), ``normal_p99_ms``
and the normal requests' statuses. Exit status 1 if the server died.
"""

import argparse
import contextlib
import http.client
import importlib.util
import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import cv2
import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "service" / "static" / "sample.jpg"
COCO_IMAGES = REPO.parent / "shared" / "data" / "coco128" / "images"
sys.path.insert(0, str(REPO))
from bench.load import memory_mb, percentile  # noqa: E402


class Run:
    """What the threads share: the target, the deadline, and what they saw."""

    def __init__(self, url: str, duration: float, api_key: str | None) -> None:
        address = urlparse(url)
        self.url, self.address = url, (address.hostname, address.port)
        self.api_key = api_key
        self.deadline = time.monotonic() + duration
        self.lock = threading.Lock()
        self.statuses: Counter = Counter()
        self.by_attack: dict[str, Counter] = {}
        self.retry_after_503 = 0

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def record(self, attack: str, status: int | str, retry_after: bool = False) -> None:
        with self.lock:
            self.statuses[str(status)] += 1
            self.by_attack.setdefault(attack, Counter())[str(status)] += 1
            self.retry_after_503 += status == 503 and retry_after

    def auth(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key} if self.api_key else {}


# --- raw HTTP: attacks need control over what is sent and when -----------------------------------------------


def exchange(run: Run, head: bytes, body: bytes = b"", *, stall: bool = False, timeout: float = 90) -> tuple:
    """Send ``head`` and ``body`` on a fresh connection (then wait without sending if ``stall``); (status, whether a
    Retry-After came) of the answer, or ("error:Kind", False)."""
    try:
        with socket.create_connection(run.address, timeout=timeout) as sock:
            try:
                sock.sendall(head)
                view = memoryview(body)
                for start in range(0, len(body), 1 << 20):  # in pieces, so an early answer stops the sending
                    sock.sendall(view[start : start + (1 << 20)])
            except OSError:
                pass  # the server answered and closed before taking everything: read its answer
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
    except OSError as exc:
        return f"error:{type(exc).__name__}", False
    if not answer.startswith(b"HTTP/1."):
        return "error:no-answer", False
    head_text = answer.split(b"\r\n\r\n", 1)[0].lower()
    return int(answer.split(b" ", 2)[1]), b"\r\nretry-after:" in head_text


def request_head(run: Run, content_type: str, length: int | None, extra: bytes = b"", path: str = "/detect") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: bench", f"Content-Type: {content_type}"]
    lines += [f"{name}: {value}" for name, value in run.auth().items()]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return "\r\n".join(lines).encode() + b"\r\n" + extra + b"\r\n"


def multipart(files: list[tuple[str, bytes, str]], boundary: str = "hostile") -> tuple[bytes, str]:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        f"Content-Type: {kind}\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data, kind in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_body(run: Run, attack: str, body: bytes, content_type: str) -> None:
    status, retry = exchange(run, request_head(run, content_type, len(body)), body)
    run.record(attack, status, retry)


# --- the attacks ---------------------------------------------------------------------------------------------


def flat_png(height: int, width: int, dtype=np.uint8) -> bytes:
    return cv2.imencode(".png", np.zeros((height, width, 3), dtype))[1].tobytes()


def payloads() -> dict[str, tuple[bytes, str]]:
    """Bodies (and content types) of the attacks that repeat one request."""
    png8, png16 = flat_png(4000, 5999), flat_png(4000, 5999, np.uint16)
    noise = np.random.default_rng(0).integers(0, 256, (2500, 2600, 3), dtype=np.uint8)  # 19.5 MB, incompressible
    thin = [
        (f"thin{i}{ext}", cv2.imencode(ext, np.full(shape, 200, np.uint8))[1].tobytes(), kind)
        for i, shape in enumerate([(4000, 1, 3), (1, 4000, 3)])
        for ext, kind in ((".png", "image/png"), (".jpg", "image/jpeg"))
    ]
    return {
        "png16_pair": multipart([("a.png", png16, "image/png"), ("b.png", png16, "image/png")]),
        "png8_pair": multipart([("a.png", png8, "image/png"), ("b.png", png8, "image/png")]),
        "png_flood_16x24mp": multipart([(f"{i}.png", png8, "image/png") for i in range(16)]),
        "jpeg_empty_segments_19mb": (b"\xff\xd8" + b"\xff\xe0\x00\x02" * (19 * 2**20 // 4), "image/jpeg"),
        "jpeg_fill_bytes_19mb": (b"\xff\xd8" + b"\xff" * (19 * 2**20), "image/jpeg"),
        "multipart_19mb": multipart([("noise.png", cv2.imencode(".png", noise)[1].tobytes(), "image/png")]),
        "thin_images": multipart(thin),
        "overload_16_images": multipart([(f"{i}.jpg", SAMPLE.read_bytes(), "image/jpeg") for i in range(16)]),
    }


def repeat(run: Run, attack: str, body: bytes, content_type: str) -> None:
    while run.running():
        post_body(run, attack, body, content_type)


STALLED_BODY = b"\xff\xd8\xff" + bytes(19_500_000)  # one copy for all the threads


def stalled_body(run: Run) -> None:
    """19.5 MB of a declared 20 MB body, then nothing until the server answers."""
    while run.running():
        status, retry = exchange(run, request_head(run, "image/jpeg", 20_000_000), STALLED_BODY)
        run.record("stalled_body_20mb", status, retry)


def endless_head(run: Run) -> None:
    """A request head that never ends: a header line every second."""
    while run.running():
        status = "error:no-answer"
        try:
            with socket.create_connection(run.address, timeout=60) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n")
                sock.settimeout(1)
                for i in range(600):
                    try:
                        answer = sock.recv(4096)
                        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else "error:closed"
                        break
                    except TimeoutError:
                        sock.sendall(b"X-%d: 1\r\n" % i)
        except OSError as exc:
            status = f"error:{type(exc).__name__}"
        run.record("endless_head", status)


def huge_heads(run: Run) -> None:
    big = b"X-Big: " + b"a" * 2**20 + b"\r\n"
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(5000))
    while run.running():
        for attack, extra in (("header_1mib", big), ("header_5000_lines", many)):
            status, retry = exchange(run, request_head(run, "image/jpeg", 0, extra))
            run.record(attack, status, retry)
        time.sleep(0.2)


def junk_basic_auth(run: Run) -> None:
    sample = SAMPLE.read_bytes()
    extra = b"Authorization: Basic !!!!\r\n"
    while run.running():
        status, retry = exchange(run, request_head(run, "image/jpeg", len(sample), extra), sample)
        run.record("basic_junk_with_good_key", status, retry)
        time.sleep(0.2)


def malformed(run: Run) -> None:
    """The fuzzing test's request kinds (tests/service/test_fuzz.py), sent in turn."""
    spec = importlib.util.spec_from_file_location("fuzz", REPO / "tests" / "service" / "test_fuzz.py")
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    rng = random.Random(13)
    samples = fuzz.encoded(sorted(COCO_IMAGES.glob("*.jpg")), rng)
    with httpx.Client(timeout=60, headers=run.auth()) as client:
        while run.running():
            for kind, request, _ in fuzz.generate(rng, samples, 50):
                if not run.running():
                    break
                try:
                    response = client.post(f"{run.url}/detect", **request)
                    run.record(f"malformed_{kind}", response.status_code, "retry-after" in response.headers)
                except httpx.HTTPError as exc:
                    run.record(f"malformed_{kind}", f"error:{type(exc).__name__}")


# --- what is measured meanwhile ------------------------------------------------------------------------------


def timed_loop(run: Run, interval: float, call: Callable[[], int | str], out: list) -> None:
    while run.running():
        start = time.monotonic()
        try:
            status = call()
        except (httpx.HTTPError, http.client.HTTPException, OSError) as exc:
            status = f"error:{type(exc).__name__}"
        out.append((time.monotonic() - start, status))
        time.sleep(max(0.0, interval - (time.monotonic() - start)))


def sample_memory(run: Run, pid: int, out: list) -> None:
    while run.running():
        try:
            out.append(memory_mb(pid)["VmRSS"])
        except (OSError, KeyError):
            return
        time.sleep(0.1)


def attack_plan(run: Run) -> list[tuple[str, Callable, tuple, int]]:
    """(name, function, arguments, client threads) of every attack."""
    bodies = payloads()
    plan = [(name, repeat, (run, name, *bodies[name]), threads) for name, threads in (
        ("png16_pair", 2), ("png8_pair", 1), ("png_flood_16x24mp", 3), ("jpeg_empty_segments_19mb", 2),
        ("jpeg_fill_bytes_19mb", 1), ("multipart_19mb", 5), ("thin_images", 1), ("overload_16_images", 4),
    )]  # fmt: skip
    plan += [
        ("stalled_body_20mb", stalled_body, (run,), 30),
        ("endless_head", endless_head, (run,), 10),
        ("huge_heads", huge_heads, (run,), 1),
        ("malformed", malformed, (run,), 2),
    ]
    if run.api_key:
        plan.append(("basic_junk_with_good_key", junk_basic_auth, (run,), 1))
    return plan


def watch(url: str, pid: int | None, probe_port: int | None, duration: float, api_key: str | None, results) -> None:
    """The normal client, the health probe and the memory sampler; in a process of their own, so that the attack
    threads' share of this interpreter's lock does not count as the server's latency."""
    run = Run(url, duration, api_key)
    sample = SAMPLE.read_bytes()
    health, probe_health, normal, rss = [], [], [], []
    client = httpx.Client(timeout=60, headers=run.auth())

    def normal_request() -> int:
        return client.post(f"{url}/detect", content=sample, headers={"content-type": "image/jpeg"}).status_code

    def probe(port: int) -> int:
        # A fresh connection, as a health checker's, with the standard library's client: a new httpx client
        # builds a TLS context even for http (22 ms of this process's CPU on a quiet machine, several times
        # that under the attacks), which the probe would count as the server's latency.
        connection = http.client.HTTPConnection(run.address[0], port, timeout=30)
        try:
            connection.request("GET", "/healthz")
            return connection.getresponse().status
        finally:
            connection.close()

    threads = [
        threading.Thread(target=timed_loop, args=(run, 0.1, partial(probe, run.address[1]), health)),
        threading.Thread(target=timed_loop, args=(run, 0.25, normal_request, normal)),
    ]
    if probe_port is not None:
        threads.append(threading.Thread(target=timed_loop, args=(run, 0.1, partial(probe, probe_port), probe_health)))
    if pid is not None:
        threads.append(threading.Thread(target=sample_memory, args=(run, pid, rss)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    results.put((health, probe_health, normal, rss))


def measure(
    url: str,
    pid: int | None,
    probe_port: int | None,
    duration: float,
    api_key: str | None,
    only: list[str] | None = None,
    attacker_nice: int = 0,
) -> dict:
    context = multiprocessing.get_context("fork")  # before any thread starts
    results = context.Queue()
    watcher = context.Process(target=watch, args=(url, pid, probe_port, duration, api_key, results))
    watcher.start()
    # After the fork, so the normal client and the probe keep the server's priority; threads inherit it.
    os.nice(attacker_nice)
    run = Run(url, duration, api_key)
    threads = []
    for name, function, args, count in attack_plan(run):
        if only and name not in only:
            continue
        threads += [threading.Thread(target=function, args=args, daemon=True) for _ in range(count)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    health, probe_health, normal, rss = results.get()
    watcher.join()
    for thread in threads:
        thread.join()
    five = sum(n for status, n in run.statuses.items() if status.isdigit() and int(status) >= 500)
    return {
        "url": url,
        "attacker_nice": attacker_nice,
        "duration_s": round(time.monotonic() - started, 1),
        "status_counts": dict(sorted(run.statuses.items())),
        "responses_5xx": five - run.retry_after_503,
        "responses_503": run.statuses.get("503", 0),
        "responses_5xx_all": five,
        "peak_rss_mb": round(max(rss), 1) if rss else None,
        **timings("healthz", health),
        "healthz_slowest_ms": [round(s * 1000, 1) for s in sorted(s for s, _ in health)[-5:]],
        **(timings("probe_healthz", probe_health) if probe_health else {}),
        **timings("normal", normal),
        "by_attack": {name: dict(sorted(counts.items())) for name, counts in sorted(run.by_attack.items())},
    }


def timings(name: str, samples: list[tuple[float, int | str]]) -> dict:
    """p99 and p50 in ms, and the answers by status, of (seconds, status) samples, as ``name``_... keys."""
    seconds = [s for s, _ in samples]
    return {
        f"{name}_p99_ms": round(percentile(seconds, 99) * 1000, 1),
        f"{name}_p50_ms": round(percentile(seconds, 50) * 1000, 1),
        f"{name}_statuses": dict(Counter(str(status) for _, status in samples)),
    }


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1: all held open while the kernel picks, so none comes twice."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def start_server(
    checkpoint: str | None, extra: list[str], api_key: str | None, port: int, probe_port: int
) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "service", "--port", str(port), "--probe-port", str(probe_port)]
    command += ["--no-access-log", *extra]
    if checkpoint:
        command += ["--checkpoint", checkpoint]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")}
    if api_key:
        env["SERVICE_API_KEY"] = api_key
    process = subprocess.Popen(command, cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            headers = {"X-API-Key": api_key} if api_key else {}
            if httpx.get(f"{url}/readyz", headers=headers, timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server was not ready within 180 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start `python -m service` on a free port)")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's process, for its memory")
    parser.add_argument("--probe-port", type=int, help="with --url: the server's probe port, probed as well")
    parser.add_argument("--checkpoint", help="model for the server started here (default: the service's default)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for the server started here")
    parser.add_argument("--api-key", default=os.environ.get("SERVICE_API_KEY"), help="the server's key, if any")
    parser.add_argument("--duration", type=float, default=60, help="seconds of attacks (default 60)")
    parser.add_argument("--attacks", nargs="+", metavar="NAME", help="run only these attacks (default: all)")
    parser.add_argument(
        "--attacker-nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="0..19",
        help="CPU niceness of the attack threads (default 0, the server's own): 19 stands for attackers on other "
        "machines, whose CPU a real box does not share; the normal client and the probe always run at 0",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    process = None
    url, pid, probe_port = args.url, args.server_pid, args.probe_port
    if url is None:
        port, probe_port = free_ports(2)
        process, url = start_server(args.checkpoint, args.server_arg, args.api_key, port, probe_port)
        pid = process.pid
    try:
        report = measure(url, pid, probe_port, args.duration, args.api_key, args.attacks, args.attacker_nice)
        alive = process is None or process.poll() is None
        try:
            report["healthz_after"] = httpx.get(f"{url}/healthz", timeout=10).status_code
        except httpx.HTTPError as exc:
            report["healthz_after"] = f"error:{type(exc).__name__}"
        report["server_alive"] = alive and report["healthz_after"] == 200
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0 if report["server_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
