"""Production-like serving in one command: gunicorn, one uvicorn worker per core, multi-process metrics.

    python -m sample_app.serve [--port 8000] [--workers N]

Sets ``PROMETHEUS_MULTIPROC_DIR`` (unless set) before gunicorn starts, loads the seed data once,
then runs ``gunicorn -c python:collector.gunicorn_conf sample_app.main:app``: one scrape of
``/metrics`` sums every worker. This is tip 4's good variant; ``uvicorn sample_app.main:app`` its bad one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--workers", type=int, default=None, help="default: one per core (collector.gunicorn_conf)"
    )
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    # Set before any worker imports prometheus_client: the mode is chosen at import.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(Path(tempfile.gettempdir()) / "sample_app-metrics"))
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

    from sqlalchemy.ext.asyncio import create_async_engine

    from sample_app import seed
    from sample_app.config import Config, ConfigError

    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def prepare() -> None:  # once here, so the workers start on loaded data
        engine = create_async_engine(config.database_url)
        try:
            await seed.prepare(engine, config.seed, config.size, config.work_dir)
        finally:
            await engine.dispose()

    asyncio.run(prepare())
    gunicorn = Path(sys.executable).with_name("gunicorn")
    command = [str(gunicorn), "-c", "python:collector.gunicorn_conf", "-b", f"{args.host}:{args.port}"]
    if args.workers is not None:
        command += ["-w", str(args.workers)]
    os.execv(command[0], [*command, "sample_app.main:app"])


if __name__ == "__main__":
    sys.exit(main())
