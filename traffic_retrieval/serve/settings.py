"""The search service's settings (``serve --config`` keys and flags) and their checks.

Imports neither FastAPI nor pydantic: the ``serve`` command builds these before
anything heavy loads.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import CheckpointTrust, RuntimeOptions, checked, option
from ..errors import TrafficRetrievalError
from ..options import LogLevel
from ..retrieval.queries import QueryOptions

DEFAULT_EXAMPLES = [
    "A walking woman between 18 and 60 years old with a backpack.",
    "A man in a long coat, his back to the camera.",
    "This is a white Audi.",
    "This is a red Truck.",
    "A black Sedan.",
]


@dataclass
class ServeSettings(RuntimeOptions, CheckpointTrust, QueryOptions):
    index: Path | None = option(None, help="the index folder (traffic-retrieval index --out)")
    host: str = option("127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    port: int = option(8000, minimum=0, maximum=65535, help="port (0: any free port)")
    # the Host header a request may carry: a page from elsewhere that rebinds its own name to this
    # machine's address (DNS rebinding) sends its own name, and is refused
    allowed_host: list[str] = option(default_factory=list, metavar="HOST",
                                     help="also accept requests addressed to this host name (repeatable; e.g. the name a proxy serves "
                                          "the page under; *.example.com for its subdomains, * for any); localhost, 127.0.0.1, [::1] "
                                          "and --host are always accepted")
    cors_origin: list[str] = option(default_factory=list, metavar="ORIGIN",
                                    help="let pages from these origins call the API (e.g. http://localhost:3000); default: CORS off")
    checkpoint: Path | None = option(None, help="the index's checkpoint at another path (must be the same model)")
    model: str | None = option(None, help="a zero-shot index's open_clip model, if not the one it records (must be the same)")
    pretrained: str | None = option(None, help="a zero-shot index's weights file at another path, or its tag (must be the same weights)")
    max_k: int = option(100, minimum=1, help="largest k a client may ask for")
    max_query_chars: int = option(1000, minimum=1, help="longest query accepted")
    max_batch_queries: int = option(64, minimum=1, help="queries in one POST /api/search")
    batch_size: int = option(32, minimum=1, help="queries encoded together at most (micro-batching)")
    # how long the first query of a batch waits for others; 0: batch only what queued up while the
    # model was busy (no added latency; on a 2-core CPU with the tiny model a 2 ms window cost ~8%
    # throughput, see benchmarks/results/serve_load.json); a few ms can pay off with a large text tower
    batch_wait_ms: float = option(0.0, minimum=0, help="how long a query waits for others to share its encoding batch (0: only those queued meanwhile)")
    max_queued_queries: int = option(1024, minimum=1, help="queries waiting for the model at most; past it a search answers 503 at once")
    search_timeout_s: float = option(30.0, positive=True, help="seconds before a search answers 503")
    max_connections: int = option(100, minimum=1, help="open connections and requests in progress at most (uvicorn's limit_concurrency); "
                                                       "past it a request answers 503")
    thumbnail_size: int = option(256, minimum=16, help="thumbnail side in pixels")
    thumbnail_cache: int = option(2048, minimum=0, help="thumbnails kept in memory")
    thumbnail_decodes: int = option(2, minimum=1, help="images decoded for thumbnails at once at most")
    max_body_bytes: int = option(1_000_000, minimum=1024, help="largest request body accepted (bytes received, whatever the headers say)")
    examples: list[str] = option(default_factory=lambda: list(DEFAULT_EXAMPLES), cli=False, help="example queries shown on the page")
    log_level: LogLevel = option("info", help="uvicorn's log level")


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# a host name (labels of letters, digits and hyphens), an IPv4 address, or an IPv6 one in brackets or not;
# "*.name" for the subdomains of a name, "*" for any: Starlette's TrustedHostMiddleware patterns
_HOST_NAME = re.compile(r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?")
_ANY_ADDRESS = ("0.0.0.0", "::", "[::]")  # "listen everywhere": never a name a request is addressed to


def host_pattern(host: str) -> str | None:
    """``host`` as a Host-header pattern (lower case, IPv6 in brackets), or None if it is not a host name or address."""
    text = host.strip().lower()
    if text == "*":
        return text
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return text if len(text) <= 253 and _HOST_NAME.fullmatch(text) and not text.startswith("[") else None
    return f"[{address.compressed}]" if address.version == 6 else str(address)


def allowed_hosts(settings: ServeSettings) -> list[str]:
    """The Host header values this server answers: the loopback names, ``--host`` (unless it is 0.0.0.0 or ::) and ``--allowed-host``."""
    hosts = list(LOOPBACK_HOSTS)
    listening = host_pattern(settings.host)
    if listening and settings.host.strip() not in _ANY_ADDRESS:
        hosts.append(listening)
    hosts += [host_pattern(host) for host in settings.allowed_host]
    return list(dict.fromkeys(hosts))


def check_settings(settings: ServeSettings) -> None:
    """Settings made in code get the checks of ones read from flags or YAML, and what spans values."""
    checked(settings)
    for origin in settings.cors_origin:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise TrafficRetrievalError(f"--cors-origin must be an origin like http://localhost:3000 (or *), got {origin!r}")
    for host in settings.allowed_host:
        if not isinstance(host, str) or host_pattern(host) is None or host.strip() in _ANY_ADDRESS:
            raise TrafficRetrievalError(f"--allowed-host (allowed_host) must be a host name or address without scheme, port or path "
                                        f"(search.example.com, *.example.com, 10.0.0.7, [fd00::7] or *), got {str(host)[:80]!r}")
