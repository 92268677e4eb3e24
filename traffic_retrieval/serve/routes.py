"""The routes: ``api`` (search by text, by an example image, by a combined query;
images by id; health and info) and ``pages`` (the search page, the offline API docs
page and their assets).

Every app ``create_app`` makes includes these same routes and hands them its own
``Service`` through ``ServiceDep``. The declarations hold only the fixed rules; the
limits that come from the settings are checked in the handlers, with the errors
pydantic gives for the same constraints, and ``document_limits`` writes them into
each app's OpenAPI schema.
"""

import asyncio
import importlib.util
import logging
import time
from functools import partial
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError as ModelValidationError
from pydantic_core import ValidationError
from starlette.concurrency import run_in_threadpool

from ..errors import TrafficRetrievalError
from .batching import ServiceUnavailable
from .schemas import (ALL, DEFAULT_K, ROUTED, BatchSearchRequest, BatchSearchResponse, CombinedSearchRequest, CombinedSearchResponse,
                      ImageSearchForm, SearchResponse)
from .settings import ServeSettings
from .state import Service, ServiceDep
from .thumbnails import ThumbnailsBusy
from .uploads import UploadRejected, UploadsBusy

MAX_IMAGE_ID = 2**63 - 1  # SQLite's integer range

log = logging.getLogger("traffic_retrieval.serve")

api = APIRouter()
pages = APIRouter(include_in_schema=False)


def label_text(label: str | None, category: str | None) -> str | None:
    """A label for people: pedestrian flags become the names of the attributes that are set."""
    from ..data.schema import PEDESTRIAN, PEDESTRIAN_FLAGS

    if label and category == PEDESTRIAN:
        flags = label.split(",")
        if len(flags) == len(PEDESTRIAN_FLAGS) and set(flags) <= {"0", "1"}:
            return ", ".join(name for name, flag in zip(PEDESTRIAN_FLAGS, flags) if flag == "1") or "no attribute set"
    return label


# -- the limits from the settings -------------------------------------------------------
def _limit_error(kind: str, loc: tuple, value, **context) -> dict:
    """The error pydantic itself reports for a broken ``kind`` constraint (same type and message)."""
    details = {"type": kind, "loc": loc, "input": value, "ctx": context}
    return ValidationError.from_exception_data("limits", [details]).errors(include_url=False)[0]


def _query_errors(settings: ServeSettings, query: str, loc: tuple) -> list[dict]:
    if len(query) > settings.max_query_chars:
        return [_limit_error("string_too_long", loc, query, max_length=settings.max_query_chars)]
    return []


def _k_errors(settings: ServeSettings, k: int, loc: tuple) -> list[dict]:
    return [_limit_error("less_than_equal", loc, k, le=settings.max_k)] if k > settings.max_k else []


def check_search_limits(settings: ServeSettings, q: str, k: int) -> None:
    errors = _query_errors(settings, q, ("query", "q")) + _k_errors(settings, k, ("query", "k"))
    if errors:
        raise RequestValidationError(errors)


def check_batch_limits(settings: ServeSettings, queries: list[str], k: int) -> None:
    if len(queries) > settings.max_batch_queries:  # as pydantic does, a list's length before its items
        errors = [_limit_error("too_long", ("body", "queries"), queries, field_type="List", max_length=settings.max_batch_queries,
                               actual_length=len(queries))]
    else:
        errors = [error for position, query in enumerate(queries) for error in _query_errors(settings, query, ("body", "queries", position))]
    errors += _k_errors(settings, k, ("body", "k"))
    if errors:
        raise RequestValidationError(errors)


def document_limits(schema: dict, service: Service) -> dict:
    """Write one app's limits and categories into the OpenAPI schema of these routes (the /docs page shows them)."""
    settings = service.settings
    search = schema["paths"]["/api/search"]
    parameters = {parameter["name"]: parameter for parameter in search["get"]["parameters"]}
    parameters["q"]["schema"]["maxLength"] = settings.max_query_chars
    parameters["k"]["schema"].update(maximum=settings.max_k, default=service.default_k)
    parameters["category"]["description"] = parameters["category"]["schema"]["description"] = f"one of {', '.join(service.categories)}"
    batch = schema["components"]["schemas"]["BatchSearchRequest"]["properties"]
    batch["queries"]["maxItems"] = settings.max_batch_queries
    batch["queries"]["items"]["maxLength"] = settings.max_query_chars
    batch["k"].update(maximum=settings.max_k, default=service.default_k)
    for operation in search.values():
        operation["responses"]["503"]["description"] = f"the search did not finish within {settings.search_timeout_s:g} s"
    schema["paths"]["/api/thumbnails/{image_id}"]["get"]["summary"] += f" (at most {settings.thumbnail_size} px a side)"
    similar = {parameter["name"]: parameter for parameter in schema["paths"]["/api/similar/{image_id}"]["get"]["parameters"]}
    similar["k"]["schema"].update(maximum=settings.max_k, default=service.default_k)
    similar["category"]["description"] = similar["category"]["schema"]["description"] = f"one of {', '.join(service.categories)} (routed: all)"
    combined = schema["components"]["schemas"]["CombinedSearchRequest"]["properties"]
    combined["expression"]["maxLength"] = settings.max_query_chars
    combined["k"].update(maximum=settings.max_k, default=service.default_k)
    upload = schema["paths"]["/api/search/image"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    upload["k"].update(maximum=settings.max_k, default=service.default_k)
    upload["image"]["description"] += f"; the whole request at most {settings.max_body_bytes} bytes, the image at most {service.uploads.pixel_limit} pixels"
    for path, method in (("/api/similar/{image_id}", "get"), ("/api/search/image", "post"), ("/api/search/combined", "post")):
        schema["paths"][path][method]["responses"]["503"]["description"] = f"the search did not finish within {settings.search_timeout_s:g} s"
    return schema


# -- search ------------------------------------------------------------------------------
def check_query(query: str, where: str) -> None:
    if not query.strip():
        raise HTTPException(422, f"{where}: the query is empty")


def check_category(service: Service, category: str) -> str | None:
    if category not in service.categories:
        raise HTTPException(422, f"category: must be one of {', '.join(service.categories)}, got {category[:50]!r}")
    return None if category == ROUTED else category


def hits(request: Request, results) -> list[dict]:
    prefix = request.scope.get("root_path", "")
    return [{"rank": r.rank, "id": r.id, "name": r.name, "score": round(r.score, 6), "category": r.category, "label": r.label,
             "label_text": label_text(r.label, r.category), "image_url": f"{prefix}/api/images/{r.id}",
             "thumbnail_url": f"{prefix}/api/thumbnails/{r.id}"} for r in results]


async def run_searches(service: Service, queries: list[str], k: int, category: str | None):
    submitted = []
    try:
        for query in queries:
            submitted.append(service.batcher.submit(query, k, category))
    except ServiceUnavailable as exc:  # queue full, shutting down, worker gone: 503 at once, and nothing of this request stays queued
        for future in submitted:
            future.cancel()
        raise HTTPException(503, str(exc)) from None
    futures = [asyncio.wrap_future(future) for future in submitted]
    timeout_s = service.settings.search_timeout_s
    try:
        return await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
    except asyncio.TimeoutError:
        raise HTTPException(503, f"search timed out after {timeout_s:g} s") from None


def _milliseconds_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


BUSY = {503: {"description": "the search did not finish within search_timeout_s, or the service is busy or shutting down"}}


@api.get("/api/search", response_model=SearchResponse, tags=["search"], summary="Search the index with one text query", responses=BUSY)
async def search(request: Request, service: ServiceDep,
                 q: Annotated[str, Query(min_length=1, description="the query text")],
                 k: Annotated[int, Query(ge=1, description="number of results")] = DEFAULT_K,
                 category: Annotated[str, Query()] = ROUTED):
    started = time.perf_counter()
    if "k" not in request.query_params:
        k = service.default_k
    check_search_limits(service.settings, q, k)
    check_query(q, "q")
    (results,) = await run_searches(service, [q], k, check_category(service, category))
    return {"query": q, "k": k, "category": category, "count": len(results), "took_ms": _milliseconds_since(started),
            "results": hits(request, results)}


@api.post("/api/search", response_model=BatchSearchResponse, tags=["search"], summary="Search with a batch of queries", responses=BUSY)
async def search_many(request: Request, service: ServiceDep, body: BatchSearchRequest):
    started = time.perf_counter()
    k = body.k if "k" in body.model_fields_set else service.default_k
    check_batch_limits(service.settings, body.queries, k)
    for position, query in enumerate(body.queries):
        check_query(query, f"queries[{position}]")
    target = check_category(service, body.category)
    batches = await run_searches(service, body.queries, k, target)
    return {"k": k, "category": body.category, "took_ms": _milliseconds_since(started),
            "results": [{"query": query, "count": len(results), "results": hits(request, results)} for query, results in zip(body.queries, batches)]}


# -- images by id ------------------------------------------------------------------------
ImageId = Annotated[int, PathParam(ge=0, le=MAX_IMAGE_ID, description="the image's id in the index")]
NOT_FOUND = {404: {"description": "no indexed image with this id, or its file is gone"}}
CACHED = {"Cache-Control": "private, max-age=3600"}


def image_file(service: Service, image_id: int) -> Path:
    """The gallery file the index recorded for ``image_id``; never a path a client gave."""
    try:
        record = service.retriever.record(image_id)
    except TrafficRetrievalError:
        raise HTTPException(404, f"no image with id {image_id}") from None
    if record.state != "indexed":  # unreadable or not yet encoded: no search returns it
        raise HTTPException(404, f"no image with id {image_id}")
    try:  # the checked path: real path inside the real gallery root, an image suffix, a regular file, size and mtime as indexed
        return service.retriever.image_path(image_id)
    except TrafficRetrievalError as exc:  # a tampered row, or a file changed or gone since it was indexed: never serve it
        log.warning("%s: refused", exc)
        raise HTTPException(404, f"image {image_id}: file missing from the gallery or changed since it was indexed") from None


# The formats an index accepts, by their first bytes: a response's media type is what the file is,
# never guessed from its name, and a file that is none of them is not served at all.
IMAGE_SIGNATURES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"BM", "image/bmp"))


def image_media_type(path: Path) -> str | None:
    """``image/jpeg``, ``image/png``, ``image/bmp`` or ``image/webp`` from the file's signature; None for anything else."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return next((media_type for signature, media_type in IMAGE_SIGNATURES if head.startswith(signature)), None)


@api.get("/api/images/{image_id}", tags=["images"], summary="The full image", response_class=FileResponse, responses=NOT_FOUND)
def image(service: ServiceDep, image_id: ImageId):
    path = image_file(service, image_id)
    media_type = image_media_type(path)
    if media_type is None:  # replaced on disk by something that is not an image: never serve it
        log.warning("image %s: the file is not a JPEG, PNG, BMP or WebP image, refused", image_id)
        raise HTTPException(404, f"image {image_id}: not an image")
    return FileResponse(path, media_type=media_type, headers=CACHED)


@api.get("/api/thumbnails/{image_id}", tags=["images"], summary="A JPEG thumbnail", response_class=Response, responses=NOT_FOUND)
def thumbnail(service: ServiceDep, image_id: ImageId):
    path = image_file(service, image_id)
    try:
        data = service.thumbnails.get(image_id, path)
    except ThumbnailsBusy as exc:
        raise HTTPException(503, str(exc)) from None
    except TrafficRetrievalError:
        raise HTTPException(404, f"image {image_id}: cannot be read") from None
    return Response(data, media_type="image/jpeg", headers=CACHED)  # made here: always a JPEG


# -- search by an example image, combined queries (docs/queries.md) --------------------------
async def run_call(service: Service, fn, *args):
    """``fn(*args)`` on the search worker, the one thread that runs the model (as ``run_searches``)."""
    try:
        future = service.batcher.submit_call(fn, *args)
    except ServiceUnavailable as exc:
        raise HTTPException(503, str(exc)) from None
    timeout_s = service.settings.search_timeout_s
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
    except asyncio.TimeoutError:
        raise HTTPException(503, f"search timed out after {timeout_s:g} s") from None


async def check_indexed(service: Service, image_id: int) -> None:
    """404 unless ``image_id`` is an indexed image (its stored embedding is the query)."""
    try:
        record = await run_in_threadpool(service.retriever.record, image_id) if 0 <= image_id <= MAX_IMAGE_ID else None
    except TrafficRetrievalError:
        record = None
    if record is None or record.state != "indexed":
        raise HTTPException(404, f"no image with id {image_id}")


def search_answer(request: Request, query: str, k: int, category: str, started: float, results) -> dict:
    return {"query": query, "k": k, "category": category, "count": len(results), "took_ms": _milliseconds_since(started),
            "results": hits(request, results)}


IMAGE_QUERY = BUSY | NOT_FOUND


@api.get("/api/similar/{image_id}", response_model=SearchResponse, tags=["search"], responses=IMAGE_QUERY,
         summary="More like this: the images most like an indexed image, itself first")
async def similar(request: Request, service: ServiceDep, image_id: ImageId,
                  k: Annotated[int, Query(ge=1, description="number of results")] = DEFAULT_K,
                  category: Annotated[str, Query()] = ALL):
    started = time.perf_counter()
    if "k" not in request.query_params:
        k = service.default_k
    errors = _k_errors(service.settings, k, ("query", "k"))
    if errors:
        raise RequestValidationError(errors)
    target = check_category(service, category)
    await check_indexed(service, image_id)
    try:
        results = await run_call(service, service.retriever.search_image, image_id, k, target)
    except TrafficRetrievalError as exc:  # k and the category are checked: what is left is the image (gone, or its file changed)
        if isinstance(exc, ServiceUnavailable):
            raise
        log.warning("%s: refused", exc)
        raise HTTPException(404, f"image {image_id}: no stored embedding, and its file is missing or changed since it was indexed") from None
    return search_answer(request, f"#{image_id}", k, category, started, results)


UPLOAD_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "a JPEG, PNG, BMP or WebP image"},
        "k": {"type": "integer", "minimum": 1, "description": "number of results"},
        "category": {"type": "string", "default": ALL, "description": "all (default), pedestrian or vehicle"}}}}}}}
UPLOAD_ERRORS = {400: {"description": "a malformed multipart body"}, 413: {"description": "the request or the image is too large"},
                 415: {"description": "not a multipart/form-data request"}, 422: {"description": "not an image this service decodes, or bad k or category"}}


def _form_errors(exc: ModelValidationError) -> list[dict]:
    return [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]


@api.post("/api/search/image", response_model=SearchResponse, tags=["search"], responses=BUSY | UPLOAD_ERRORS, openapi_extra=UPLOAD_FORM,
          summary="Search with an uploaded example image (multipart/form-data: image, k, category)")
async def search_by_image(request: Request, service: ServiceDep):
    started = time.perf_counter()
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
        raise HTTPException(415, "send the image as multipart/form-data, in a field named image")
    if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:  # Starlette parses forms with it
        raise HTTPException(503, "image upload needs the python-multipart package on the server (pip install 'traffic-retrieval[serve]')")
    async with request.form(max_files=1, max_fields=2) as form:  # a malformed body, or more parts: 400 from Starlette
        fields = {name: value for name, value in form.items() if name != "image"}
        upload = form.get("image")
        errors = []
        if upload is None:
            errors.append({"type": "missing", "loc": ("body", "image"), "msg": "Field required", "input": None})
        elif isinstance(upload, str):
            errors.append({"type": "value_error", "loc": ("body", "image"), "msg": "must be a file, not a text field", "input": None})
        if any(not isinstance(value, str) for value in fields.values()):
            errors.append({"type": "value_error", "loc": ("body",), "msg": "only the field image may be a file", "input": None})
        try:
            body = ImageSearchForm.model_validate({name: value for name, value in fields.items() if isinstance(value, str)})
        except ModelValidationError as exc:
            errors += _form_errors(exc)
            body = None
        k = body.k if body is not None and "k" in body.model_fields_set else service.default_k
        errors += _k_errors(service.settings, k, ("body", "k"))
        if errors:
            raise RequestValidationError(errors)
        data = await upload.read()
    target = check_category(service, body.category)
    try:
        image = await run_in_threadpool(service.uploads.decode, data)
    except UploadRejected as exc:
        raise HTTPException(exc.status, str(exc)) from None
    except UploadsBusy as exc:
        raise HTTPException(503, str(exc)) from None
    results = await run_call(service, service.retriever.search_image, image, k, target)
    return search_answer(request, "uploaded image", k, body.category, started, results)


@api.post("/api/search/combined", response_model=CombinedSearchResponse, tags=["search"], responses=IMAGE_QUERY,
          summary='Search with a combined query: 0.5*"red car" + #123 - "truck" (texts and #ID, no file paths)')
async def search_combined(request: Request, service: ServiceDep, body: CombinedSearchRequest):
    from ..retrieval.compose import IMAGE_ID, parse_expression

    started = time.perf_counter()
    k = body.k if "k" in body.model_fields_set else service.default_k
    errors = _query_errors(service.settings, body.expression, ("body", "expression")) + _k_errors(service.settings, k, ("body", "k"))
    if errors:
        raise RequestValidationError(errors)
    target = check_category(service, body.category)
    terms = parse_expression(body.expression, allow_paths=False)  # a one-line error naming the column: 422
    for image_id in dict.fromkeys(term.value for term in terms if term.kind == IMAGE_ID):
        await check_indexed(service, image_id)
    results = await run_call(service, partial(service.retriever.search_combined, allow_paths=False), body.expression, k, target)
    return search_answer(request, body.expression, k, body.category, started, results) | {"terms": [term.describe() for term in terms]}


# -- service -----------------------------------------------------------------------------
@api.get("/api/health", tags=["service"], responses={503: {"description": "the search worker is not running"}})
async def health(service: ServiceDep):
    batcher = service.batcher
    alive = batcher.alive
    body = {"status": "ok" if alive else "unavailable", "count": service.info["count"],
            "batcher": {"alive": alive, "queued": batcher.queued, "max_queued": batcher.max_queued}}
    return body if alive else JSONResponse(body | {"detail": "the search worker is not running"}, status_code=503)


def _public_pretrained(source: dict) -> str | None:
    """A zero-shot index's open_clip tag, or a weights file's name (no server paths)."""
    if source.get("kind") != "pretrained" or not source.get("pretrained"):
        return None
    return Path(source["pretrained"]).name if source.get("weights") == "file" else source["pretrained"]


@api.get("/api/info", tags=["service"], summary="The model, index size and categories, and the service's limits")
def about(service: ServiceDep):
    info, settings = service.info, service.settings
    return {
        "model": info["model"],
        "checkpoint": Path(info["checkpoint"]).name if info["checkpoint"] else None,  # no server paths in responses
        "checkpoint_sha256": info["identity"],  # a zero-shot index: the weights file's sha256, or open_clip's name:tag
        "pretrained": _public_pretrained(info.get("source") or {}),
        "count": info["count"],
        "categories": info["categories"],
        "category_choices": service.categories,
        "kind": info["kind"],
        "recall@10": info["recall@10"],
        "dim": info["dim"],
        "built_at": info["built_at"],
        "device": info["device"],
        "limits": {"max_k": settings.max_k, "max_query_chars": settings.max_query_chars, "max_batch_queries": settings.max_batch_queries},
        "image_limits": {"max_body_bytes": settings.max_body_bytes, "max_pixels": service.uploads.pixel_limit,
                         "formats": ["JPEG", "PNG", "BMP", "WebP"]},
        "examples": list(settings.examples),
        "batching": service.batcher.stats(),
        "thumbnails": service.thumbnails.stats(),
    }


# -- the page ----------------------------------------------------------------------------
def static_response(service: Service, name: str) -> Response:
    found = service.static_files.get(name)
    if found is None:
        raise HTTPException(404, "not found")
    data, media_type = found
    return Response(data, media_type=media_type, headers={"Cache-Control": "no-cache"})


@pages.get("/")
def page(service: ServiceDep):
    return static_response(service, "index.html")


@pages.get("/docs")
def docs(service: ServiceDep):
    return static_response(service, "docs.html")


@pages.get("/static/{name}")
def static(service: ServiceDep, name: str):
    return static_response(service, name)
