"""Fixtures for the service: a random-weight checkpoint, the app in-process, and a real server on 127.0.0.1."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from detector import DEMO_EXPORT, CategoryMap, Detector, get_config, save_checkpoint
from detector.categories import Category
from runtime import Detections
from service import Settings, create_app

REPO = Path(__file__).resolve().parents[2]
CATEGORIES = [Category(1, "person"), Category(3, "car"), Category(18, "dog")]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """The CPU-default configuration with random weights: real shapes and costs, boxes with low scores."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("service") / "random-edge.pt"
    save_checkpoint(Detector(get_config("edge"), CategoryMap(CATEGORIES), provenance={"note": "random"}), path)
    return path


@pytest.fixture(scope="session")
def served_export() -> Path:
    """The bundled demo model's export, served as `make serve` serves an export: what the real-server tests run,
    since a server on it starts without importing torch (3 s instead of 14 on a busy 2-core machine), and a
    committed one costs no export per test process."""
    return DEMO_EXPORT


@pytest.fixture(scope="session")
def make_settings(checkpoint) -> Callable[..., Settings]:
    def make(**overrides) -> Settings:
        return Settings(**{"checkpoint": checkpoint, "threads": 1, "warmup_runs": 0, **overrides})

    return make


@asynccontextmanager
async def serving(app, **client_options):
    """Run the app's lifespan and give an httpx client talking to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service", **client_options) as client:
            yield client


class FakeModel:
    """A stand-in predict: one box per image derived from the image itself, so results show whose they are.

    The box covers the middle half of the (resized) image; the score is the image's mean value. ``fail_if``
    makes a batch raise when it holds an image for which it returns True; ``delay`` slows every batch; with
    ``hold``, every batch waits until that event is set (busy for as long as a test needs, whatever the machine).
    """

    def __init__(
        self,
        *,
        delay: float = 0.0,
        fail_if: Callable[[np.ndarray], bool] | None = None,
        hold: threading.Event | None = None,
    ) -> None:
        self.delay = delay
        self.fail_if = fail_if
        self.hold = hold
        self.batch_sizes: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, images: list[np.ndarray]) -> list[Detections]:
        with self.lock:
            self.batch_sizes.append(len(images))
        if self.delay:
            time.sleep(self.delay)
        if self.hold is not None:
            self.hold.wait(timeout=60)
        if self.fail_if is not None and any(self.fail_if(image) for image in images):
            raise RuntimeError("injected failure")
        results = []
        for image in images:
            _, h, w = image.shape
            box = np.array([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], np.float32)
            results.append(Detections(box, np.array([1]), np.array([image.mean()], np.float32)))
        return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, process: subprocess.Popen, url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    def memory_mb(self) -> dict[str, float]:
        """Resident memory: VmRSS in all, RssAnon the process's own, RssFile mapped files (torch's libraries)."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                fields[name] = int(value.split()[0]) / 1024
        return fields

    def metric(self, name: str) -> float:
        """Sum of a metric's samples (all label sets) from /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@contextmanager
def live_server(
    checkpoint: Path, tmp_path: Path, *args: str, env: dict | None = None, launcher: list[str] | None = None
) -> Iterator[LiveServer]:
    """``python -m service`` (or ``launcher``) on a free port of 127.0.0.1; waits until ready, then stops it
    (SIGTERM, then kill)."""
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    command = [*(launcher or [sys.executable, "-m", "service"]), "--checkpoint", str(checkpoint), "--port", str(port)]
    command += ["--threads", "1", "--warmup-runs", "1", "--no-access-log", *args]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")}
    environment.update(env or {})
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=environment)
    server = LiveServer(process, f"http://127.0.0.1:{port}", log)
    try:
        headers = {"X-API-Key": environment["SERVICE_API_KEY"]} if "SERVICE_API_KEY" in environment else {}
        deadline = time.monotonic() + 180  # a loaded 2-core machine can take a while
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{server.url}/readyz", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in 180 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def server(served_export, tmp_path_factory) -> Iterator[LiveServer]:
    """One shared real server with default limits and batching (max_batch_size 4, max_wait_ms 50)."""
    with live_server(
        served_export, tmp_path_factory.mktemp("live"), "--max-batch-size", "4", "--max-wait-ms", "50"
    ) as live:
        yield live


@pytest.fixture(scope="session")
def app_factory(make_settings):
    def build(predict=None, **overrides):
        return create_app(make_settings(**overrides), predict=predict)

    return build


@pytest.fixture(scope="session")
def serve():
    return serving


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # the service runs on asyncio (uvicorn's loop)


@pytest.fixture(scope="session")
def fake_model_cls() -> type[FakeModel]:
    return FakeModel


@pytest.fixture(scope="session")
def launch_server(served_export):
    """``with launch_server(folder, "--flag", "value") as live:`` a server of one's own for module-scoped fixtures."""

    def launch(folder: Path, *args: str, env: dict | None = None):
        return live_server(served_export, folder, *args, env=env)

    return launch


@pytest.fixture
def start_server(served_export, tmp_path):
    """``with start_server("--flag", "value", env={...}) as live:`` a server of one's own, stopped after."""

    def start(*args: str, env: dict | None = None):
        return live_server(served_export, tmp_path, *args, env=env)

    return start


def read_head(sock: socket.socket) -> bytes:
    """What the server answers on ``sock`` up to the end of its first response head (or until it closes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
