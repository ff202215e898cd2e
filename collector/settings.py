"""Settings: keyword arguments to ``instrument()`` or ``COLLECTOR_*`` environment variables."""

from __future__ import annotations

import itertools
import math
import os
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
LATENCY_BUCKETS_VARIABLE = "COLLECTOR_LATENCY_BUCKETS"


def parse_buckets(text: str) -> tuple[float, ...]:
    """Histogram bucket bounds from comma-separated seconds: positive, finite, strictly increasing."""
    try:
        bounds = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError("must be comma-separated numbers of seconds, e.g. 0.05,0.1,0.25,0.5,1") from None
    if not all(math.isfinite(b) and b > 0 for b in bounds):
        raise ValueError("every bucket must be a positive, finite number of seconds")
    if any(a >= b for a, b in itertools.pairwise(bounds)):
        raise ValueError("buckets must be in increasing order, without repeats")
    return bounds


def latency_buckets_from_environment() -> tuple[float, ...]:
    """The request-latency buckets: ``COLLECTOR_LATENCY_BUCKETS``, or the defaults; a bad value stops."""
    text = os.environ.get(LATENCY_BUCKETS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_LATENCY_BUCKETS
    try:
        return parse_buckets(text)
    except ValueError as exc:
        raise SystemExit(
            f"collector: invalid settings:\n  latency_buckets ({LATENCY_BUCKETS_VARIABLE}) = {text!r}: {exc}"
        ) from None


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

    # Exact paths (after root_path) left out of the request metrics, e.g. probes: /healthz,/readyz.
    exclude_paths: Annotated[tuple[str, ...], NoDecode] = ()
    # Read from the environment when collector.metrics is imported; here so that it is a known setting.
    latency_buckets: Annotated[tuple[float, ...], NoDecode] = DEFAULT_LATENCY_BUCKETS

    @field_validator("exclude_paths", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("exclude_paths")
    @classmethod
    def _check_paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"every path must start with '/' ({path!r} does not)")
        return value

    @field_validator("latency_buckets", mode="before")
    @classmethod
    def _parse_buckets(cls, value: Any) -> Any:
        return parse_buckets(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        for name in ("metrics_path", "profile_path"):
            if not getattr(self, name).startswith("/"):
                raise ValueError(f"{name} must start with '/'")
        if self.profile_endpoint and not self.profile_token:
            raise ValueError(
                "profile_endpoint needs profile_token (COLLECTOR_PROFILE_TOKEN): profiles show code"
            )
        return self


def load(**overrides: Any) -> Settings:
    """Settings from keyword arguments over ``COLLECTOR_*`` variables, or a ``ConfigError``."""
    if "latency_buckets" in overrides:  # the histogram exists before instrument() is called
        raise ConfigError(
            f"collector: latency_buckets is read when collector is imported; set {LATENCY_BUCKETS_VARIABLE}"
        )
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
