"""The search service: ``create_app(retriever, settings)`` returns a FastAPI app.

Routes (all JSON unless said otherwise; ``routes.py``):

- ``GET /api/search?q=&k=&category=``: one query; ``POST /api/search``: a batch
  ``{"queries": [...], "k": 10, "category": "routed"}``;
- ``GET /api/similar/{id}?k=&category=``: more like an indexed image (itself first);
  ``POST /api/search/image``: an uploaded example image (multipart ``image``, ``k``,
  ``category``; ``uploads.py``); ``POST /api/search/combined``: ``{"expression":
  "0.5*\"red car\" + #123 - \"truck\"", "k": 10}`` (texts and ``#ID``, no file paths;
  docs/queries.md);
- ``GET /api/images/{id}``, ``/api/thumbnails/{id}``: image bytes by integer index
  id; the file is the one the index recorded, never a path a client gave;
- ``GET /api/health`` (503 when the search worker is not running), ``/api/info``;
  ``GET /openapi.json`` and ``/docs`` (a self-contained page, no CDN: FastAPI's
  Swagger UI would load from one);
- ``GET /``: the search page, ``/static/NAME``: its assets (a fixed set read at
  start-up, so no request ever reaches the file system by name);
- ``GET /metrics``: request counts and latencies by route, batch sizes, queue depth
  (Prometheus text format; ``metrics.py``).

The retriever is opened once by the caller; searches go through one
``MicroBatcher`` so concurrent queries are encoded together (a bounded queue: 503
when full). Requests addressed to a host name the server does not answer are
refused (400, ``HostAllowList``); bodies are bounded by the bytes received and
``Transfer-Encoding`` is refused (``GuardMiddleware``). The ``serve`` command
imports this module inside its handler: FastAPI is not loaded for ``--help``.
"""

import copy
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..errors import TrafficRetrievalError
from .batching import ServiceUnavailable
from .metrics import install_metrics
from .middleware import GuardMiddleware, HostAllowList
from .routes import api, document_limits, label_text, pages
from .settings import ServeSettings, allowed_hosts, check_settings
from .state import Service

__all__ = ["ServeSettings", "check_settings", "create_app", "label_text"]  # the names callers import from here


def create_app(retriever, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app over an opened ``Retriever`` (the model is already loaded)."""
    settings = settings or ServeSettings()
    check_settings(settings)
    app = FastAPI(title="traffic-retrieval search", version=_version(), lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # Swagger UI and ReDoc load from a CDN; /docs is a local page
                  description="Text-to-image retrieval over a traffic-retrieval index (pedestrian and vehicle crops).",
                  exception_handlers={RequestValidationError: validation_error, TrafficRetrievalError: retrieval_error})
    if settings.cors_origin:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origin), allow_methods=["GET", "POST"], allow_headers=["Content-Type"])
    app.add_middleware(HostAllowList, allowed_hosts=allowed_hosts(settings))  # before anything else looks at the request
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_body_bytes)  # added last: the outermost (its headers go on every answer)
    app.include_router(api)
    app.include_router(pages)
    app.openapi = partial(openapi_with_limits, app)
    service = Service.start(retriever, settings)
    app.state.service = service
    # what callers may look at directly (tests watch the batcher and the thumbnail cache)
    app.state.retriever, app.state.settings, app.state.batcher, app.state.thumbnails = retriever, settings, service.batcher, service.thumbnails
    install_metrics(app)  # GET /metrics (Prometheus text); its middleware is the outermost: it counts refusals too
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    await run_in_threadpool(app.state.service.close)  # answers what is queued, then stops the batching worker


def openapi_with_limits(app: FastAPI) -> dict:
    """FastAPI's schema with this app's limits written in (the routes' declarations are shared by every app)."""
    if not app.openapi_schema:  # a copy to write in: parts of FastAPI's may be the routes' own declarations
        app.openapi_schema = document_limits(copy.deepcopy(FastAPI.openapi(app)), app.state.service)
    return app.openapi_schema


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with a one-line ``detail`` naming the first few problems, and the list without the inputs."""
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
    reasons = "; ".join(f"{_error_location(e['loc'])}: {e['msg']}" for e in errors[:3]) or "invalid request"
    return JSONResponse({"detail": reasons, "errors": errors}, status_code=422)


async def retrieval_error(request: Request, exc: TrafficRetrievalError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503 if isinstance(exc, ServiceUnavailable) else 422)


def _error_location(loc) -> str:
    """``["body", "queries", 1]`` -> ``queries[1]``."""
    parts = [str(p) for p in loc if p not in ("query", "path", "body")]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or ("body" if loc and loc[0] == "body" else "request")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("traffic-retrieval")
    except Exception:
        return "0"
