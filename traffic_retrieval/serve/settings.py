"""The search service's settings (``serve --config`` keys and flags) and their checks.

Imports neither FastAPI nor pydantic: the ``serve`` command builds these before
anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import RuntimeOptions, checked, option
from ..errors import TrafficRetrievalError
from ..options import LogLevel

DEFAULT_EXAMPLES = [
    "A walking woman between 18 and 60 years old with a backpack.",
    "A man in a long coat, his back to the camera.",
    "This is a white Audi.",
    "This is a red Truck.",
    "A black Sedan.",
]


@dataclass
class ServeSettings(RuntimeOptions):
    index: Path | None = option(None, help="the index folder (traffic-retrieval index --out)")
    host: str = option("127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    port: int = option(8000, minimum=0, maximum=65535, help="port (0: any free port)")
    cors_origin: list[str] = option(default_factory=list, metavar="ORIGIN",
                                    help="let pages from these origins call the API (e.g. http://localhost:3000); default: CORS off")
    checkpoint: Path | None = option(None, help="the index's checkpoint at another path (must be the same model)")
    vocabulary: Path | None = option(None, help="vehicle_vocabulary.json from prepare, for routing queries")
    max_k: int = option(100, minimum=1, help="largest k a client may ask for")
    max_query_chars: int = option(1000, minimum=1, help="longest query accepted")
    max_batch_queries: int = option(64, minimum=1, help="queries in one POST /api/search")
    batch_size: int = option(32, minimum=1, help="queries encoded together at most (micro-batching)")
    # how long the first query of a batch waits for others; 0: batch only what queued up while the
    # model was busy (no added latency; on a 2-core CPU with the tiny model a 2 ms window cost ~8%
    # throughput, see benchmarks/results/serve_load.json); a few ms can pay off with a large text tower
    batch_wait_ms: float = option(0.0, minimum=0, help="how long a query waits for others to share its encoding batch (0: only those queued meanwhile)")
    search_timeout_s: float = option(30.0, positive=True, help="seconds before a search answers 503")
    thumbnail_size: int = option(256, minimum=16, help="thumbnail side in pixels")
    thumbnail_cache: int = option(2048, minimum=0, help="thumbnails kept in memory")
    max_body_bytes: int = option(1_000_000, minimum=1024, help="largest request body accepted")
    examples: list[str] = option(default_factory=lambda: list(DEFAULT_EXAMPLES), cli=False, help="example queries shown on the page")
    log_level: LogLevel = option("info", help="uvicorn's log level")


def check_settings(settings: ServeSettings) -> None:
    """Settings made in code get the checks of ones read from flags or YAML, and what spans values."""
    checked(settings)
    for origin in settings.cors_origin:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise TrafficRetrievalError(f"--cors-origin must be an origin like http://localhost:3000 (or *), got {origin!r}")
