"""An app with tracing on at full sampling, for exemplars on a real server."""

from __future__ import annotations

from fastapi import FastAPI

import collector

app = FastAPI()


@app.get("/items/{item_id}")
async def get_item(item_id: int) -> dict[str, int]:
    return {"id": item_id}


collector.instrument(app, tracing="on", trace_sample_ratio=1.0)
