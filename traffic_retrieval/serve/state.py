"""What the routes of one app share, and the dependency that hands it to them.

``create_app`` makes one ``Service`` per app and keeps it in ``app.state.service``;
a route asks for it with a ``service: ServiceDep`` parameter, so the routes are
plain module-level functions and several apps (tests make many) never mix.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from .batching import MicroBatcher
from .schemas import DEFAULT_K, ROUTED
from .settings import ServeSettings
from .thumbnails import ThumbnailCache
from .uploads import UploadDecoder

STATIC_DIR = Path(__file__).parent / "static"


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


@dataclass(frozen=True)
class Service:
    """One app's shared state: made by ``create_app``, closed when the app shuts down."""

    retriever: Any  # an opened ``Retriever`` (the model is loaded)
    settings: ServeSettings
    batcher: MicroBatcher  # every search goes through it, so concurrent queries are encoded together
    thumbnails: ThumbnailCache
    info: dict  # ``retriever.info()``, read once
    categories: list[str]  # what a request's ``category`` may be
    static_files: dict[str, tuple[bytes, str]]  # the page's assets: no request reaches the file system by name
    uploads: UploadDecoder  # uploaded query images: checked formats and pixels, a bounded number decoded at once

    @classmethod
    def start(cls, retriever, settings: ServeSettings) -> Service:
        """Start the micro-batching worker and read what is read once; ``close`` stops the worker."""
        return cls(retriever=retriever, settings=settings,
                   batcher=MicroBatcher(retriever.search_batch, settings.batch_size, settings.batch_wait_ms / 1000, settings.max_queued_queries),
                   thumbnails=ThumbnailCache(settings.thumbnail_size, settings.thumbnail_cache, max_decodes=settings.thumbnail_decodes,
                                             decode_wait_s=settings.search_timeout_s),
                   info=retriever.info(),
                   categories=[ROUTED, "all", *sorted({"pedestrian", "vehicle", *retriever.categories})], static_files=read_static_files(),
                   uploads=UploadDecoder(settings.thumbnail_decodes, decode_wait_s=settings.search_timeout_s))

    @property
    def images_root(self) -> Path:
        return Path(self.info["images"])

    @property
    def default_k(self) -> int:
        return min(DEFAULT_K, self.settings.max_k)

    def close(self) -> None:
        self.batcher.close()


async def get_service(request: Request) -> Service:
    # async: a plain ``def`` dependency would cost a thread-pool hop per request
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
