"""The demo page at ``/``: pick a model, drop an image, see the overlay (``/segment?format=overlay``),
the per-class areas and the timings. Static files shipped in the package (``static/``), no build
step; the page calls the same public API as any client, so it needs nothing else of the server."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")
STATIC_URL = "/static"
PAGE_PATHS = frozenset({"/", f"{STATIC_URL}/demo.js", f"{STATIC_URL}/demo.css"})  # what the page loads

router = APIRouter(include_in_schema=False)


@router.get("/")
async def demo_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")
