"""An app told its own root path (``FastAPI(root_path=...)``), behind a proxy that keeps the prefix."""

from __future__ import annotations

from fastapi import FastAPI

import collector

app = FastAPI(root_path="/api")


@app.get("/items/{item_id}")
async def get_item(item_id: int) -> dict[str, int]:
    return {"id": item_id}


collector.instrument(app)
