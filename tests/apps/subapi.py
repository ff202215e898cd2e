"""An uninstrumented app with an instrumented sub-app mounted at ``/subapi``."""

from __future__ import annotations

from fastapi import FastAPI

import collector

app = FastAPI()
sub = FastAPI()


@sub.get("/things/{thing_id}")
async def get_thing(thing_id: int) -> dict[str, int]:
    return {"id": thing_id}


collector.instrument(sub)
app.mount("/subapi", sub)
