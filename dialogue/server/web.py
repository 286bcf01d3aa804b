"""The web page at `/`: plain static files (static/index.html, app.css, app.js), no build step.

The page is a client of the public HTTP API and nothing else; it fetches nothing from outside this
server (its Content-Security-Policy says so to the browser), so it works offline. The page and its
files are open even when the server has an API key: they hold no data, and the page asks for the
key before it calls the API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")
STATIC_PREFIX = "/static/"
PAGE_PATH = "/"

# Only this server: scripts, styles, images and API calls. Audio is played from blobs the page
# fetched itself (with the key in a header), never from a URL carrying the key.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' blob: data:; media-src 'self' blob:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; "
                           "frame-ancestors 'none'")


class _AlwaysRevalidated(StaticFiles):
    """Static files that a browser checks (a cheap 304 by ETag) before reusing, so a page served
    after an upgrade never runs last version's script."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def is_public_path(path: str) -> bool:
    """The page and its files, which need no API key."""
    return path == PAGE_PATH or path.startswith(STATIC_PREFIX)


def add_web_page(app: FastAPI) -> None:
    """Serve the page at `/` and its files under /static/."""
    app.mount(STATIC_PREFIX.rstrip("/"), _AlwaysRevalidated(directory=STATIC_DIR), name="static")

    @app.api_route(PAGE_PATH, methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                                     "Cache-Control": "no-cache",
                                     "X-Content-Type-Options": "nosniff"})
