"""Hostile HTTP clients against the search service (issue 12): a body past the limit
under Content-Length + chunked framing (finding 3), foreign Host headers (5), unique
words that grew the tokenizer's cache without bound (6), floods that queued without
bound (8), thumbnails of huge images (9), image responses (11) and searches during
shutdown (14). What depends on how uvicorn frames a request runs against the real
server over a raw socket; the rest goes through the ASGI app.

A tiny randomly initialised TR-Tiny-RN over 10 synthetic images keeps it fast.
"""

import asyncio
import io
import json
import os
import random
import select
import shutil
import socket
import sqlite3
import string
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="fastapi is not installed (pip install -e .)")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (pip install -e .[dev])")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from tiny_gallery import build_tiny_index, make_tiny_gallery  # noqa: E402
from traffic_retrieval.cli import build_parser  # noqa: E402
from traffic_retrieval.config import build_config, config_from_args  # noqa: E402
from traffic_retrieval.errors import TrafficRetrievalError  # noqa: E402
from traffic_retrieval.index import Retriever  # noqa: E402
from traffic_retrieval.model.factory import create_model  # noqa: E402
from traffic_retrieval.serve.app import ServeSettings, check_settings, create_app  # noqa: E402
from traffic_retrieval.serve.batching import MicroBatcher  # noqa: E402
from traffic_retrieval.serve.server import running_server  # noqa: E402
from traffic_retrieval.serve.thumbnails import ThumbnailCache  # noqa: E402

LOCAL = "http://localhost"  # TestClient's own default, http://testserver, is a foreign host
AUDI = "This is a white Audi."
IMAGE_CSP = "default-src 'none'; sandbox"


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("security-serve")
    return build_tiny_index(make_tiny_gallery(root, seed=3, test_pedestrians=6, test_vehicles=4), root / "INDEX")


@pytest.fixture(scope="module")
def client(retriever):
    with TestClient(create_app(retriever, ServeSettings()), base_url=LOCAL) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def server(retriever):
    app = create_app(retriever, ServeSettings())
    with running_server(app) as base_url:
        yield base_url, app


# -- a raw HTTP/1.1 client: byte for byte, as a hostile one sends ----------------------------
def raw_request(base_url: str, head: str, body: bytes = b"", timeout: float = 20.0) -> tuple[int, dict, bytes]:
    """Send ``head`` then ``body`` (stopping early once the server answers or closes);
    returns (status, headers, body) of the response."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1"))
        for start in range(0, len(body), 65536):
            if select.select([sock], [], [], 0)[0]:  # answered (or closed) before reading it all
                break
            try:
                sock.sendall(body[start:start + 65536])
            except (BrokenPipeError, ConnectionResetError):
                break
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    assert data, "no response"
    response_head, _, response_body = data.partition(b"\r\n\r\n")
    lines = response_head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, response_body


def head_of(base_url: str, method: str, target: str, *headers: str, host: str | None = None) -> str:
    host = host if host is not None else base_url.removeprefix("http://")
    return "\r\n".join([f"{method} {target} HTTP/1.1", f"Host: {host}", *headers, "Connection: close", "", ""])


def chunked(body: bytes, size: int = 65536) -> bytes:
    return b"".join(f"{len(body[i:i + size]):x}\r\n".encode() + body[i:i + size] + b"\r\n" for i in range(0, len(body), size)) + b"0\r\n\r\n"


def assert_healthy(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        assert http.get("/api/health").json()["status"] == "ok"
        assert http.get("/api/search", params={"q": AUDI, "k": 2}).json()["count"] == 2


def reason(body: bytes) -> str:
    detail = json.loads(body)["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail
    return detail


# -- finding 3: the body limit counts what arrives; no Transfer-Encoding ------------------------
def test_content_length_plus_chunked_body_past_the_limit_is_refused_by_the_real_server(server):
    base_url, _ = server
    body = b'{"queries": ["a white car"], "k": 1}' + b" " * 2_000_000  # valid JSON, twice the 1 MB limit
    head = head_of(base_url, "POST", "/api/search", "Content-Type: application/json", "Content-Length: 36", "Transfer-Encoding: chunked")
    status, headers, reply = raw_request(base_url, head, chunked(body))
    assert status in (400, 411, 413), (status, reply[:300])
    assert "transfer-encoding" in reason(reply).lower() or "larger than" in reason(reply)
    assert_healthy(base_url)


@pytest.mark.parametrize("extra", [["Content-Length: 36", "Transfer-Encoding: chunked"], ["Transfer-Encoding: chunked"],
                                   ["Transfer-Encoding: chunked", "Content-Length: 36"]])
def test_any_transfer_encoding_is_refused_by_the_real_server(server, extra):
    base_url, _ = server
    body = b'{"queries": ["a white car"], "k": 1}'  # small: refused for its framing, not its size
    status, _, reply = raw_request(base_url, head_of(base_url, "POST", "/api/search", "Content-Type: application/json", *extra), chunked(body))
    assert status in (400, 411) and "Transfer-Encoding" in reason(reply), (status, reply[:300])
    status, _, reply = raw_request(base_url, head_of(base_url, "GET", "/api/health", *extra), chunked(b"x"))
    assert status in (400, 411), (status, reply[:300])
    assert_healthy(base_url)


def test_body_limit_counts_the_bytes_received_not_the_declared_length(retriever):
    """A server that frames otherwise (or a declared length that lies) cannot slip a large body past the limit."""
    app = create_app(retriever, ServeSettings(max_body_bytes=1024))
    body = b'{"queries": ["a white car"], "k": 1}' + b" " * 3000
    messages = [{"type": "http.request", "body": body[i:i + 600], "more_body": i + 600 < len(body)} for i in range(0, len(body), 600)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http", "path": "/api/search",
             "raw_path": b"/api/search", "root_path": "", "query_string": b"", "client": ("127.0.0.1", 5000), "server": ("localhost", 80),
             "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"), (b"content-length", b"36")]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 413, sent
    assert "larger than 1024 bytes" in reason(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


# -- finding 5: the Host allow-list ----------------------------------------------------------------
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io", "[::2]", "0.0.0.0",
                                  "attacker.test:80"])
def test_a_foreign_host_header_is_refused_by_the_real_server(server, host):
    base_url, _ = server
    for target in ("/api/health", "/api/search?q=car", "/", "/api/info"):
        status, headers, reply = raw_request(base_url, head_of(base_url, "GET", target, host=host))
        assert status == 400 and "host" in reason(reply).lower(), (host, target, status, reply[:200])
        assert headers["content-type"].startswith("application/json")
    assert_healthy(base_url)


def test_local_host_names_are_accepted_by_the_real_server(server):
    base_url, _ = server
    port = base_url.rsplit(":", 1)[1]
    for host in ("localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.1:{port}", "[::1]", f"[::1]:{port}", "LOCALHOST"):
        status, _, reply = raw_request(base_url, head_of(base_url, "GET", "/api/health", host=host))
        assert status == 200 and json.loads(reply)["status"] == "ok", (host, status, reply[:200])


def test_allowed_host_and_the_listening_host_are_let_through(retriever):
    settings = ServeSettings(allowed_host=["search.example.org", "*.lab.example"])
    with TestClient(create_app(retriever, settings), base_url="http://search.example.org") as proxied:
        assert proxied.get("/api/health").status_code == 200
        assert proxied.get("/api/health", headers={"host": "cam.lab.example"}).status_code == 200
        assert proxied.get("/api/health", headers={"host": "evil.example"}).status_code == 400
        assert proxied.get("/api/health", headers={"host": "localhost:8000"}).status_code == 200  # the loopback names stay allowed
    with TestClient(create_app(retriever, ServeSettings(host="gpu-box.lan")), base_url="http://gpu-box.lan:8000") as named:
        assert named.get("/api/health").status_code == 200
        assert named.get("/api/health", headers={"host": "evil.example"}).status_code == 400
    with TestClient(create_app(retriever, ServeSettings()), base_url="http://testserver") as default:
        response = default.get("/api/health")
        assert response.status_code == 400 and "--allowed-host" in response.json()["detail"]


def test_allowed_host_flag_is_repeatable_and_checked(capsys):
    args = build_parser().parse_args(["serve", "--index", "I", "--allowed-host", "a.example", "--allowed-host", "b.example", "10.0.0.7"])
    assert config_from_args(ServeSettings, args).allowed_host == ["a.example", "b.example", "10.0.0.7"]
    assert build_config(ServeSettings, None, {"allowed_host": ["search.example.org"]}).allowed_host == ["search.example.org"]
    for bad in ("http://a.example", "a.example:8000", "a.example/x", "*a.example", "a.*.example", "", "a b", "évil"):
        with pytest.raises(TrafficRetrievalError, match="allowed.host") as raised:
            check_settings(ServeSettings(allowed_host=[bad]))
        assert "\n" not in str(raised.value)


# -- finding 6: unique words cannot grow the tokenizer; one query's cost is bounded ----------------
def random_words(count: int, rng: random.Random) -> list[str]:
    return ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(6, 12))) for _ in range(count)]


def test_the_tokenizer_word_cache_stays_bounded():
    from traffic_retrieval.model.tokens import tokenize

    tokenizer = create_model("TR-Tiny-RN").tokenizer
    rng = random.Random(0)
    for _ in range(4):
        tokenize(tokenizer, [" ".join(random_words(50, rng)) for _ in range(100)])  # 5,000 new words each time
    assert len(tokenizer.cache) <= 10_002  # the bound plus the two special tokens


def test_unique_word_queries_through_the_api_keep_the_cache_bounded(client, retriever):
    rng = random.Random(1)
    for _ in range(4):
        queries = [" ".join(random_words(60, rng)) for _ in range(64)]  # 3,840 new words per request
        assert client.post("/api/search", json={"queries": queries, "k": 1}).status_code == 200
    tokenizer = retriever._queries.loaded.tokenizer
    assert len(tokenizer.cache) <= 10_002
    assert client.get("/api/search", params={"q": AUDI, "k": 1}).status_code == 200


def test_one_query_tokenizes_a_bounded_amount_of_text():
    from traffic_retrieval.model.tokens import tokenize

    tokenizer = create_model("TR-Tiny-RN").tokenizer
    seen = []
    original_bpe = tokenizer.bpe
    tokenizer.bpe = lambda token: seen.append(token) or original_bpe(token)
    rng = random.Random(2)
    one_long_word = "".join(rng.choice(string.ascii_lowercase) for _ in range(1000))
    many_words = " ".join(random_words(400, rng))
    tokens = tokenize(tokenizer, [one_long_word, many_words])
    assert tokens.shape == (2, tokenizer.context_length)
    assert max(len(token) for token in seen) <= 64 + 4  # a word is cut to 64 characters (+ UTF-8 bytes as BPE symbols)
    assert len(seen) <= 2 * tokenizer.context_length  # the words past the context are never looked at


def test_bounded_tokenization_gives_open_clips_tokens_for_real_texts():
    from traffic_retrieval.model.tokens import tokenize

    tokenizer = create_model("TR-Tiny-RN").tokenizer
    texts = ["This is a white Audi.", "A walking woman between 18 and 60 years old with a backpack.", "", "   ",
             "It's a man's coat &amp; a bag &lt;b&gt; 1234567 km/h!!! ... ?", "Ünïcödé straße ﬁne — “quotes” 東京 🚗",
             " ".join(["a red truck with a long trailer"] * 40),  # far past the context: cut, the same 77 tokens
             "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis " * 5,
             "Ünïcödé straße ﬁne — “quotes” 東京 🚗 " * 8, "x" * 64 + " tail", "1 2 3 4 5 6 7 8 9 " * 20, "a" * 64, "&amp;amp;lt; " * 30]
    assert torch.equal(tokenize(tokenizer, texts), tokenizer(texts))


def test_text_encoding_runs_in_few_shapes():
    """Each distinct input shape costs the CPU's bf16 kernels a new cached primitive: a flood of random
    queries (each batch cut to its longest caption) grew the server by ~750 MB before levelling off.
    Inference rounds the cut up to a multiple of 16 tokens (training keeps the exact cut)."""
    from traffic_retrieval.model.tokens import tokenize
    from traffic_retrieval.retrieval.encode import encode_tokens

    loaded = create_model("TR-Tiny-RN")
    model = loaded.model.eval()
    lengths = set()
    hook = model.transformer.register_forward_pre_hook(lambda module, args, kwargs: lengths.add(args[0].shape[1]), with_kwargs=True)
    rng = random.Random(3)
    try:
        with torch.no_grad():
            for words in range(1, 60):
                text = " ".join(random_words(words, rng))
                single = encode_tokens(model, tokenize(loaded.tokenizer, [text]), "cpu", None)  # the inference path
                padded = encode_tokens(model, tokenize(loaded.tokenizer, [text, "a"]), "cpu", None)[:1]
                assert torch.allclose(single, padded, atol=1e-5)  # the cut is still exact
    finally:
        hook.remove()
    assert lengths <= {16, 32, 48, 64, 77}, sorted(lengths)


# -- finding 8: backpressure -------------------------------------------------------------------------
class Gate:
    """Holds the batcher's worker inside ``search_batch`` until opened."""

    def __init__(self, batcher: MicroBatcher):
        self.batcher, self.inside, self.open = batcher, threading.Event(), threading.Event()
        self.original = batcher._search_batch

        def gated(queries, k, category):
            self.inside.set()
            self.open.wait(30)
            return self.original(queries, k, category)

        batcher._search_batch = gated

    def __enter__(self):
        self.blocker = self.batcher.submit(AUDI, 1, None)
        assert self.inside.wait(10)
        return self

    def __exit__(self, *exc):
        self.open.set()
        self.blocker.result(timeout=30)
        self.batcher._search_batch = self.original


def test_a_full_search_queue_answers_503_at_once(retriever):
    app = create_app(retriever, ServeSettings(max_queued_queries=4, search_timeout_s=20))
    with TestClient(app, base_url=LOCAL) as test_client:
        with Gate(app.state.batcher):
            started = time.perf_counter()
            response = test_client.post("/api/search", json={"queries": [f"a car {i}" for i in range(10)], "k": 1})
            assert response.status_code == 503 and time.perf_counter() - started < 10
            assert "busy" in response.json()["detail"], response.json()
            health = test_client.get("/api/health").json()  # answered while the model is busy
            assert health["status"] == "ok" and health["batcher"]["queued"] == 0  # the refused request left nothing queued
            later = [app.state.batcher.submit(f"car {i}", 1, None) for i in range(4)]  # so the queue has room again
        assert all(len(future.result(timeout=30)) == 1 for future in later)
        assert test_client.get("/api/search", params={"q": AUDI, "k": 1}).status_code == 200


def test_micro_batcher_refuses_past_its_bound_and_cancels_nothing_it_accepted():
    release = threading.Event()

    def search_batch(queries, k, category):
        release.wait(10)
        return [[query] for query in queries]

    batcher = MicroBatcher(search_batch, max_batch=2, max_wait_s=0, max_queued=3)
    first = batcher.submit("first", 1, None)
    time.sleep(0.2)  # the worker holds "first"
    accepted = [batcher.submit(f"q{i}", 1, None) for i in range(3)]
    with pytest.raises(TrafficRetrievalError, match="busy"):
        batcher.submit("one too many", 1, None)
    release.set()
    assert first.result(5) == ["first"] and [f.result(5) for f in accepted] == [["q0"], ["q1"], ["q2"]]
    assert batcher.submit("again", 1, None).result(5) == ["again"]
    batcher.close()


def test_uvicorn_limits_concurrent_connections(retriever):
    app = create_app(retriever, ServeSettings(max_connections=4))
    with running_server(app) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(5)]  # slow clients holding connections
        try:
            time.sleep(0.3)
            status, _, _ = raw_request(base_url, head_of(base_url, "GET", "/api/health"))
            assert status == 503
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.3)
        assert_healthy(base_url)


class WorkerKilled(BaseException):
    """Not an ``Exception``: nothing in the worker catches it, so its thread dies."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_health_says_not_ok_when_the_batcher_thread_is_dead(retriever):
    app = create_app(retriever, ServeSettings(search_timeout_s=20))
    with TestClient(app, base_url=LOCAL) as test_client:
        health = test_client.get("/api/health")
        assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["batcher"]["alive"] is True
        batcher = app.state.batcher

        def killed(queries, k, category):
            raise WorkerKilled

        batcher._search_batch = killed
        batcher.submit(AUDI, 1, None)
        deadline = time.monotonic() + 10
        while batcher._worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        health = test_client.get("/api/health")
        assert health.status_code == 503 and health.json()["status"] != "ok" and health.json()["batcher"]["alive"] is False
        started = time.perf_counter()
        search = test_client.get("/api/search", params={"q": AUDI, "k": 1})
        assert search.status_code == 503 and time.perf_counter() - started < 5 and search.json()["detail"]


# -- finding 14 (serve): a search during shutdown is a 503 -----------------------------------------------
def test_a_search_during_shutdown_answers_503(retriever):
    app = create_app(retriever, ServeSettings())
    with TestClient(app, base_url=LOCAL) as test_client:
        app.state.batcher.close()
        for response in (test_client.get("/api/search", params={"q": AUDI}), test_client.post("/api/search", json={"queries": [AUDI]})):
            assert response.status_code == 503 and "shutting down" in response.json()["detail"], response.json()


# -- finding 9: thumbnails -------------------------------------------------------------------------------
@pytest.fixture
def spy_thumbnail(monkeypatch):
    """Records (size of the decoded image, decodes running at once) each time PIL shrinks one."""
    calls, running, lock = [], [0], threading.Lock()
    original = Image.Image.thumbnail

    def thumbnail(self, *args, **kwargs):
        with lock:
            running[0] += 1
            calls.append((self.size, running[0]))
        time.sleep(0.05)
        try:
            return original(self, *args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(Image.Image, "thumbnail", thumbnail)
    return calls


def test_thumbnail_decodes_are_limited(tmp_path, spy_thumbnail):
    for number in range(8):
        Image.new("RGB", (320, 200), (number * 30, 10, 10)).save(tmp_path / f"{number}.png")
    cache = ThumbnailCache(size=64)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: cache.get(n, tmp_path / f"{n}.png"), range(8)))
    assert len(spy_thumbnail) == 8 and max(running for _, running in spy_thumbnail) <= 2


def test_jpeg_thumbnails_decode_at_reduced_scale(tmp_path, spy_thumbnail):
    Image.new("RGB", (3200, 2400), (200, 30, 30)).save(tmp_path / "big.jpg", quality=80)
    data = ThumbnailCache(size=128).get(1, tmp_path / "big.jpg")
    assert Image.open(io.BytesIO(data)).size == (128, 96)
    (decoded, _), = spy_thumbnail
    assert 128 <= decoded[0] <= 3200 // 4 and 96 <= decoded[1] <= 2400 // 4  # draft: JPEG's DCT scaling, never the full 7.7 MP


def test_thumbnail_size_check_is_explicit_and_touches_no_warning_filters(tmp_path, monkeypatch):
    Image.new("RGB", (400, 300), (10, 10, 10)).save(tmp_path / "wide.png")  # 120,000 pixels: PIL alone would only warn
    Image.new("RGB", (100, 100), (10, 10, 10)).save(tmp_path / "fine.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    touched = []
    for name in ("simplefilter", "filterwarnings", "catch_warnings", "resetwarnings"):  # process-wide state: recorded, then done
        original = getattr(warnings, name)
        monkeypatch.setattr(warnings, name, lambda *a, _name=name, _original=original, **k: touched.append(_name) or _original(*a, **k))
    loads = []
    original_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(self.size) or original_load(self))
    cache = ThumbnailCache(size=64)
    with pytest.raises(TrafficRetrievalError, match="too large"):
        cache.get(1, tmp_path / "wide.png")
    assert (400, 300) not in loads  # refused from the header, before decoding
    assert Image.open(io.BytesIO(cache.get(2, tmp_path / "fine.png"))).size == (64, 64)
    assert touched == []


def test_a_huge_gallery_image_gets_a_404_thumbnail_not_a_500(retriever, monkeypatch):
    with TestClient(create_app(retriever, ServeSettings()), base_url=LOCAL) as fresh:  # an empty thumbnail cache
        hit = fresh.get("/api/search", params={"q": AUDI, "k": 1}).json()["results"][0]
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16)  # every gallery image is now "huge"
        response = fresh.get(hit["thumbnail_url"])
        assert response.status_code == 404 and response.json()["detail"], response.text
        assert fresh.get("/api/health").json()["status"] == "ok"


# -- finding 11: image responses ---------------------------------------------------------------------------
def test_image_responses_are_images_with_a_sandbox_csp(client, retriever):
    hit = client.get("/api/search", params={"q": AUDI, "k": 1}).json()["results"][0]
    for url in (hit["image_url"], hit["thumbnail_url"]):
        response = client.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg", url
        assert response.headers["content-security-policy"] == IMAGE_CSP and response.headers["x-content-type-options"] == "nosniff", url
    page = client.get("/")
    assert "default-src 'self'" in page.headers["content-security-policy"]  # the page keeps its own policy


@pytest.fixture
def tampered(index, tmp_path):
    """A copy of the index whose first indexed row is rewritten by the caller (``sql``, ``gallery``)."""
    copy = tmp_path / "INDEX"
    shutil.copytree(index, copy)
    gallery = Path(json.loads((copy / "index.json").read_text())["images"])
    with sqlite3.connect(copy / "meta.sqlite") as db:
        (image_id, path) = db.execute("SELECT id, path FROM images WHERE state = 'indexed' ORDER BY id LIMIT 1").fetchone()
    return copy, gallery, image_id, path


def test_a_gallery_file_that_is_not_an_image_is_never_served_as_a_page(tampered):
    copy, gallery, image_id, _ = tampered
    page = gallery / "page.html"
    page.write_text("<html><script>alert(document.domain)</script></html>")
    try:
        stat = page.stat()
        with sqlite3.connect(copy / "meta.sqlite") as db:
            db.execute("UPDATE images SET path = 'page.html', name = 'page.html', size = ?, mtime_ns = ? WHERE id = ?",
                       (stat.st_size, stat.st_mtime_ns, image_id))
        with Retriever.open(copy, device="cpu", precision="fp32") as opened, TestClient(create_app(opened, ServeSettings()), base_url=LOCAL) as http:
            for route in ("images", "thumbnails"):
                response = http.get(f"/api/{route}/{image_id}")
                assert response.status_code in (404, 422) or (response.headers["content-type"].startswith("image/") and
                                                             response.headers["content-security-policy"] == IMAGE_CSP), route
                assert "text/html" not in response.headers.get("content-type", "")
                assert b"<script>" not in response.content
    finally:
        page.unlink()


def test_an_image_file_replaced_by_a_page_is_not_served(tampered):
    copy, gallery, image_id, path = tampered
    target = gallery / path
    saved, stat = target.read_bytes(), target.stat()
    try:
        target.write_bytes(b"<html><script>alert(1)</script></html>")
        with Retriever.open(copy, device="cpu", precision="fp32") as opened, TestClient(create_app(opened, ServeSettings()), base_url=LOCAL) as http:
            response = http.get(f"/api/images/{image_id}")
            assert response.status_code == 404 and b"<script>" not in response.content, response.headers
            assert http.get(f"/api/thumbnails/{image_id}").status_code == 404
    finally:
        target.write_bytes(saved)
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as the index recorded it, for the other tests
