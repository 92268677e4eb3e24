"""The search service's settings (``serve --config`` keys and flags) and their checks.

Imports neither FastAPI nor pydantic: the ``serve`` command builds these before
anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TrafficRetrievalError
from ..options import Device, LogLevel, Precision

DEFAULT_EXAMPLES = [
    "A walking woman between 18 and 60 years old with a backpack.",
    "A man in a long coat, his back to the camera.",
    "This is a white Audi.",
    "This is a red Truck.",
    "A black Sedan.",
]


@dataclass
class ServeSettings:
    index: Path | None = None  # the index folder (``traffic-retrieval index --out``)
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8000
    cors_origin: list[str] = field(default_factory=list)  # origins allowed to call the API from a browser (none: CORS off)
    checkpoint: Path | None = None  # the index's checkpoint at another path (same model)
    vocabulary: Path | None = None  # vehicle_vocabulary.json for routing
    device: Device = "auto"
    precision: Precision = "auto"  # text encoding
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
    log_level: LogLevel = "info"  # uvicorn's


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
