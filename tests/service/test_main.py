"""``python -m service``: flags, environment variables, and settings checked before anything starts."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import service.__main__ as main_module
from detector import DEFAULT_EXPORT
from service import Settings
from service.protocol import HeadLimits

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def captured(monkeypatch):
    calls = {}

    def fake_run(app, **options):
        calls["app"], calls["settings"] = app, app.state.settings
        calls["options"] = options

    monkeypatch.setattr(main_module.uvicorn, "run", fake_run)
    for name in list(os.environ):
        if name.startswith("SERVICE_"):
            monkeypatch.delenv(name)
    return calls


def test_flags_override_the_environment(captured, monkeypatch, checkpoint):
    monkeypatch.setenv("SERVICE_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("SERVICE_MAX_WAIT_MS", "7")
    monkeypatch.setenv("SERVICE_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("SERVICE_API_KEY", "k")
    assert main_module.main(["--max-batch-size", "2", "--port", "8123", "--cors-origins", "http://a,http://b"]) == 0
    settings: Settings = captured["settings"]
    assert (settings.max_batch_size, settings.max_wait_ms, settings.port) == (2, 7.0, 8123)
    assert settings.checkpoint == checkpoint and settings.api_key.get_secret_value() == "k"
    assert settings.cors_origins == ["http://a", "http://b"]
    assert captured["options"]["host"] == "127.0.0.1" and captured["options"]["port"] == 8123


def test_serves_the_coco_export_on_onnx_runtime_by_default(captured):
    assert main_module.main([]) == 0
    assert captured["settings"].checkpoint == DEFAULT_EXPORT and DEFAULT_EXPORT.name == "coco.onnx"
    assert captured["app"].state.engine.name == "onnxruntime"


def test_bad_settings_stop_before_serving(captured, capsys, checkpoint, tmp_path):
    assert main_module.main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint file" in capsys.readouterr().err
    assert main_module.main(["--checkpoint", str(checkpoint), "--max-batch-size", "0"]) == 2
    assert "max_batch_size" in capsys.readouterr().err
    assert main_module.main(["--checkpoint", str(checkpoint), "--queue-size", "2"]) == 2
    assert "queue_size" in capsys.readouterr().err
    assert "settings" not in captured


def test_bad_model_files_stop_before_serving_in_one_line(captured, capsys, tmp_path):
    for name, engine, message in [
        ("garbage.onnx", "auto", "not a loadable ONNX model"),
        ("garbage.pt", "auto", "not a readable checkpoint"),
        ("garbage.pt", "onnxruntime", "not a loadable ONNX model"),
    ]:
        (tmp_path / name).write_bytes(b"not a model" * 100)
        assert main_module.main(["--checkpoint", str(tmp_path / name), "--engine", engine]) == 2
        err = capsys.readouterr().err
        assert message in err and name in err and len(err.strip().splitlines()) == 1, err
    assert "settings" not in captured


def test_help_lists_options_and_environment_variables():
    out = subprocess.run([sys.executable, "-m", "service", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0
    assert "--max-batch-size" in out.stdout and "SERVICE_MAX_BATCH_SIZE" in out.stdout
    assert "SERVICE_API_KEY" in out.stdout and "--api-key" not in out.stdout


def test_uvicorn_gets_the_connection_limits(captured, checkpoint):
    args = ["--checkpoint", str(checkpoint), "--limit-concurrency", "9", "--keep-alive-s", "3", "--max-headers", "30"]
    assert main_module.main([*args, "--read-timeout-s", "4"]) == 0
    options = captured["options"]
    assert options["limit_concurrency"] == 9 and options["timeout_keep_alive"] == 3
    assert options["http"].keywords["limits"] == HeadLimits(max_bytes=16384, max_headers=30, timeout_s=4.0)
    assert "redact_secrets" in options["log_config"]["handlers"]["access"]["filters"]


def test_a_misspelt_variable_stops_before_serving(captured, capsys, monkeypatch, checkpoint):
    monkeypatch.setenv("SERVICE_QUEUE_SIZ", "8")
    assert main_module.main(["--checkpoint", str(checkpoint)]) == 2
    assert "SERVICE_QUEUE_SIZ (did you mean SERVICE_QUEUE_SIZE?)" in capsys.readouterr().err
    assert "settings" not in captured


def test_a_probe_port_in_use_or_the_services_own_stops_before_serving(captured, capsys, checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main_module.main(["--checkpoint", str(checkpoint), "--probe-port", str(port)]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"probe port {port}" in err and "in use" in err
    assert "settings" not in captured  # uvicorn never started
    assert main_module.main(["--checkpoint", str(checkpoint), "--port", "8123", "--probe-port", "8123"]) == 2
    assert "probe_port must differ from port" in capsys.readouterr().err
