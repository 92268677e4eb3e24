"""``serve``: the search service and its web page over a built index (FastAPI +
uvicorn): ``POST /api/search``, ``GET /api/search``, thumbnails and images of the
gallery, ``/docs``. The model loads once; queries are micro-batched."""

from __future__ import annotations

from ..serve.settings import ServeSettings

HELP = "search service and web page over an index (FastAPI + uvicorn)"
Config = ServeSettings


def run(settings: ServeSettings) -> None:
    from ..serve.server import serve

    serve(settings)


def print_result(result, settings: ServeSettings) -> None:
    """The server prints as it starts and logs while it runs."""
