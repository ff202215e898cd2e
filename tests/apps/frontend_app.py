"""A single-page app served by FastAPI's ``frontend()``: at the root, and in an included router."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, FastAPI

import collector

FRONTEND_DIR = Path(os.environ["FRONTEND_DIR"])

app = FastAPI()
admin = APIRouter()


@app.get("/api/items/{item_id}")
async def get_item(item_id: int) -> dict[str, int]:
    return {"id": item_id}


app.frontend("/", directory=FRONTEND_DIR / "site")
admin.frontend("/", directory=FRONTEND_DIR / "admin")
app.include_router(admin, prefix="/admin")
collector.instrument(app)
