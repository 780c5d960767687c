"""The edge image's and compose's settings (issue 13), and the checks `make docker-test` relies on.

Read from the files themselves: the image installs its locked, hashed wheels and keeps no anonymous volume;
its health check means ready; compose binds this machine only by default, says why, and rotates its logs; the
lock pins every serving dependency with hashes; the smoke test refuses a busy port and an exited container.
"""

import json
import os
import re
import socket
import stat
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy"))
import smoke_test  # noqa: E402


def test_the_image_installs_the_lock_and_keeps_no_volume():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(
        r"pip install [^\n]*--require-hashes --only-binary=:all:[^\n]*\n[^\n]*-r requirements.lock", dockerfile
    )
    assert "--no-build-isolation --no-index ." in dockerfile  # the package is built with the locked setuptools
    assert not re.search(r"^VOLUME", dockerfile, re.MULTILINE)
    healthcheck = dockerfile.split("HEALTHCHECK", 1)[1].split("\n\n", 1)[0]
    assert "healthcheck.py" in healthcheck and "/healthz" not in healthcheck
    # The health check asks the probe port, which the image turns on but does not publish.
    assert re.search(r"SERVICE_PROBE_PORT=8001\b", dockerfile) and not re.search(r"^EXPOSE .*8001", dockerfile, re.M)


def test_the_lock_pins_every_serving_dependency_with_hashes():
    lock = (REPO / "deploy" / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+) \\$", lock, re.MULTILINE))
    wanted = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-") for requirement in wanted}
    assert names | {"setuptools"} <= set(pins), names - set(pins)
    for block in re.split(r"\n(?=[a-z])", lock.split("\n\n", 1)[-1]):
        if "==" in block:
            assert "--hash=sha256:" in block, block[:80]
    assert "Python 3.11" in lock  # bookworm's


def test_compose_binds_this_machine_rotates_logs_and_checks_readiness():
    text = (REPO / "docker-compose.yml").read_text()
    service = yaml.safe_load(text)["services"]["detector"]
    assert service["ports"] == ["${DETECTOR_ADDRESS:-127.0.0.1}:8000:8000"]
    assert "API key" in text.split("ports:", 1)[1].split("environment:", 1)[0]  # the comment says what to add
    assert service["logging"]["options"]["max-size"] and service["logging"]["options"]["max-file"]
    assert "healthcheck.py" in " ".join(service["healthcheck"]["test"])


def test_podman_setup_leaves_the_hosts_configuration_alone():
    script = (REPO / "deploy" / "podman-setup.sh").read_text()
    assert "> /etc/containers" not in script and "CONTAINERS_CONF" in script
    assert os.access(REPO / "deploy" / "podman-setup.sh", os.X_OK)
    assert stat.S_ISREG((REPO / "deploy" / "containers" / "storage.conf").stat().st_mode)


def test_the_smoke_test_refuses_a_busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(smoke_test.SmokeError, match="in use"):
            smoke_test.require_free_port(busy.getsockname()[1])


def test_the_smoke_test_counts_an_exited_container_as_down(tmp_path, monkeypatch):
    """`podman container exists` is true for an exited container; the state is what counts."""
    fake = tmp_path / "podman"
    state = {"Status": "exited", "Running": False, "ExitCode": 3, "OOMKilled": False, "Pid": 0}
    fake.write_text(
        "#!/bin/sh\n"
        f"case \"$2\" in inspect) echo '{json.dumps(state)}|0';; *) echo 'ERROR: [Errno 98] address in use';; esac\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(smoke_test.SmokeError, match=r"exited \(exit 3\):\s+ERROR: .* address in use"):
        smoke_test.wait_ready("http://127.0.0.1:9", 5, "smoke")
