"""The search service: ``create_app(retriever, settings)`` returns a FastAPI app.

Routes (all JSON unless said otherwise):

- ``GET /api/search?q=&k=&category=``: one query; ``POST /api/search``: a batch
  ``{"queries": [...], "k": 10, "category": "routed"}``;
- ``GET /api/images/{id}``, ``/api/thumbnails/{id}``: image bytes by integer index
  id; the file is the one the index recorded, never a path a client gave;
- ``GET /api/health``, ``/api/info``; ``GET /openapi.json`` and ``/docs`` (a
  self-contained page, no CDN: FastAPI's Swagger UI would load from one);
- ``GET /``: the search page, ``/static/NAME``: its assets (a fixed set read at
  start-up, so no request ever reaches the file system by name).

The retriever is opened once by the caller; searches go through one
``MicroBatcher`` so concurrent queries are encoded together.
"""

# no ``from __future__ import annotations`` here: FastAPI reads the endpoints'
# annotations at run time, and they name classes local to ``create_app``
import asyncio
import logging
import mimetypes
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from ..errors import TrafficRetrievalError

STATIC_DIR = Path(__file__).parent / "static"
ROUTED = "routed"  # the query's category is picked by the vehicle vocabulary, as predict does
DEFAULT_EXAMPLES = [
    "A walking woman between 18 and 60 years old with a backpack.",
    "A man in a long coat, his back to the camera.",
    "This is a white Audi.",
    "This is a red Truck.",
    "A black Sedan.",
]
# The page loads nothing from elsewhere; the browser enforces it.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
                           "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
MAX_IMAGE_ID = 2**63 - 1  # SQLite's integer range

log = logging.getLogger("traffic_retrieval.serve")


@dataclass
class ServeSettings:
    index: Path | None = None  # the index folder (``traffic-retrieval index --out``)
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8000
    cors_origin: list[str] = field(default_factory=list)  # origins allowed to call the API from a browser (none: CORS off)
    checkpoint: Path | None = None  # the index's checkpoint at another path (same model)
    vocabulary: Path | None = None  # vehicle_vocabulary.json for routing
    device: str = "auto"
    precision: str = "auto"  # text encoding: auto (bf16 autocast where the hardware has it), fp32, bf16, fp16
    max_k: int = 100
    max_query_chars: int = 1000
    max_batch_queries: int = 64  # queries in one POST /api/search
    batch_size: int = 32  # queries encoded together at most (micro-batching)
    # how long the first query of a batch waits for others; 0: batch only what queued up while the
    # model was busy (no added latency; on a 2-core CPU with the tiny model a 2 ms window cost ~8%
    # throughput, see benchmarks/results/serve_load.json); a few ms can pay off with a large text tower
    batch_wait_ms: float = 0.0
    search_timeout_s: float = 30.0
    thumbnail_size: int = 256
    thumbnail_cache: int = 2048  # thumbnails kept in memory
    max_body_bytes: int = 1_000_000
    examples: list[str] = field(default_factory=lambda: list(DEFAULT_EXAMPLES))  # clickable on the page
    log_level: str = "info"


def check_settings(settings: ServeSettings) -> None:
    for key, minimum in (("max_k", 1), ("max_query_chars", 1), ("max_batch_queries", 1), ("batch_size", 1), ("thumbnail_size", 16),
                         ("thumbnail_cache", 0), ("max_body_bytes", 1024)):
        if getattr(settings, key) < minimum:
            raise TrafficRetrievalError(f"{key.replace('_', '-')} must be at least {minimum}, got {getattr(settings, key)}")
    if settings.batch_wait_ms < 0 or settings.search_timeout_s <= 0:
        raise TrafficRetrievalError("batch-wait-ms must be >= 0 and search-timeout-s > 0")
    if not 0 <= settings.port <= 65535:
        raise TrafficRetrievalError(f"port must be between 0 and 65535, got {settings.port}")
    for origin in settings.cors_origin:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise TrafficRetrievalError(f"--cors-origin must be an origin like http://localhost:3000 (or *), got {origin!r}")


def label_text(label: str | None, category: str | None) -> str | None:
    """A label for people: pedestrian flags become the names of the attributes that are set."""
    from ..data.schema import PEDESTRIAN, PEDESTRIAN_FLAGS

    if label and category == PEDESTRIAN:
        flags = label.split(",")
        if len(flags) == len(PEDESTRIAN_FLAGS) and set(flags) <= {"0", "1"}:
            return ", ".join(name for name, flag in zip(PEDESTRIAN_FLAGS, flags) if flag == "1") or "no attribute set"
    return label


def read_static_files(directory: Path = STATIC_DIR) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, media type) of the page's assets, read once."""
    files = {}
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        if path.is_file() and not path.name.startswith("."):
            media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if media_type.startswith("text/") or media_type in ("application/javascript", "image/svg+xml"):
                media_type += "; charset=utf-8"
            files[path.name] = (path.read_bytes(), media_type)
    return files


class GuardMiddleware:
    """Refuses request bodies over ``max_body_bytes`` (413) or of unknown length (411)
    before they are read, and adds security headers (the CSP on HTML pages). Plain
    ASGI: ``@app.middleware("http")`` costs a task and a stream per request."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        refusal = None
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            refusal = 413, f"request body larger than {self.max_body_bytes} bytes"
        elif length is None and b"transfer-encoding" in headers:
            refusal = 411, "a request body needs a Content-Length header"
        if refusal is not None:
            from starlette.responses import JSONResponse

            return await JSONResponse({"detail": refusal[1]}, status_code=refusal[0])(scope, receive, self._with_headers(send))
        await self.app(scope, receive, self._with_headers(send))

    @staticmethod
    def _with_headers(send):
        from starlette.datastructures import MutableHeaders

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                if headers.get("content-type", "").startswith("text/html"):
                    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            await send(message)

        return send_with_headers


def _is_inside(path: Path, root: Path) -> bool:
    """``path`` lies under ``root`` by its normalised text (symlinks in the gallery are the gallery's business)."""
    path, root = os.path.normpath(path), os.path.normpath(root)
    return os.path.isabs(path) and os.path.commonpath([path, root]) == root


def _error_location(loc) -> str:
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


def create_app(retriever, settings: ServeSettings | None = None):
    """The FastAPI app over an opened ``Retriever`` (the model is already loaded)."""
    from fastapi import Body, FastAPI, HTTPException, Path as PathParam, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from pydantic import BaseModel, ConfigDict, Field, StringConstraints
    from starlette.concurrency import run_in_threadpool

    from .batching import MicroBatcher
    from .thumbnails import ThumbnailCache

    settings = settings or ServeSettings()
    check_settings(settings)
    batcher = MicroBatcher(retriever.search_batch, settings.batch_size, settings.batch_wait_ms / 1000)
    thumbnails = ThumbnailCache(settings.thumbnail_size, settings.thumbnail_cache)
    static_files = read_static_files()
    info = retriever.info()
    images_root = Path(info["images"])
    categories = [ROUTED, "all", *sorted({"pedestrian", "vehicle", *retriever.categories})]
    max_k, max_chars = settings.max_k, settings.max_query_chars
    default_k = min(10, max_k)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(batcher.close)

    app = FastAPI(title="traffic-retrieval search", version=_version(), lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # Swagger UI and ReDoc load from a CDN; /docs below is local
                  description="Text-to-image retrieval over a traffic-retrieval index (pedestrian and vehicle crops).")
    app.state.retriever, app.state.settings, app.state.batcher, app.state.thumbnails = retriever, settings, batcher, thumbnails

    if settings.cors_origin:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origin), allow_methods=["GET", "POST"], allow_headers=["Content-Type"])

    app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
        reasons = "; ".join(f"{_error_location(e['loc'])}: {e['msg']}" for e in errors[:3]) or "invalid request"
        return JSONResponse({"detail": reasons, "errors": errors}, status_code=422)

    @app.exception_handler(TrafficRetrievalError)
    async def retrieval_error(request: Request, exc: TrafficRetrievalError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    # -- models (limits come from the settings, so they are built here) -----------------
    class Hit(BaseModel):
        rank: int
        id: int
        name: str
        score: float
        category: str | None
        label: str | None = Field(description="ATTR from the index's labels file, when it had one")
        label_text: str | None = Field(description="the label for people: pedestrian flags as attribute names")
        image_url: str
        thumbnail_url: str

    class SearchResponse(BaseModel):
        query: str
        k: int
        category: str
        count: int
        took_ms: float = Field(description="time spent in the service, queueing and micro-batching included")
        results: list[Hit]

    class QueryResults(BaseModel):
        query: str
        count: int
        results: list[Hit]

    class BatchSearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        queries: list[Annotated[str, StringConstraints(min_length=1, max_length=max_chars)]] = Field(min_length=1, max_length=settings.max_batch_queries)
        k: int = Field(default_k, ge=1, le=max_k, strict=True)
        category: str = ROUTED

    class BatchSearchResponse(BaseModel):
        k: int
        category: str
        took_ms: float
        results: list[QueryResults]

    def check_query(query: str, where: str) -> None:
        if not query.strip():
            raise HTTPException(422, f"{where}: the query is empty")

    def check_category(category: str) -> str | None:
        if category not in categories:
            raise HTTPException(422, f"category: must be one of {', '.join(categories)}, got {category[:50]!r}")
        return None if category == ROUTED else category

    def hits(request: Request, results) -> list[dict]:
        prefix = request.scope.get("root_path", "")
        return [{"rank": r.rank, "id": r.id, "name": r.name, "score": round(r.score, 6), "category": r.category, "label": r.label,
                 "label_text": label_text(r.label, r.category), "image_url": f"{prefix}/api/images/{r.id}",
                 "thumbnail_url": f"{prefix}/api/thumbnails/{r.id}"} for r in results]

    async def run_searches(queries: list[str], k: int, category: str | None):
        futures = [asyncio.wrap_future(batcher.submit(query, k, category)) for query in queries]
        try:
            return await asyncio.wait_for(asyncio.gather(*futures), settings.search_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, f"search timed out after {settings.search_timeout_s:g} s") from None

    # -- search --------------------------------------------------------------------------
    busy = {503: {"description": f"the search did not finish within {settings.search_timeout_s:g} s"}}

    @app.get("/api/search", response_model=SearchResponse, tags=["search"], summary="Search the index with one text query", responses=busy)
    async def search(request: Request,
                     q: Annotated[str, Query(min_length=1, max_length=max_chars, description="the query text")],
                     k: Annotated[int, Query(ge=1, le=max_k, description="number of results")] = default_k,
                     category: Annotated[str, Query(description=f"one of {', '.join(categories)}")] = ROUTED):
        started = time.perf_counter()
        check_query(q, "q")
        (results,) = await run_searches([q], k, check_category(category))
        return {"query": q, "k": k, "category": category, "count": len(results), "took_ms": round((time.perf_counter() - started) * 1000, 2),
                "results": hits(request, results)}

    @app.post("/api/search", response_model=BatchSearchResponse, tags=["search"], summary="Search with a batch of queries", responses=busy)
    async def search_many(request: Request, body: Annotated[BatchSearchRequest, Body()]):
        started = time.perf_counter()
        for position, query in enumerate(body.queries):
            check_query(query, f"queries[{position}]")
        target = check_category(body.category)
        batches = await run_searches(body.queries, body.k, target)
        return {"k": body.k, "category": body.category, "took_ms": round((time.perf_counter() - started) * 1000, 2),
                "results": [{"query": query, "count": len(results), "results": hits(request, results)} for query, results in zip(body.queries, batches)]}

    # -- images by id ----------------------------------------------------------------------
    ImageId = Annotated[int, PathParam(ge=0, le=MAX_IMAGE_ID, description="the image's id in the index")]

    def image_file(image_id: int) -> Path:
        try:
            record = retriever.record(image_id)
        except TrafficRetrievalError:
            raise HTTPException(404, f"no image with id {image_id}") from None
        if record.state != "indexed":  # unreadable or not yet encoded: no search returns it
            raise HTTPException(404, f"no image with id {image_id}")
        path = Path(record.path)
        if not _is_inside(path, images_root):  # a tampered row: never serve it
            log.warning("image %s: recorded path lies outside the gallery, refused", image_id)
            raise HTTPException(404, f"no image with id {image_id}")
        if not path.is_file():
            raise HTTPException(404, f"image {image_id}: file missing from the gallery")
        return path

    not_found = {404: {"description": "no indexed image with this id, or its file is gone"}}

    @app.get("/api/images/{image_id}", tags=["images"], summary="The full image", response_class=FileResponse, responses=not_found)
    def image(image_id: ImageId):
        path = image_file(image_id)
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/thumbnails/{image_id}", tags=["images"], summary=f"A JPEG thumbnail (at most {settings.thumbnail_size} px a side)",
             response_class=Response, responses=not_found)
    def thumbnail(image_id: ImageId):
        path = image_file(image_id)
        try:
            data = thumbnails.get(image_id, path)
        except TrafficRetrievalError:
            raise HTTPException(404, f"image {image_id}: cannot be read") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    # -- service ---------------------------------------------------------------------------
    @app.get("/api/health", tags=["service"])
    def health():
        return {"status": "ok", "count": info["count"]}

    @app.get("/api/info", tags=["service"], summary="The model, index size and categories, and the service's limits")
    def about():
        return {
            "model": info["model"],
            "checkpoint": Path(info["checkpoint"]).name,  # no server paths in responses
            "checkpoint_sha256": info["identity"],
            "count": info["count"],
            "categories": info["categories"],
            "category_choices": categories,
            "kind": info["kind"],
            "recall@10": info["recall@10"],
            "dim": info["dim"],
            "built_at": info["built_at"],
            "device": info["device"],
            "limits": {"max_k": max_k, "max_query_chars": max_chars, "max_batch_queries": settings.max_batch_queries},
            "examples": list(settings.examples),
            "batching": batcher.stats(),
            "thumbnails": thumbnails.stats(),
        }

    # -- the page --------------------------------------------------------------------------
    def static_response(name: str):
        found = static_files.get(name)
        if found is None:
            raise HTTPException(404, "not found")
        data, media_type = found
        return Response(data, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    def page():
        return static_response("index.html")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return static_response("docs.html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        return static_response(name)

    return app
