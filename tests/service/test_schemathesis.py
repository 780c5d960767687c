"""Schemathesis against the live server's OpenAPI schema: every check, with the API key on."""

import subprocess
import sys
from pathlib import Path

import pytest

# The schema says "binary"; it cannot say "a decodable JPEG, PNG, WebP or BMP within the limits", so a
# schema-valid body may still be refused for its content: 400 (not an image), 413 (too large), 415 (GIF...).
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "409", "413", "415"]
"""


@pytest.mark.slow
def test_schemathesis_finds_nothing(start_server, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    st = Path(sys.executable).with_name("st")
    with start_server(env={"SERVICE_API_KEY": "fuzz-key"}) as live:
        run = subprocess.run(
            [str(st), "--config-file", str(config), "--no-color", "run", f"{live.url}/openapi.json"]
            + ["-H", "X-API-Key: fuzz-key", "--checks", "all", "--max-examples", "300", "--workers", "2"]
            + ["--seed", "20240601", "--request-timeout", "60"],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,  # schemathesis keeps its state in ./.schemathesis
        )
        assert live.process.poll() is None, "the server survived"
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout
