"""Service settings: one pydantic-settings class, read from ``SERVICE_*`` environment variables and checked at start-up.

``python -m service`` flags override the environment (see ``service.__main__``); ``create_app`` takes a
``Settings`` so that tests build apps without touching the environment.
"""

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from detector.config import DEFAULT_EXPORT
from runtime import EngineName


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVICE_", extra="forbid", validate_default=True)

    checkpoint: Path = Field(DEFAULT_EXPORT, description="the model to serve: a .onnx export or a .pt checkpoint")
    engine: EngineName = Field("auto", description="torch, onnxruntime, or auto (onnxruntime for .onnx files)")
    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 to serve other machines")
    port: int = Field(8000, ge=1, le=65535)
    threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256, description="inference threads")
    decode_workers: int = Field(2, ge=1, le=64, description="images decoded at once (each holds a full bitmap)")
    max_batch_size: int = Field(4, ge=1, le=256, description="images per forward pass")
    max_wait_ms: float = Field(10.0, ge=0, le=10_000, description="how long a batch waits for more images")
    queue_size: int = Field(64, ge=1, le=100_000, description="images waiting for the model; more get 503")
    request_timeout_s: float = Field(30.0, gt=0, le=3600, description="queue wait plus inference; then 504")
    max_body_bytes: int = Field(20 * 2**20, ge=1024, description="largest request body")
    max_pixels: int = Field(24_000_000, ge=1, description="largest image, width x height, from its header")
    max_images_per_request: int = Field(16, ge=1, le=1024)
    score_threshold: float = Field(0.3, ge=0, le=1, description="default for the score_threshold option")
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

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> "Settings":
        if self.queue_size < self.max_images_per_request:
            raise ValueError(
                f"queue_size ({self.queue_size}) must hold at least one full request "
                f"(max_images_per_request = {self.max_images_per_request})"
            )
        return self
