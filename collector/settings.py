"""Settings: keyword arguments to ``instrument()`` or ``COLLECTOR_*`` environment variables."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(ValueError):
    """A setting has a value the collector cannot use; raised at start-up, never per request."""

    def __init__(self, message: str, *, from_environment: bool = False) -> None:
        super().__init__(message)
        self.from_environment = from_environment


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COLLECTOR_", extra="forbid", frozen=True)

    enabled: bool = True
    metrics_path: str = "/metrics"
    # 0 serves metrics on the app itself at metrics_path; any other port gets its own server.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_addr: str = "0.0.0.0"

    heartbeat_interval: float = Field(default=0.025, gt=0, le=5)
    stall_threshold: float = Field(default=0.1, gt=0, le=60)
    stall_locations_max: int = Field(default=20, ge=1, le=1000)
    process_sample_interval: float = Field(default=1.0, gt=0, le=60)

    # Share of requests whose FastAPI internals (dependencies, validation, serialization,
    # response size) are timed: one in round(1 / ratio). Averages stay exact; counts are sampled.
    internals_sample_ratio: float = Field(default=0.1, ge=0, le=1)

    tracing: Literal["auto", "on", "off"] = "auto"
    trace_sample_ratio: float = Field(default=0.1, ge=0, le=1)

    n_plus_one_threshold: int = Field(default=5, ge=2, le=10_000)
    slow_query_threshold: float = Field(default=0.5, gt=0)

    profile: bool = False
    profile_threshold: float = Field(default=1.0, gt=0)
    profile_percentile: float = Field(default=99.0, gt=0, le=100)
    # At 5 ms the sampler thread took ~1.5 % of a saturated core; at 1 ms 3-5 %, and ~9 % of sync requests/s.
    profile_interval: float = Field(default=0.005, gt=0, le=1)
    profile_store_count: int = Field(default=50, ge=1, le=10_000)
    profile_store_bytes: int = Field(default=20_000_000, ge=10_000)
    profile_endpoint: bool = False
    profile_path: str = "/_collector/profiles"
    profile_token: str | None = None
    # The live tips page (collector._tips_page), behind profile_token: it shows code locations.
    tips_page: bool = False
    tips_path: str = "/_collector/tips"
    tips_interval: float = Field(default=5.0, gt=0, le=60)
    tips_window: float = Field(default=60.0, gt=0, le=600)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        for name in ("metrics_path", "profile_path", "tips_path"):
            if not getattr(self, name).startswith("/"):
                raise ValueError(f"{name} must start with '/'")
        if self.profile_endpoint and not self.profile_token:
            raise ValueError(
                "profile_endpoint needs profile_token (COLLECTOR_PROFILE_TOKEN): profiles show code"
            )
        if self.tips_page and not self.profile_token:
            raise ValueError("tips_page needs profile_token (COLLECTOR_PROFILE_TOKEN): the page shows code")
        return self


def load(**overrides: Any) -> Settings:
    """Settings from keyword arguments over ``COLLECTOR_*`` variables, or a ``ConfigError``."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        from_environment = False
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            # A cross-field error (no field) comes from the environment when any variable is set.
            in_env = field not in overrides if field else any(k.startswith("COLLECTOR_") for k in os.environ)
            from_environment = from_environment or in_env
            where = f"{field} (COLLECTOR_{field.upper()})" if field else "settings"
            value = f" = {error['input']!r}" if field and "input" in error else ""
            problems.append(f"{where}{value}: {error['msg']}")
        message = "collector: invalid settings:\n  " + "\n  ".join(problems)
        raise ConfigError(message, from_environment=from_environment) from None
