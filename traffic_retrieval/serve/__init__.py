"""The search service and its web page.

- ``app.py``: ``create_app(retriever, settings)``, the FastAPI app (API, images by id, the page);
- ``batching.py``: the micro-batching queue in front of ``Retriever.search_batch``;
- ``thumbnails.py``: thumbnails through the one image loader, in a bounded LRU cache;
- ``server.py``: ``serve(settings)`` (the ``serve`` command) and ``running_server`` (uvicorn in a thread, for tests and benchmarks);
- ``commands.py``: the ``serve`` subcommand;
- ``static/``: the page (plain HTML, CSS and JavaScript; nothing from a CDN).

FastAPI and uvicorn are imported only when an app is made.
"""

_EXPORTS = {"ServeSettings": "app", "create_app": "app", "MicroBatcher": "batching", "ThumbnailCache": "thumbnails",
            "serve": "server", "running_server": "server"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
