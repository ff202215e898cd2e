"""``collector grafana push``: upload the generated dashboards into an existing Grafana.

Steps, each with one clear line when it fails: read the dashboards (``dashboards/fastapi-collector``,
exit 2 when they cannot be read); ask ``/api/health`` for the version (unreachable, or older than
``MIN_GRAFANA``, exit 1); make sure the folder exists (created with a uid from its title); upload each
dashboard with ``overwrite`` unless Grafana already holds exactly it in that folder, so a second push
changes nothing; then check that the Prometheus datasource the dashboards expect (uid
``PROMETHEUS_UID``) exists, and say what to do when it does not (the dashboards still work by picking
another Prometheus in their datasource menu). 401 and 403 say which credential is missing.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector import _dashboards
from collector.catalogue.model import CatalogueError
from collector.cli import CommandError

MESSAGE = "collector grafana push"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text.split("-")[0])[:3])


def _reason(exc: Exception) -> str:
    """The useful end of a transport error: "Connection refused", "cannot resolve host x"."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if "Failed to resolve" in text or "NameResolutionError" in text:
        return "cannot resolve its host name"
    if errno:
        return errno.group(1).strip()
    return "timed out" if "timed out" in text.lower() else type(exc).__name__


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", title.lower()).strip("-")[:40] or "fastapi-collector"


class Grafana:
    """The few Grafana API calls the push makes, with grafana-client's errors turned into one line."""

    def __init__(self, url: str, token: str | None, timeout: float = 10.0) -> None:
        try:
            from grafana_client.api import GrafanaApi
        except ImportError:
            raise CommandError("needs grafana-client: pip install 'fastapi-collector[grafana]'") from None
        self.url = url.rstrip("/")
        self.api = GrafanaApi.from_url(self.url, credential=token, timeout=timeout)

    def call(self, what: str, request: Callable[..., Any], *args: Any) -> Any:
        """``request(*args)`` (a grafana-client call, ``what`` names it); ``None`` for 404; every other
        failure is a ``CommandError``."""
        from grafana_client.client import (
            GrafanaClientError,
            GrafanaException,
            GrafanaTimeoutError,
            GrafanaUnauthorizedError,
        )
        from niquests.exceptions import RequestException

        try:
            return request(*args)
        except GrafanaUnauthorizedError:
            raise CommandError(
                f"Grafana at {self.url} refused the credentials (401): pass a service-account token with "
                "--token or GRAFANA_TOKEN"
            ) from None
        except GrafanaClientError as exc:
            if exc.status_code == 404:
                return None
            if exc.status_code == 403:
                raise CommandError(
                    f"Grafana at {self.url} forbids {what} (403): the token needs the Editor "
                    "role (create folders and dashboards)"
                ) from None
            raise CommandError(f"Grafana at {self.url} refused {what}: {exc.message}") from None
        except GrafanaTimeoutError:
            raise CommandError(f"cannot reach Grafana at {self.url}: timed out") from None
        except GrafanaException as exc:
            raise CommandError(f"Grafana at {self.url} failed {what}: {exc.message}") from None
        except (RequestException, OSError) as exc:
            raise CommandError(f"cannot reach Grafana at {self.url}: {_reason(exc)}") from None
        except ValueError:
            raise CommandError(f"{self.url} does not answer {what} as Grafana does (not JSON)") from None


def check_version(grafana: Grafana) -> str:
    # /api/health answers without credentials, so an old Grafana is named before any 401.
    health = grafana.call("the health check", grafana.api.client.GET, "/health")
    version = str(health.get("version", "")) if isinstance(health, dict) else ""
    if not version:
        raise CommandError(f"{grafana.url} does not answer /api/health as Grafana does")
    minimum = ".".join(str(part) for part in _dashboards.MIN_GRAFANA)
    if _version(version) < _dashboards.MIN_GRAFANA:
        raise CommandError(
            f"Grafana {version} at {grafana.url} is too old: the dashboards need Grafana {minimum} or newer"
        )
    return version


def ensure_folder(grafana: Grafana, title: str) -> tuple[str, bool]:
    """The folder's uid, and whether it was created now."""
    uid = _slug(title)
    if grafana.call("reading folders", grafana.api.folder.get_folder, uid) is not None:
        return uid, False
    grafana.call("creating folders", grafana.api.folder.create_folder, title, uid)
    return uid, True


def _comparable(dashboard: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in dashboard.items() if key not in ("id", "version")}


def upload(grafana: Grafana, dashboard: dict[str, Any], folder: str) -> bool:
    """Upload unless Grafana holds exactly this dashboard in this folder; True when uploaded."""
    current = grafana.call("reading dashboards", grafana.api.dashboard.get_dashboard, dashboard["uid"])
    if (
        isinstance(current, dict)
        and _comparable(current.get("dashboard") or {}) == _comparable(dashboard)
        and (current.get("meta") or {}).get("folderUid") == folder
    ):
        return False
    body = {
        "dashboard": {**dashboard, "id": None},
        "folderUid": folder,
        "overwrite": True,
        "message": MESSAGE,
    }
    grafana.call("saving dashboards", grafana.api.dashboard.update_dashboard, body)
    return True


def datasource_advice(grafana: Grafana) -> str | None:
    uid = _dashboards.PROMETHEUS_UID
    found = grafana.call("reading datasources", grafana.api.datasource.get_datasource_by_uid, uid)
    if isinstance(found, dict) and found.get("type") == "prometheus":
        return None
    what = f"is a {found.get('type')} datasource" if isinstance(found, dict) else "does not exist"
    return (
        f"warning: the Prometheus datasource the dashboards expect (uid {uid}) {what} in {grafana.url}: "
        f"provision grafana/provisioning/datasources/datasources.yml, or give your Prometheus datasource "
        f"the uid {uid}, or pick it in each dashboard's Prometheus menu"
    )


def run(args: argparse.Namespace) -> int:
    try:
        dashboards = _dashboards.load(Path(args.dashboards))
    except CatalogueError as exc:
        raise CommandError(str(exc), code=2) from None
    if not dashboards:
        raise CommandError(f"no dashboards in {args.dashboards}: run `collector build` first", code=2)
    grafana = Grafana(args.url, args.token or os.environ.get("GRAFANA_TOKEN") or None)
    version = check_version(grafana)
    folder, created = ensure_folder(grafana, args.folder)
    uploaded = [d["uid"] for d in dashboards if upload(grafana, d, folder)]
    advice = datasource_advice(grafana)
    print(
        f"Grafana {version} at {grafana.url}: folder {args.folder!r} {'created' if created else 'exists'}, "
        f"{len(uploaded)} of {len(dashboards)} dashboards uploaded"
        + (f" ({', '.join(uploaded)})" if uploaded else ", all already up to date")
    )
    if advice:
        print(advice, file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    grafana = subparsers.add_parser("grafana", help="work with a Grafana server")
    actions = grafana.add_subparsers(dest="action", required=True)
    push = actions.add_parser("push", help="upload the dashboards into a Grafana folder")
    push.add_argument("--url", required=True, help="Grafana's base URL, e.g. https://grafana.example.com")
    push.add_argument("--token", help="service-account token (default: $GRAFANA_TOKEN)")
    push.add_argument(
        "--folder", default=_dashboards.FOLDER, help=f"folder title (default: {_dashboards.FOLDER})"
    )
    push.add_argument(
        "--dashboards",
        default=_dashboards.DIRECTORY,
        help=f"folder of dashboard JSON (default: {_dashboards.DIRECTORY})",
    )
    push.set_defaults(run=run)
