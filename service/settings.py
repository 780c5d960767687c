"""Service settings: one pydantic-settings class, read from ``SERVICE_*`` environment variables and checked at start-up.

``python -m service`` flags override the environment (see ``service.__main__``); ``create_app`` takes a
``Settings`` so that tests build apps without touching the environment.
"""

import difflib
import math
import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from detector.config import DEFAULT_EXPORT
from runtime import EngineName
from runtime.images import DEFAULT_MAX_PIXELS, DEFAULT_SCORE_THRESHOLD


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVICE_", extra="forbid", validate_default=True)

    checkpoint: Path = Field(DEFAULT_EXPORT, description="the model to serve: a .onnx export or a .pt checkpoint")
    engine: EngineName = Field("auto", description="torch, onnxruntime, openvino, or auto (onnxruntime for .onnx)")
    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 to serve other machines")
    port: int = Field(8000, ge=1, le=65535)
    probe_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="a second port where a thread of its own answers GET /healthz and /readyz (no key), so that "
        "probes do not wait behind requests; for the orchestrator (default: none)",
    )
    probe_host: str = Field("127.0.0.1", description="address of the probe port; keep it private")
    threads: int = Field(  # (a lambda: pydantic would pass a one-parameter factory the other fields)
        default_factory=lambda: available_cpus(), ge=1, le=256, description="inference threads (default: CPUs allowed)"
    )
    decode_workers: int = Field(2, ge=1, le=64, description="images decoded at once (each holds a full bitmap)")
    worker_nice: int = Field(  # 10: /healthz p99 under bench/hostile.py's attacks 288 -> 155 ms (README)
        10, ge=0, le=19, description="niceness added to decode and inference threads, so the event loop goes first"
    )
    max_batch_size: int = Field(4, ge=1, le=256, description="images per forward pass")
    max_wait_ms: float = Field(10.0, ge=0, le=10_000, description="how long a batch waits for more images")
    queue_size: int = Field(
        64, ge=1, le=100_000, description="images admitted (being decoded, waiting or in the model); more get 503"
    )
    request_timeout_s: float = Field(30.0, gt=0, le=3600, description="decoding, queue wait and inference; then 504")
    max_body_bytes: int = Field(20 * 2**20, ge=1024, description="largest request body")
    body_budget_bytes: int = Field(
        64 * 2**20, ge=1024, description="request bodies held at once, all requests together; past it 503"
    )
    read_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="longest wait for the next bytes of a request's headers or body; then 408"
    )
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=2**20, description="largest request head; then 431")
    max_headers: int = Field(100, ge=8, le=10_000, description="most header lines in a request; then 431")
    limit_concurrency: int = Field(
        128, ge=4, le=100_000, description="connections and requests at once; past it uvicorn answers 503"
    )
    keep_alive_s: float = Field(5.0, gt=0, le=3600, description="how long an idle keep-alive connection is kept")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="largest image, width x height, from its header")
    decode_budget_pixels: int = Field(
        48_000_000,
        ge=1,
        description="pixels being decoded at once, all requests together (16-bit ones count twice); past it 503",
    )
    max_images_per_request: int = Field(16, ge=1, le=1024)
    score_threshold: float = Field(
        DEFAULT_SCORE_THRESHOLD, ge=0, le=1, description="default for the score_threshold option"
    )
    api_key: SecretStr | None = Field(None, description="when set, every endpoint but /healthz requires it")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="comma-separated")
    warmup_runs: int = Field(2, ge=0, le=100, description="forward passes before /readyz says ready")
    kernel_cache: int = Field(
        64,
        ge=0,
        le=100_000,
        description="oneDNN kernels kept for recent input shapes (its default, 1024, holds ~400 MB more)",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("api_key")
    @classmethod
    def _no_empty_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("must not be empty (leave it unset to disable the API key)")
        return value

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"no checkpoint file at {value} (pass --checkpoint PATH or set SERVICE_CHECKPOINT)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_variables(cls, values: object) -> object:
        # pydantic-settings ignores SERVICE_* variables that name no setting: a typo would silently do nothing.
        known = {f"SERVICE_{name.upper()}" for name in cls.model_fields}
        unknown = sorted(
            name for name in os.environ if name.upper().startswith("SERVICE_") and name.upper() not in known
        )
        if unknown:
            hints = [
                f"{name} (did you mean {match[0]}?)"
                if (match := difflib.get_close_matches(name.upper(), known, 1))
                else name
                for name in unknown
            ]
            raise ValueError(f"unknown environment variables: {', '.join(hints)}")
        return values

    @model_validator(mode="after")
    def _budgets_hold_a_request(self) -> "Settings":
        for budget, limit in (("body_budget_bytes", "max_body_bytes"), ("decode_budget_pixels", "max_pixels")):
            if getattr(self, budget) < getattr(self, limit):
                raise ValueError(
                    f"{budget} ({getattr(self, budget)}) must be at least {limit} ({getattr(self, limit)})"
                )
        return self

    @model_validator(mode="after")
    def _probe_port_is_another(self) -> "Settings":
        if self.probe_port == self.port:
            raise ValueError(f"probe_port must differ from port ({self.port})")
        return self

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> "Settings":
        if self.queue_size < self.max_images_per_request:
            raise ValueError(
                f"queue_size ({self.queue_size}) must hold at least one full request "
                f"(max_images_per_request = {self.max_images_per_request})"
            )
        return self


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (a container's ``--cpus``), which
    ``os.cpu_count()`` ignores (it gives the host's)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _cgroup_quota(cgroup: Path) -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``); None without a quota."""
    try:
        if (cgroup / "cpu.max").is_file():
            quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        else:
            v1 = cgroup / "cpu"
            quota = (v1 / "cpu.cfs_quota_us").read_text().strip()
            period = (v1 / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or int(period) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):  # no such files (not Linux, no CPU controller) or unreadable ones
        return None
