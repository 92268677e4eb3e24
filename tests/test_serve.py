"""The search service: API (search GET/POST, categories, limits, images, thumbnails,
health, info, docs), micro-batching under concurrent requests, path traversal on a
real uvicorn server, CORS, and the ``serve`` command in a subprocess.

A tiny randomly initialised TR-Tiny-RN over 50 synthetic test-split images (30
pedestrians, 20 vehicles) keeps it fast; the scores mean nothing, the plumbing does.
"""

import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi", reason="fastapi is not installed (pip install -e .)")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (pip install -e .[dev])")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from tiny_gallery import build_tiny_index, make_tiny_gallery  # noqa: E402
from traffic_retrieval.errors import TrafficRetrievalError  # noqa: E402
from traffic_retrieval.serve.app import ServeSettings, create_app, label_text  # noqa: E402
from traffic_retrieval.serve.batching import MicroBatcher  # noqa: E402
from traffic_retrieval.cli import build_parser  # noqa: E402
from traffic_retrieval.serve.server import running_server  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "top-secret-do-not-serve"
AUDI = "This is a white Audi."
MAN = "A walking man between 18 and 60 years old with a backpack."


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    source = make_tiny_gallery(root, seed=1, test_pedestrians=30, test_vehicles=20, train=4, val=2)
    (source["gallery"] / "broken.jpg").write_bytes(b"not an image")  # recorded as unreadable: never served
    (root / "secret.txt").write_text(SECRET)  # next to the gallery: traversal targets
    (root / "data" / "test" / "secret.txt").write_text(SECRET)
    return build_tiny_index(source, root / "INDEX")


@pytest.fixture(scope="module")
def client(retriever):
    with TestClient(create_app(retriever, ServeSettings()), base_url="http://localhost") as test_client:  # testserver is a foreign Host
        yield test_client


def ids(results) -> list[int]:
    return [r["id"] if isinstance(r, dict) else r.id for r in results]


def assert_same_results(got: list[dict], expected: list, everything: list | None = None, tol: float = 2e-5) -> None:
    """``got`` (JSON hits) are ``expected`` (SearchResults): equal scores rank by rank, equal ids
    except where a near-tie (closer than ``tol``, batched vs single encoding) swapped neighbours."""
    score_of = {r.id: r.score for r in (everything or expected)}
    assert len(got) == len(expected)
    for hit, result in zip(got, expected):
        assert abs(hit["score"] - result.score) < tol, (hit, result)
        assert hit["id"] == result.id or abs(score_of.get(hit["id"], float("inf")) - hit["score"]) < tol, (hit, result)


# -- search ---------------------------------------------------------------------------------
def test_search_returns_ranked_results_with_urls_and_time(client, retriever):
    response = client.get("/api/search", params={"q": AUDI, "k": 7})
    assert response.status_code == 200
    body = response.json()
    assert (body["query"], body["k"], body["category"], body["count"]) == (AUDI, 7, "routed", 7)
    assert isinstance(body["took_ms"], float) and body["took_ms"] >= 0
    results = body["results"]
    assert [r["rank"] for r in results] == list(range(1, 8))
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    expected = retriever.search(AUDI, k=7)
    assert ids(results) == ids(expected) and [r["name"] for r in results] == [r.name for r in expected]
    for hit in results:
        assert hit["image_url"] == f"/api/images/{hit['id']}" and hit["thumbnail_url"] == f"/api/thumbnails/{hit['id']}"
        assert hit["category"] == "vehicle" and hit["label"].endswith(".") and hit["label_text"] == hit["label"]
        assert "path" not in hit  # no server paths in responses


def test_category_filter_and_k(client):
    for category, size in (("pedestrian", 30), ("vehicle", 20)):
        body = client.get("/api/search", params={"q": MAN, "k": 100, "category": category}).json()
        assert body["count"] == size and {r["category"] for r in body["results"]} == {category}
    everything = client.get("/api/search", params={"q": MAN, "k": 100, "category": "all"}).json()
    assert everything["count"] == 50 and len(set(ids(everything["results"]))) == 50
    pedestrian = client.get("/api/search", params={"q": MAN, "k": 3, "category": "pedestrian"}).json()["results"][0]
    flags = pedestrian["label"].split(",")
    assert len(flags) == 21 and pedestrian["label_text"] and "," in pedestrian["label_text"] + ","  # attribute names
    assert client.get("/api/search", params={"q": "x", "k": 1}).json()["count"] == 1
    assert client.get("/api/search", params={"q": "x", "k": 100}).json()["count"] in (20, 30)  # routed to one category
    assert label_text("1,0,1" + ",0" * 18, "pedestrian") == "Female, Age18-60"
    assert label_text("white Audi.", "vehicle") == "white Audi."


@pytest.mark.parametrize("params, reason", [
    ({"q": "a car", "k": 0}, "k: Input should be greater than or equal to 1"),
    ({"q": "a car", "k": 101}, "k: Input should be less than or equal to 100"),
    ({"q": "a car", "k": "ten"}, "k: Input should be a valid integer"),
    ({"q": "a car", "k": "2.5"}, "k: Input should be a valid integer"),
    ({"q": "x" * 1001}, "q: String should have at most 1000 characters"),
    ({"q": ""}, "q: String should have at least 1 character"),
    ({"q": "   "}, "q: the query is empty"),
    ({}, "q: Field required"),
    ({"q": "a car", "category": "bicycle"}, "category: must be one of routed, all, pedestrian, vehicle"),
])
def test_search_limits_give_422_with_a_reason(client, params, reason):
    response = client.get("/api/search", params=params)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(reason), response.json()


def test_longest_query_and_largest_k_are_accepted(client):
    body = client.get("/api/search", params={"q": "a" * 1000, "k": 100, "category": "all"}).json()
    assert body["count"] == 50


def test_post_search_answers_a_batch_like_single_searches(client, retriever):
    queries = [AUDI, MAN, "This is a red Truck.", AUDI]
    response = client.post("/api/search", json={"queries": queries, "k": 5, "category": "all"})
    assert response.status_code == 200
    body = response.json()
    assert body["k"] == 5 and body["category"] == "all" and body["took_ms"] >= 0
    assert [entry["query"] for entry in body["results"]] == queries
    for entry in body["results"]:
        assert entry["count"] == 5
        assert_same_results(entry["results"], retriever.search(entry["query"], k=5, category="all"), retriever.search(entry["query"], k=50, category="all"))
    routed = client.post("/api/search", json={"queries": [AUDI, MAN]}).json()["results"]  # defaults: k 10, routed
    assert {r["category"] for r in routed[0]["results"]} == {"vehicle"} and {r["category"] for r in routed[1]["results"]} == {"pedestrian"}


@pytest.mark.parametrize("body, reason", [
    ({"queries": []}, "queries: List should have at least 1 item"),
    ({"queries": ["a"] * 65}, "queries: List should have at most 64 items"),
    ({"queries": ["a", "x" * 1001]}, "queries[1]: String should have at most 1000 characters"),
    ({"queries": ["a", " "]}, "queries[1]: the query is empty"),
    ({"queries": ["a"], "k": 101}, "k: Input should be less than or equal to 100"),
    ({"queries": ["a"], "k": True}, "k: Input should be a valid integer"),
    ({"queries": ["a"], "k": "5"}, "k: Input should be a valid integer"),
    ({"queries": ["a"], "category": "bus"}, "category: must be one of"),
    ({"queries": "a car"}, "queries: Input should be a valid list"),
    ({"queries": ["a"], "limit": 3}, "limit: Extra inputs are not permitted"),
    ({"q": "a"}, "queries: Field required"),
])
def test_post_search_limits_give_422(client, body, reason):
    response = client.post("/api/search", json=body)
    assert response.status_code == 422 and response.json()["detail"].startswith(reason), response.json()


def test_post_search_refuses_bad_json_and_huge_bodies(client):
    response = client.post("/api/search", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "JSON" in response.json()["detail"]
    response = client.post("/api/search", content=b"x" * 1_000_001, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["detail"]
    response = client.post("/api/search", content=iter([b'{"queries": ["a"]}']), headers={"Content-Type": "application/json"})  # chunked
    assert response.status_code == 411 and "Content-Length" in response.json()["detail"]


# -- images ---------------------------------------------------------------------------------
def test_images_and_thumbnails_by_id(client, retriever):
    hit = client.get("/api/search", params={"q": AUDI, "k": 1}).json()["results"][0]
    image = client.get(hit["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content == retriever.image_path(hit["id"]).read_bytes()
    thumbnails = client.app.state.thumbnails
    misses = thumbnails.misses
    thumbnail = client.get(hit["thumbnail_url"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    small = Image.open(io.BytesIO(thumbnail.content))
    original = Image.open(io.BytesIO(image.content))
    assert small.format == "JPEG" and max(small.size) <= 256 and small.size == original.size  # tiny crops are never enlarged
    assert client.get(hit["thumbnail_url"]).content == thumbnail.content
    assert thumbnails.misses == misses + 1 and thumbnails.hits >= 1  # the second one came from the cache


def test_thumbnails_shrink_large_images_and_the_cache_is_bounded(tmp_path):
    from traffic_retrieval.serve.thumbnails import ThumbnailCache

    for number in range(3):
        Image.new("RGB", (640, 320), (number * 80, 10, 10)).save(tmp_path / f"{number}.png")
    cache = ThumbnailCache(size=64, max_entries=2)
    data = [cache.get(number, tmp_path / f"{number}.png") for number in range(3)]
    assert Image.open(io.BytesIO(data[0])).size == (64, 32)
    assert len(cache) == 2 and cache.misses == 3
    cache.get(2, tmp_path / "2.png")
    assert cache.hits == 1
    cache.get(0, tmp_path / "0.png")  # evicted earlier: decoded again
    assert cache.misses == 4
    with pytest.raises(TrafficRetrievalError, match="missing"):
        cache.get(9, tmp_path / "9.png")


def test_unknown_and_invalid_image_ids(client, index):
    import sqlite3

    with sqlite3.connect(index / "meta.sqlite") as db:
        (broken_id,) = db.execute("SELECT id FROM images WHERE name = 'broken.jpg'").fetchone()
        (largest,) = db.execute("SELECT max(id) FROM images").fetchone()
    for route in ("images", "thumbnails"):
        for image_id in (largest + 1, 10**12, broken_id):  # unknown, and one that is recorded but unreadable
            response = client.get(f"/api/{route}/{image_id}")
            assert response.status_code == 404 and response.json()["detail"] == f"no image with id {image_id}"
        for bad in ("abc", "1.5", "-1", "1e3", "0x10", str(2**64), "%20"):
            assert client.get(f"/api/{route}/{bad}").status_code == 422, bad


TRAVERSALS = [
    "../secret.txt", "../../secret.txt", "..%2fsecret.txt", "..%2f..%2fsecret.txt", "%2e%2e%2fsecret.txt", "%2e%2e/%2e%2e/secret.txt",
    "%252e%252e%252fsecret.txt", "%252e%252e%252f%252e%252e%252fsecret.txt", "..%5csecret.txt", "....//secret.txt",
    "/etc/passwd", "%2fetc%2fpasswd", "%252fetc%252fpasswd", "..", "%2e%2e", ".", "app.py", "..%2fapp.py", "%2e%2e%2fapp.py",
    "%252e%252e%252fapp.py", "..%2f..%2fserve%2fapp.py", "%00", "index.html%00.png",
]


def refused(status: int, body: bytes) -> bool:
    return status in (400, 404, 422) and SECRET.encode() not in body and b"root:" not in body and b"create_app" not in body


@pytest.mark.parametrize("route", ["/api/images/", "/api/thumbnails/", "/static/"])
def test_path_traversal_is_refused_through_the_asgi_app(client, route):
    for attempt in TRAVERSALS:
        response = client.get(route + attempt)
        if response.url.path == "/":  # the client itself resolved "/static/.." to the page
            assert response.content == client.get("/").content
            continue
        assert refused(response.status_code, response.content), (route + attempt, response.status_code)


def raw_get(base_url: str, target: str) -> tuple[int, bytes]:
    """A request line sent byte for byte (HTTP clients would normalise ``..`` away)."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture(scope="module")
def live_server(retriever):
    app = create_app(retriever, ServeSettings(batch_wait_ms=25))  # a long wait: concurrent requests surely share batches
    with running_server(app) as base_url:
        yield base_url, app


def test_path_traversal_is_refused_by_the_real_server(live_server):
    base_url, _ = live_server
    status, body = raw_get(base_url, "/static/app.js")
    assert status == 200 and b"search" in body
    for route in ("/api/images/", "/api/thumbnails/", "/static/", "/"):
        for attempt in TRAVERSALS + ["../../../../../../etc/passwd", "..\\..\\secret.txt", "%2e%2e%5c%2e%2e%5csecret.txt"]:
            status, body = raw_get(base_url, route + attempt)
            assert refused(status, body), (route + attempt, status, body[:200])
    assert refused(*raw_get(base_url, "/static/../../../../../../../etc/passwd"))
    assert refused(*raw_get(base_url, "http://127.0.0.1/static/%2e%2e/%2e%2e/serve/app.py"))


def test_concurrent_requests_get_their_own_results_in_shared_batches(live_server, retriever):
    base_url, app = live_server
    requests = [(text, k, category) for text in (AUDI, MAN, "This is a red Truck.", "A woman in a long coat.", "A black Sedan.", "a child")
                for k, category in ((5, "all"), (3, "routed"), (8, "pedestrian"))]
    target = lambda category: None if category == "routed" else category
    expected = {request: retriever.search(request[0], k=request[1], category=target(request[2])) for request in requests}
    everything = {request: retriever.search(request[0], k=100, category=target(request[2])) for request in requests}
    start = threading.Barrier(len(requests))
    batcher = app.state.batcher
    batches_before, queries_before = batcher.batches, batcher.batched_queries

    def ask(request):
        text, k, category = request
        with httpx.Client(base_url=base_url, timeout=30) as http:
            start.wait()
            return request, http.get("/api/search", params={"q": text, "k": k, "category": category}).json()

    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(ask, requests))
    for request, body in answers:
        assert body["query"] == request[0] and body["k"] == request[1], request
        assert_same_results(body["results"], expected[request], everything[request])
    assert batcher.batched_queries - queries_before == len(requests)
    assert batcher.batches - batches_before < len(requests) and batcher.largest_batch > 1  # encoded together, not one by one


def test_micro_batcher_groups_requests_and_isolates_failures():
    calls = []

    def search_batch(queries, k, category):
        calls.append((list(queries), k, category))
        if "bad" in queries:
            raise TrafficRetrievalError("a bad query")
        time.sleep(0.01)
        return [[f"{query}:{k}:{category}"] * k for query in queries]

    batcher = MicroBatcher(search_batch, max_batch=4, max_wait_s=0.05)
    futures = [batcher.submit(f"q{i}", 1 + i % 2, "all") for i in range(6)] + [batcher.submit("bad", 1, "all"), batcher.submit("ok", 1, "all")]
    results = [f.exception() or f.result() for f in futures]
    assert results[:6] == [[f"q{i}:{1 + i % 2}:all"] * (1 + i % 2) for i in range(6)]
    assert isinstance(results[6], TrafficRetrievalError) and results[7] == ["ok:1:all"]
    assert all(len(queries) <= 4 and len({k}) == 1 for queries, k, _ in calls)
    assert len(calls) < 8 + 2  # batched, plus the retries of the failed group one by one
    queued = batcher.submit("last", 1, None)
    batcher.close()
    assert queued.result(timeout=1) == ["last:1:None"]
    with pytest.raises(TrafficRetrievalError, match="shutting down"):
        batcher.submit("late", 1, None)


# -- service, page, docs, CORS ------------------------------------------------------------------
def test_health_info_and_docs(client):
    assert client.get("/api/health").json() == {"status": "ok", "count": 50, "batcher": {"alive": True, "queued": 0, "max_queued": 1024}}
    info = client.get("/api/info").json()
    assert info["model"] == "TR-Tiny-RN" and info["checkpoint"] == "tiny.pt" and len(info["checkpoint_sha256"]) == 64
    assert info["count"] == 50 and info["categories"] == {"pedestrian": 30, "vehicle": 20}
    assert info["limits"] == {"max_k": 100, "max_query_chars": 1000, "max_batch_queries": 64} and info["examples"]
    assert "/" not in json.dumps({k: v for k, v in info.items() if k != "built_at"}).replace("\\/", "").replace("/api", "")  # no server paths
    spec = client.get("/openapi.json").json()
    assert {"/api/search", "/api/images/{image_id}", "/api/thumbnails/{image_id}", "/api/health", "/api/info"} <= set(spec["paths"])
    assert set(spec["paths"]["/api/search"]) == {"get", "post"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/docs.js" in docs.text and client.get("/redoc").status_code == 404


def test_page_and_assets_load_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"] and page.headers["x-content-type-options"] == "nosniff"
    for name, media_type in (("app.js", "text/javascript"), ("style.css", "text/css"), ("docs.js", "text/javascript"), ("favicon.svg", "image/svg+xml")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(media_type), name
    for name in ("index.html", "docs.html", "app.js", "style.css", "docs.js"):
        text = client.get("/" if name == "index.html" else "/docs" if name == "docs.html" else f"/static/{name}").text
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text) and "cdn" not in text.lower() and "@import" not in text, name
    assert client.get("/static/nothing.js").status_code == 404


def test_cors_is_off_unless_configured(client, retriever):
    headers = {"Origin": "http://elsewhere.example"}
    assert "access-control-allow-origin" not in client.get("/api/health", headers=headers).headers
    preflight = {"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/api/search", headers=preflight).headers
    with TestClient(create_app(retriever, ServeSettings(cors_origin=["http://localhost:3000"])), base_url="http://localhost") as allowed:
        response = allowed.get("/api/health", headers={"Origin": "http://localhost:3000"})
        assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "access-control-allow-origin" not in allowed.get("/api/health", headers=headers).headers
        response = allowed.options("/api/search", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
        assert response.status_code == 200 and response.headers["access-control-allow-origin"] == "http://localhost:3000"
    with pytest.raises(TrafficRetrievalError, match="cors-origin"):
        create_app(retriever, ServeSettings(cors_origin=["localhost:3000"]))


# -- the command ------------------------------------------------------------------------------
def test_serve_flags_default_to_loopback():
    from traffic_retrieval.config import build_config

    args = build_parser().parse_args(["serve", "--index", "INDEX"])
    assert (args.host, args.port, args.cors_origin) == (None, None, None)  # not given: the settings' defaults apply
    settings = build_config(ServeSettings, None, {"index": args.index, "host": args.host, "cors_origin": args.cors_origin})
    assert settings.host == "127.0.0.1" and settings.port == 8000 and settings.cors_origin == []
    args = build_parser().parse_args(["serve", "--index", "I", "--port", "9000", "--cors-origin", "http://a:1", "https://b"])
    assert args.port == 9000 and args.cors_origin == ["http://a:1", "https://b"]


def test_serve_command_runs_uvicorn_on_loopback(index):
    # a shell starts background jobs with SIGINT ignored; give the server a terminal's Ctrl-C handler
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "from traffic_retrieval.cli import main; sys.exit(main(sys.argv[1:]))")
    process = subprocess.Popen([sys.executable, "-c", code, "serve", "--index", str(index), "--port", "0", "--device", "cpu", "--log-level", "warning"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        line = process.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
        assert match, (line, process.stderr.read() if process.poll() is not None else "")
        with httpx.Client(base_url=match.group(1), timeout=30) as http:
            assert http.get("/api/health").json()["status"] == "ok"
            assert http.get("/api/search", params={"q": AUDI, "k": 2}).json()["count"] == 2
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    errors = process.stderr.read()
    assert process.returncode == 130 and "Traceback" not in errors, errors  # uvicorn shut down cleanly, then re-raised the Ctrl-C


# -- one app's settings, the routes every app shares -------------------------------------------
def test_each_app_enforces_and_documents_its_own_limits(client, retriever):
    settings = ServeSettings(max_k=5, max_query_chars=20, max_batch_queries=2, thumbnail_size=64, search_timeout_s=2.5)
    with TestClient(create_app(retriever, settings), base_url="http://localhost") as small:
        assert small.get("/api/search", params={"q": AUDI[:20]}).json()["k"] == 5  # the default k is max_k when that is under 10
        assert small.post("/api/search", json={"queries": [AUDI[:20]]}).json()["k"] == 5
        for params, reason in (({"q": "a car", "k": 6}, "k: Input should be less than or equal to 5"),
                               ({"q": "a car", "k": 10}, "k: Input should be less than or equal to 5"),
                               ({"q": "x" * 21}, "q: String should have at most 20 characters"),
                               ({"q": "x" * 21, "k": 6}, "q: String should have at most 20 characters; k: Input should be less than or equal to 5")):
            response = small.get("/api/search", params=params)
            assert response.status_code == 422 and response.json()["detail"] == reason, response.json()
        for body, reason in (({"queries": ["a", "b", "c"]}, "queries: List should have at most 2 items after validation, not 3"),
                             ({"queries": ["a", "x" * 21], "k": 6}, "queries[1]: String should have at most 20 characters; k: Input should be less than or equal to 5")):
            response = small.post("/api/search", json=body)
            assert response.status_code == 422 and response.json()["detail"] == reason, response.json()
        assert client.get("/api/search", params={"q": "x" * 21, "k": 6}).status_code == 200  # the other app keeps its own limits
        assert small.get("/api/info").json()["limits"] == {"max_k": 5, "max_query_chars": 20, "max_batch_queries": 2}
        spec = small.get("/openapi.json").json()
    default_spec = client.get("/openapi.json").json()
    for schema, (max_k, default_k, max_chars, max_queries, side, timeout) in ((spec, (5, 5, 20, 2, 64, "2.5")), (default_spec, (100, 10, 1000, 64, 256, "30"))):
        parameters = {p["name"]: p for p in schema["paths"]["/api/search"]["get"]["parameters"]}
        assert parameters["q"]["schema"]["maxLength"] == max_chars
        assert (parameters["k"]["schema"]["maximum"], parameters["k"]["schema"]["default"]) == (max_k, default_k)
        assert parameters["category"]["description"] == "one of routed, all, pedestrian, vehicle"
        batch = schema["components"]["schemas"]["BatchSearchRequest"]["properties"]
        assert (batch["queries"]["maxItems"], batch["queries"]["items"]["maxLength"], batch["k"]["maximum"], batch["k"]["default"]) == (max_queries, max_chars, max_k, default_k)
        assert schema["paths"]["/api/thumbnails/{image_id}"]["get"]["summary"] == f"A JPEG thumbnail (at most {side} px a side)"
        assert schema["paths"]["/api/search"]["post"]["responses"]["503"]["description"] == f"the search did not finish within {timeout} s"


def test_serve_settings_load_neither_fastapi_nor_pydantic():
    # the serve command builds its settings (and the CLI its --help) before anything heavy loads
    code = ("import sys\nfrom traffic_retrieval.config import build_config\nfrom traffic_retrieval.serve import server, settings\n"
            "build_config(settings.ServeSettings, None, {'precision': 'fp32', 'device': 'cuda:1', 'log_level': 'debug'})\n"
            "print(sorted({name.split('.')[0] for name in sys.modules} & {'fastapi', 'pydantic', 'starlette', 'uvicorn', 'torch'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", (done.stdout[-500:], done.stderr[-2000:])


def test_serve_settings_take_the_shared_option_types():
    from traffic_retrieval.config import build_config

    settings = build_config(ServeSettings, None, {"precision": "bf16", "device": "cuda:0", "log_level": "warning"})
    assert (settings.precision, settings.device, settings.log_level) == ("bf16", "cuda:0", "warning")
    for key, value in (("precision", "fp64"), ("device", "gpu"), ("log_level", "loud")):
        with pytest.raises(TrafficRetrievalError, match=key.replace("_", "-") if key == "device" else key):
            build_config(ServeSettings, None, {key: value})


# -- search by an example image, combined queries (docs/queries.md) -------------------------------
def gallery_ids(index) -> dict[str, list[int]]:
    import sqlite3

    with sqlite3.connect(index / "meta.sqlite") as db:
        rows = db.execute("SELECT id, category FROM images WHERE state = 'indexed' ORDER BY id").fetchall()
    return {category: [image_id for image_id, c in rows if c == category] for category in ("pedestrian", "vehicle")}


def image_bytes(image: Image.Image, format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    import struct
    import zlib

    data = bytearray(image_bytes(Image.new("RGB", (8, 8)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the IHDR chunk's CRC
    return bytes(data)


HIT_KEYS = {"rank", "id", "name", "score", "category", "label", "label_text", "image_url", "thumbnail_url"}


def test_more_like_this_returns_the_image_first_in_the_search_shape(client, retriever, index):
    by_category = gallery_ids(index)
    for image_id in by_category["pedestrian"][:3] + by_category["vehicle"][:3]:
        response = client.get(f"/api/similar/{image_id}", params={"k": 5})
        assert response.status_code == 200
        body = response.json()
        assert (body["query"], body["k"], body["category"], body["count"]) == (f"#{image_id}", 5, "all", 5) and body["took_ms"] >= 0
        assert body["results"][0]["id"] == image_id and [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
        assert all(set(hit) == HIT_KEYS and hit["thumbnail_url"] == f"/api/thumbnails/{hit['id']}" for hit in body["results"])
        assert ids(body["results"]) == ids(retriever.search_image(image_id, k=5))
    vehicle = by_category["vehicle"][0]
    body = client.get(f"/api/similar/{vehicle}", params={"k": 100, "category": "vehicle"}).json()
    assert body["count"] == 20 and {r["category"] for r in body["results"]} == {"vehicle"} and body["results"][0]["id"] == vehicle
    body = client.get(f"/api/similar/{vehicle}", params={"k": 100, "category": "pedestrian"}).json()
    assert body["count"] == 30 and vehicle not in ids(body["results"])  # not in the category searched
    assert client.get(f"/api/similar/{vehicle}").json()["k"] == 10
    assert client.get(f"/api/similar/{vehicle}", params={"k": 100, "category": "routed"}).json()["count"] == 50  # no text to route: all


def test_more_like_this_refuses_unknown_ids_and_bad_parameters(client, index):
    import sqlite3

    with sqlite3.connect(index / "meta.sqlite") as db:
        (broken_id,) = db.execute("SELECT id FROM images WHERE name = 'broken.jpg'").fetchone()
        (largest,) = db.execute("SELECT max(id) FROM images").fetchone()
    for image_id in (largest + 1, 10**12, broken_id, 2**63 - 1):
        response = client.get(f"/api/similar/{image_id}")
        assert response.status_code == 404 and response.json()["detail"] == f"no image with id {image_id}"
    for bad in ("abc", "-1", "1.5", str(2**64)):
        assert client.get(f"/api/similar/{bad}").status_code == 422
    for params, reason in (({"k": 0}, "k: Input should be greater than or equal to 1"), ({"k": 101}, "k: Input should be less than or equal to 100"),
                           ({"category": "bus"}, "category: must be one of")):
        response = client.get(f"/api/similar/{gallery_ids(index)['vehicle'][0]}", params=params)
        assert response.status_code == 422 and response.json()["detail"].startswith(reason), response.json()


def test_search_by_uploaded_image(client, retriever, index):
    image_id = gallery_ids(index)["vehicle"][2]
    data = retriever.image_path(image_id).read_bytes()
    response = client.post("/api/search/image", files={"image": ("query.jpg", data, "image/jpeg")}, data={"k": "6", "category": "all"})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["query"], body["k"], body["category"], body["count"]) == ("uploaded image", 6, "all", 6)
    assert all(set(hit) == HIT_KEYS for hit in body["results"])
    expected = retriever.search_image(Image.open(io.BytesIO(data)), k=6)
    assert_same_results(body["results"], expected, retriever.search_image(Image.open(io.BytesIO(data)), k=50))
    png = image_bytes(Image.open(io.BytesIO(data)).convert("RGBA"), "PNG")  # the other formats, with and without transparency
    for name, payload, media_type in (("q.png", png, "image/png"), ("q.bmp", image_bytes(Image.open(io.BytesIO(data)), "BMP"), "image/bmp"),
                                      ("q.webp", image_bytes(Image.open(io.BytesIO(data)), "WEBP"), "image/webp")):
        response = client.post("/api/search/image", files={"image": (name, payload, media_type)}, data={"category": "vehicle"})
        assert response.status_code == 200 and response.json()["count"] == 10, (name, response.json())
        assert {r["category"] for r in response.json()["results"]} == {"vehicle"}
    calls = client.app.state.batcher.calls
    client.post("/api/search/image", files={"image": ("query.jpg", data, "image/jpeg")})
    assert client.app.state.batcher.calls == calls + 1  # the model ran on the search worker, as text searches do


def test_uploads_past_the_limits_are_refused_with_a_reason(client, retriever, index):
    data = retriever.image_path(gallery_ids(index)["vehicle"][0]).read_bytes()
    cases = [
        (("huge.jpg", b"\xff\xd8\xff" + b"x" * 1_000_100, "image/jpeg"), {}, 413, "request body larger than 1000000 bytes"),
        (("bomb.png", png_declaring(60_000, 60_000), "image/png"), {}, 413, "image: over the limit of"),
        (("big.png", png_declaring(6_000, 6_000), "image/png"), {}, 413, "image: 6000 x 6000 pixels is over the limit of 25000000 pixels"),
        (("notes.txt", b"hello, not an image", "text/plain"), {}, 422, "image: not a JPEG, PNG, BMP or WebP image"),
        (("empty.jpg", b"", "image/jpeg"), {}, 422, "image: the file is empty"),
        (("cut.jpg", data[:len(data) // 2], "image/jpeg"), {}, 422, "the uploaded image: cannot read image"),
        (("anim.gif", image_bytes(Image.new("RGB", (8, 8)), "GIF"), "image/gif"), {}, 422, "image: not a JPEG, PNG, BMP or WebP image"),
        (("page.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"), {}, 422, "image: not a JPEG"),
        (("q.jpg", data, "image/jpeg"), {"k": "0"}, 422, "k: Input should be greater than or equal to 1"),
        (("q.jpg", data, "image/jpeg"), {"k": "101"}, 422, "k: Input should be less than or equal to 100"),
        (("q.jpg", data, "image/jpeg"), {"k": "ten"}, 422, "k: Input should be a valid integer"),
        (("q.jpg", data, "image/jpeg"), {"category": "bus"}, 422, "category: must be one of"),
        (("q.jpg", data, "image/jpeg"), {"limit": "3"}, 422, "limit: Extra inputs are not permitted"),
        (("q.jpg", data, "image/jpeg"), {"k": "1", "category": "all", "limit": "3"}, 400, "Too many fields"),
    ]
    for upload, fields, status, reason in cases:
        response = client.post("/api/search/image", files={"image": upload}, data=fields)
        detail = response.json()["detail"]
        assert response.status_code == status and detail.startswith(reason) and "\n" not in detail, (upload[0], fields, response.status_code, detail)
        assert "/" not in detail.replace("image/", "") or status == 400  # no server paths in reasons
    response = client.post("/api/search/image", files={"picture": ("q.jpg", data, "image/jpeg")})
    assert response.status_code == 422 and response.json()["detail"].startswith("image: Field required")
    response = client.post("/api/search/image", files=[("image", ("a.jpg", data, "image/jpeg")), ("image", ("b.jpg", data, "image/jpeg"))])
    assert response.status_code == 400 and "Too many files" in response.json()["detail"]
    for content, media_type in ((data, "image/jpeg"), (b'{"k": 3}', "application/json")):  # the bytes alone, or JSON: not a form
        response = client.post("/api/search/image", content=content, headers={"Content-Type": media_type})
        assert response.status_code == 415 and "multipart/form-data" in response.json()["detail"]
    response = client.post("/api/search/image", content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert response.status_code in (400, 422)
    assert client.get("/api/health").json()["status"] == "ok"


def test_upload_pixel_limit_follows_the_loaders_limit(client, retriever, index, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the project's decompression-bomb limit, lowered: a 12 x 12 image is over it
    response = client.post("/api/search/image", files={"image": ("q.png", image_bytes(Image.new("RGB", (12, 12)), "PNG"), "image/png")})
    assert response.status_code == 413 and response.json()["detail"] == "image: 12 x 12 pixels is over the limit of 100 pixels"
    response = client.post("/api/search/image", files={"image": ("q.png", image_bytes(Image.new("RGB", (20, 20)), "PNG"), "image/png")})
    assert response.status_code == 413 and response.json()["detail"] == "image: over the limit of 100 pixels"  # PIL's own refusal, past twice it


def test_combined_queries_over_http(client, retriever, index):
    image_id = gallery_ids(index)["pedestrian"][1]
    expression = f'0.5*"{MAN}" + 2*#{image_id} - "{AUDI}"'
    response = client.post("/api/search/combined", json={"expression": expression, "k": 5, "category": "pedestrian"})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["query"], body["k"], body["category"], body["count"]) == (expression, 5, "pedestrian", 5)
    assert all(set(hit) == HIT_KEYS and hit["category"] == "pedestrian" for hit in body["results"])
    assert body["terms"] == [{"kind": "text", "value": MAN, "weight": 0.5, "column": 1},
                             {"kind": "id", "value": image_id, "weight": 2.0, "column": expression.index(" + 2*#") + 2},
                             {"kind": "text", "value": AUDI, "weight": -1.0, "column": expression.index(' - "') + 2}]
    expected = retriever.search_combined(expression, k=5, category="pedestrian")
    assert_same_results(body["results"], expected, retriever.search_combined(expression, k=50, category="pedestrian"))
    everything = client.post("/api/search/combined", json={"expression": f"#{image_id}", "k": 100}).json()  # defaults: all categories
    assert everything["category"] == "all" and everything["count"] == 50


@pytest.mark.parametrize("body, status, reason", [
    ({"expression": '"a red car" + /etc/passwd.jpg'}, 422, "combined query, column 15: image file paths ('/etc/passwd.jpg') are not accepted here"),
    ({"expression": '"a" + ../gallery/x.png'}, 422, "combined query, column 7: image file paths"),
    ({"expression": '"a red car" + #999999'}, 404, "no image with id 999999"),
    ({"expression": '"a red car" - "a red car"'}, 422, "combined query: the terms cancel out"),
    ({"expression": 'red car'}, 422, "combined query, column 1: 'red' is not a term"),
    ({"expression": " + ".join(['"a"'] * 9)}, 422, "combined query, column 47: more than 8 terms"),
    ({"expression": '"' + "x" * 1000 + '"'}, 422, "expression: String should have at most 1000 characters"),
    ({"expression": ""}, 422, "expression: String should have at least 1 character"),
    ({"expression": '"a"', "k": 101}, 422, "k: Input should be less than or equal to 100"),
    ({"expression": '"a"', "k": "5"}, 422, "k: Input should be a valid integer"),
    ({"expression": '"a"', "category": "bus"}, 422, "category: must be one of"),
    ({"expression": '"a"', "file": "/etc/passwd"}, 422, "file: Extra inputs are not permitted"),
    ({"query": '"a"'}, 422, "expression: Field required"),
])
def test_combined_query_refusals(client, body, status, reason):
    response = client.post("/api/search/combined", json=body)
    assert response.status_code == status and response.json()["detail"].startswith(reason), response.json()


def test_image_and_text_searches_share_the_search_worker_under_load(live_server, retriever, index):
    base_url, app = live_server
    by_category = gallery_ids(index)
    image_ids = by_category["pedestrian"][:6] + by_category["vehicle"][:6]
    data = retriever.image_path(image_ids[0]).read_bytes()
    start = threading.Barrier(len(image_ids) + 6)
    calls_before = app.state.batcher.calls

    def ask(request):
        kind, value = request
        with httpx.Client(base_url=base_url, timeout=30) as http:
            start.wait()
            if kind == "similar":
                return request, http.get(f"/api/similar/{value}", params={"k": 4})
            if kind == "upload":
                return request, http.post("/api/search/image", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "4"})
            return request, http.get("/api/search", params={"q": value, "k": 4, "category": "all"})

    requests = [("similar", image_id) for image_id in image_ids] + [("upload", None)] * 2 + [("text", text) for text in (AUDI, MAN, "a red truck", "a child")]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(ask, requests))
    for (kind, value), response in answers:
        assert response.status_code == 200 and response.json()["count"] == 4, (kind, value, response.text[:200])
        if kind == "similar":
            assert response.json()["results"][0]["id"] == value
    assert app.state.batcher.calls - calls_before == len(image_ids) + 2


def test_new_routes_are_documented_with_their_limits(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/similar/{image_id}", "/api/search/image", "/api/search/combined"} <= set(spec["paths"])
    similar = {p["name"]: p for p in spec["paths"]["/api/similar/{image_id}"]["get"]["parameters"]}
    assert (similar["k"]["schema"]["maximum"], similar["k"]["schema"]["default"], similar["category"]["schema"]["default"]) == (100, 10, "all")
    form = spec["paths"]["/api/search/image"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["image"] and form["properties"]["image"]["format"] == "binary" and form["properties"]["k"]["maximum"] == 100
    assert "at most 1000000 bytes" in form["properties"]["image"]["description"]
    combined = spec["components"]["schemas"]["CombinedSearchRequest"]["properties"]
    assert combined["expression"]["maxLength"] == 1000 and combined["k"]["maximum"] == 100
    assert client.get("/api/info").json()["image_limits"] == {"max_body_bytes": 1_000_000, "max_pixels": 25_000_000, "formats": ["JPEG", "PNG", "BMP", "WebP"]}
