"""The search service and its web page.

- ``app.py``: ``create_app(retriever, settings)``, the FastAPI app: middleware, error handlers, routers, state;
- ``routes.py``: the routes (search, images by id, health, info; the page and its assets) and the limits from the settings;
- ``schemas.py``: the API's request and response bodies;
- ``state.py``: ``Service``, what one app's routes share, and the dependency that hands it to them;
- ``middleware.py``: the request-size guard and the security headers;
- ``settings.py``: ``ServeSettings`` and ``check_settings`` (neither FastAPI nor pydantic);
- ``batching.py``: the micro-batching queue in front of ``Retriever.search_batch``;
- ``thumbnails.py``: thumbnails through the one image loader, in a bounded LRU cache;
- ``server.py``: ``serve(settings)`` (the ``serve`` command) and ``running_server`` (uvicorn in a thread, for tests and benchmarks);
- ``commands.py``: the ``serve`` subcommand;
- ``static/``: the page (plain HTML, CSS and JavaScript; nothing from a CDN).

FastAPI, pydantic and uvicorn are imported only when an app is made or served
(``app.py``, ``routes.py``, ``schemas.py``, ``state.py`` and ``middleware.py`` import
FastAPI at the top; nothing imports them before the ``serve`` command runs).
"""

_EXPORTS = {"ServeSettings": "settings", "check_settings": "settings", "create_app": "app", "MicroBatcher": "batching",
            "ThumbnailCache": "thumbnails", "serve": "server", "running_server": "server"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
