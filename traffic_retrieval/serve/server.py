"""Running the app: ``serve(settings)`` for the ``serve`` command, and
``running_server(app)`` (uvicorn on a free local port in a background thread) for
tests and benchmarks."""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from ..errors import TrafficRetrievalError
from .settings import ServeSettings, allowed_hosts, check_settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warm_up(retriever) -> None:
    """One search before the first client's, so lazy imports and first-call costs are not theirs."""
    retriever.search("warm up", k=1, category="all")


def open_retriever(settings: ServeSettings):
    from ..index.retriever import Retriever

    if settings.index is None:
        raise TrafficRetrievalError("serve needs --index")
    return Retriever.open(settings.index, device=settings.device, checkpoint=settings.checkpoint, model=settings.model, pretrained=settings.pretrained,
                          vocabulary=settings.vocabulary,
                          precision=settings.precision, query_config=settings.query, trust_checkpoint=settings.trust_checkpoint)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise TrafficRetrievalError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.listen(2048)
    return sock


def serve(settings: ServeSettings) -> None:
    """Open the index (the model loads once, here), then serve until interrupted."""
    import uvicorn

    from .app import create_app

    check_settings(settings)
    if settings.index is None:
        raise TrafficRetrievalError("serve needs --index")
    sock = bind_socket(settings.host, settings.port)  # before loading the model: a busy port fails fast
    with sock, open_retriever(settings) as retriever:
        warm_up(retriever)
        app = create_app(retriever, settings)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        info = retriever.info()
        print(f"serving {info['count']} images ({info['model']}) on http://{shown}:{port}/  (API: /api/search, docs: /docs)", flush=True)
        if not is_loopback(settings.host):
            print(f"warning: listening on {settings.host}: anyone who can reach this machine can search the index and view its images "
                  f"(requests must name {', '.join(allowed_hosts(settings))}; --allowed-host adds a name)", file=sys.stderr, flush=True)
        uvicorn.Server(uvicorn_config(app, settings.log_level)).run(sockets=[sock])


def uvicorn_config(app, log_level: str):
    """uvicorn's settings for ``app``: its connection limit (past it uvicorn answers 503 itself), the lifespan."""
    import uvicorn

    settings = getattr(app.state, "settings", None) or ServeSettings()  # an app create_app made keeps its settings there
    return uvicorn.Config(app, log_level=log_level, lifespan="on", limit_concurrency=settings.max_connections)


@contextmanager
def running_server(app, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields its base URL (``http://127.0.0.1:PORT``)."""
    import uvicorn

    sock = bind_socket(host, port)
    server = uvicorn.Server(uvicorn_config(app, "warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise TrafficRetrievalError(f"the test server on {host} did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()
