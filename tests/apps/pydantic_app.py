"""An app whose routes each spend their time in one FastAPI phase: dependencies, validation, serialization."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

import collector

app = FastAPI()

ROWS = 3000
DEPENDENCY_SECONDS = 0.05


class Row(BaseModel):
    id: int
    name: str
    tags: list[str]
    score: float


async def slow_dependency() -> int:
    await asyncio.sleep(DEPENDENCY_SECONDS)
    return 1


BACKGROUND_SECONDS = 0.3


@app.get("/background")
async def with_background_task(tasks: BackgroundTasks) -> dict[str, bool]:
    tasks.add_task(asyncio.sleep, BACKGROUND_SECONDS)  # runs after the response has gone out
    return {"queued": True}


@app.get("/slow-dependency/{item_id}")
async def with_slow_dependency(
    item_id: int, token: Annotated[int, Depends(slow_dependency)]
) -> dict[str, int]:
    return {"id": item_id, "token": token}


@app.post("/rows/upload")
async def accept_rows(rows: list[Row]) -> dict[str, int]:
    return {"count": len(rows)}


def make_rows() -> list[dict[str, object]]:
    return [{"id": i, "name": f"row {i}", "tags": ["a", "b", "c"], "score": i / 3} for i in range(ROWS)]


@app.get("/rows", response_model=list[Row])
async def list_rows() -> list[dict[str, object]]:
    return make_rows()


@app.get("/rows-untyped", response_model=None)
async def list_rows_untyped() -> list[dict[str, object]]:
    return make_rows()


@app.api_route("/raw", methods=["GET", "HEAD"])
async def raw() -> Response:
    return Response(content=b"x" * 1234, media_type="application/octet-stream")


@app.get("/stream")
async def stream(chunks: int = 4) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield b"y" * 100

    return StreamingResponse(body(), media_type="text/plain")


collector.instrument(app, internals_sample_ratio=1.0)  # every request timed: exact counts
