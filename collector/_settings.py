"""Settings: keyword arguments to ``instrument()`` or ``COLLECTOR_*`` environment variables."""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from collector._buckets import DEFAULT_LATENCY_BUCKETS, LATENCY_BUCKETS_VARIABLE, parse_buckets

logger = logging.getLogger("collector")

MIN_TOKEN_LENGTH = 16
_PREFIX = "COLLECTOR_"
# One or more segments, no trailing slash: "/" would take every route of the app.
_PATH = re.compile(r"(/[^/?#\s]+)+")
_warned_unknown: set[str] = set()
# Sampling another thread's stack (sys._current_frames(), as the profiler does every few
# milliseconds) corrupts CPython 3.11's heap under load: a sample app on SQLAlchemy's async ORM
# died of SIGSEGV within minutes of profiling at 0.2 ms, never with profiling off, and ran clean
# on 3.12 and 3.13 (benchmarks/results/profiler-crash.md). Profiling there is opt-in at that risk.
PROFILE_SAFE_PYTHON = (3, 12)
_warned_profile = False


class ConfigError(ValueError):
    """A keyword argument has a value the collector cannot use; raised at start-up, never per request."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=_PREFIX, extra="forbid", frozen=True)

    enabled: bool = True
    metrics_path: str = "/metrics"
    # 0 serves metrics on the app itself at metrics_path; any other port gets its own server.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_addr: str = "0.0.0.0"
    # Without it anyone who reaches the app reads its metrics: the app's own middleware does not guard them.
    metrics_token: str | None = None
    # Scrapes within this many seconds of a rendering share it; concurrent scrapes always do.
    metrics_cache_ttl: float = Field(default=1.0, ge=0, le=60)

    # Below a millisecond the heartbeat alone keeps a core busy while the app is idle.
    heartbeat_interval: float = Field(default=0.025, ge=0.001, le=5)
    stall_threshold: float = Field(default=0.1, gt=0, le=60)
    stall_locations_max: int = Field(default=20, ge=1, le=1000)
    process_sample_interval: float = Field(default=1.0, gt=0, le=60)

    # Share of requests whose FastAPI internals (dependencies, validation, serialization, response
    # size) are timed: on average one in round(1 / ratio), at random gaps. Averages stay exact.
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
    # Profile on Python 3.11 anyway (see PROFILE_SAFE_PYTHON): off unless asked for by name.
    profile_on_python311: bool = False
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

    @field_validator("metrics_token", "profile_token")
    @classmethod
    def _token(cls, token: str | None) -> str | None:
        if token is not None and (
            len(token) < MIN_TOKEN_LENGTH or not all("!" <= char <= "~" for char in token)
        ):
            raise ValueError(
                f"must be at least {MIN_TOKEN_LENGTH} visible ASCII characters without spaces "
                "(e.g. from `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
            )
        return token

    @field_validator("metrics_path", "profile_path", "tips_path")
    @classmethod
    def _path(cls, path: str) -> str:
        if not _PATH.fullmatch(path):
            raise ValueError("must be a path like /metrics ('/' or a trailing '/' takes the app's routes)")
        return path

    @model_validator(mode="after")
    def _check(self) -> Settings:
        metrics, profiles = self.metrics_path, self.profile_path
        if metrics == profiles or profiles.startswith(metrics + "/") or metrics.startswith(profiles + "/"):
            raise ValueError(f"profile_path {profiles!r} and metrics_path {metrics!r} overlap")
        tips = self.tips_path
        for other in (metrics, profiles):
            if tips == other or tips.startswith(other + "/") or other.startswith(tips + "/"):
                raise ValueError(f"tips_path {tips!r} and {other!r} overlap")
        if self.profile_endpoint and not self.profile_token:
            raise ValueError(
                "profile_endpoint needs profile_token (COLLECTOR_PROFILE_TOKEN): profiles show code"
            )
        if self.tips_page and not self.profile_token:
            raise ValueError("tips_page needs profile_token (COLLECTOR_PROFILE_TOKEN): the page shows code")
        return self


def _warn_unknown_variables() -> None:
    """Name ``COLLECTOR_*`` variables that are no setting, once: a typo would otherwise go unnoticed.

    A warning and not a stop: other tools read variables with this prefix too (Jaeger's
    ``COLLECTOR_OTLP_ENABLED``), and an environment shared with them must still start.
    """
    known = [_PREFIX + name.upper() for name in Settings.model_fields]
    unknown = sorted(
        name for name in os.environ if name.upper().startswith(_PREFIX) and name.upper() not in known
    )
    fresh = [name for name in unknown if name not in _warned_unknown]
    if not fresh:
        return
    _warned_unknown.update(fresh)
    described = []
    for name in fresh:
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.75)
        described.append(f"{name} (did you mean {close[0]}?)" if close else name)
    logger.warning("collector: not a setting, ignored: %s", ", ".join(described))


def _environment_is_valid() -> bool:
    try:
        Settings()
    except ValidationError:
        return False
    return True


def load(**overrides: Any) -> Settings:
    """Settings from keyword arguments over ``COLLECTOR_*`` variables.

    A bad keyword raises ``ConfigError``. A bad variable is an operator's mistake, met at
    start-up by whichever call reads the settings first: it stops the process with one line.
    """
    _warn_unknown_variables()
    if "latency_buckets" in overrides:  # the histogram exists before instrument() is called
        raise ConfigError(
            f"collector: latency_buckets is read when collector is imported; set {LATENCY_BUCKETS_VARIABLE}"
        )
    try:
        return _profile_where_safe(Settings(**overrides))
    except ValidationError as exc:
        problems = []
        from_keywords = False
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            # A cross-field error (no field) is the keywords' when the variables alone are fine.
            from_keywords = from_keywords or (field in overrides if field else _environment_is_valid())
            where = f"{field} ({_PREFIX}{field.upper()})" if field else "settings"
            if not field or "input" not in error:
                value = ""
            elif field.endswith("token"):
                value = " = (hidden)"  # a secret stays out of the logs, even a bad one
            else:
                value = f" = {error['input']!r}"
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{where}{value}: {message}")
        text = "collector: invalid settings: " + "; ".join(problems)
        if from_keywords:
            raise ConfigError(text) from None
        raise SystemExit(text) from None


def _profile_where_safe(settings: Settings) -> Settings:
    """The settings, with profiling off on a Python where sampling other threads can crash the app."""
    global _warned_profile
    if not settings.profile or sys.version_info >= PROFILE_SAFE_PYTHON or settings.profile_on_python311:
        return settings
    if not _warned_profile:
        _warned_profile = True
        logger.warning(
            "collector: profiling is off on Python %d.%d: sampling other threads' stacks can crash "
            "CPython 3.11 under load (not seen on 3.12 or 3.13); COLLECTOR_PROFILE_ON_PYTHON311=true "
            "profiles anyway, at that risk",
            *sys.version_info[:2],
        )
    return settings.model_copy(update={"profile": False})
