"""An app that serves files itself (the tip-7 mistake): a StaticFiles mount, a nested one, a FileResponse."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

import collector

STATIC_DIR = Path(os.environ["STATIC_DIR"])

app = FastAPI()
assets = FastAPI()
assets.mount("/img", StaticFiles(directory=STATIC_DIR))
app.mount("/static", StaticFiles(directory=STATIC_DIR))
app.mount("/assets", assets)


@app.get("/download/{name}")
async def download(name: str) -> FileResponse:
    path = STATIC_DIR / name
    if path.parent != STATIC_DIR or not path.is_file():
        raise HTTPException(404)
    return FileResponse(path)


collector.instrument(app)
