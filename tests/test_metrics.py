"""``GET /metrics``: Prometheus text format 0.0.4 from a per-app registry; request counts
and latencies by route template (unknown paths grouped), the batcher's batch sizes and
queue depth; and the batch-size histogram's bookkeeping against a batcher caught mid-record."""

import sys
from collections import deque
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi", reason="fastapi is not installed (pip install -e '.[serve]')")
pytest.importorskip("httpx", reason="httpx is not installed (pip install -e '.[dev]')")
pytest.importorskip("prometheus_client", reason="prometheus_client is not installed (pip install -e '.[serve]')")
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tiny_gallery import build_tiny_index, make_tiny_gallery  # noqa: E402
from traffic_retrieval.errors import TrafficRetrievalError  # noqa: E402
from traffic_retrieval.serve.app import ServeSettings, create_app  # noqa: E402
from traffic_retrieval.serve.metrics import LATENCY_BUCKETS, BatchSizes  # noqa: E402

AUDI = "This is a white Audi."
REQUESTS = "traffic_retrieval_http_requests"
LATENCY = "traffic_retrieval_http_request_duration_seconds"


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """The tiny index the shared ``retriever`` fixture (tests/conftest.py) opens."""
    root = tmp_path_factory.mktemp("metrics")
    return build_tiny_index(make_tiny_gallery(root, seed=3, test_pedestrians=6, test_vehicles=4), root / "INDEX")


@pytest.fixture
def client(retriever):
    """A fresh app per test: each has its own registry, so counts start at zero."""
    with TestClient(create_app(retriever, ServeSettings(max_queued_queries=77)), base_url="http://localhost") as test_client:
        yield test_client


def scrape(client) -> dict:
    """name -> metric family of one /metrics answer (checked to parse as the text format)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def value(families: dict, family: str, sample: str, **labels) -> float:
    found = [s.value for s in families[family].samples if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found)


def label_values(families: dict, family: str, label: str) -> set[str]:
    return {s.labels[label] for s in families[family].samples if label in s.labels}


def test_counts_grow_by_route_template_method_and_status(client):
    before = scrape(client)
    assert value(before, REQUESTS, f"{REQUESTS}_total", route="/api/search") == 0
    for _ in range(3):
        assert client.get("/api/search", params={"q": AUDI, "k": 2}).status_code == 200
    assert client.post("/api/search", json={"queries": [AUDI, "A red Truck."], "k": 2}).status_code == 200
    assert client.get("/api/search", params={"q": AUDI, "category": "nonsense"}).status_code == 422
    ids = [hit["id"] for hit in client.get("/api/search", params={"q": AUDI, "k": 3}).json()["results"]]
    for image_id in ids:
        assert client.get(f"/api/images/{image_id}").status_code == 200
    assert client.get("/api/images/999999").status_code == 404
    assert client.get("/api/health").status_code == 200

    after = scrape(client)
    total = f"{REQUESTS}_total"
    assert value(after, REQUESTS, total, method="GET", route="/api/search", status="200") == 4
    assert value(after, REQUESTS, total, method="POST", route="/api/search", status="200") == 1
    assert value(after, REQUESTS, total, method="GET", route="/api/search", status="422") == 1
    assert value(after, REQUESTS, total, route="/api/images/{image_id}", status="200") == len(ids)
    assert value(after, REQUESTS, total, route="/api/images/{image_id}", status="404") == 1
    assert value(after, REQUESTS, total, route="/api/health", status="200") == 1
    assert value(after, REQUESTS, total, route="/metrics", status="200") == 1  # the first scrape
    # labels are templates: no id, no query text
    routes = label_values(after, REQUESTS, "route")
    assert not any(any(char.isdigit() for char in route) for route in routes), routes
    assert {"/api/search", "/api/images/{image_id}", "/api/health", "/metrics"} <= routes


def test_latency_histogram_has_the_buckets_and_counts_each_request(client):
    for _ in range(2):
        client.get("/api/search", params={"q": AUDI, "k": 1})
    families = scrape(client)
    assert families[LATENCY].type == "histogram"
    buckets = {s.labels["le"]: s.value for s in families[LATENCY].samples if s.name == f"{LATENCY}_bucket" and s.labels["route"] == "/api/search"}
    assert set(buckets) == {*(str(float(b)) for b in LATENCY_BUCKETS), "+Inf"}
    assert buckets["+Inf"] == 2 == value(families, LATENCY, f"{LATENCY}_count", route="/api/search")
    ordered = [buckets[key] for key in sorted(buckets, key=float)]
    assert ordered == sorted(ordered)  # cumulative
    assert value(families, LATENCY, f"{LATENCY}_sum", route="/api/search") > 0


def test_unknown_paths_foreign_hosts_and_odd_methods_stay_bounded(client):
    for path in ("/nope", "/nope/1", "/wp-admin/setup.php", "/api/images/abc/def"):
        assert client.get(path).status_code == 404
    assert client.get("/api/search", params={"q": AUDI}, headers={"Host": "evil.example"}).status_code == 400  # refused before routing
    assert client.request("BREW", "/api/health").status_code == 405
    families = scrape(client)
    total = f"{REQUESTS}_total"
    assert value(families, REQUESTS, total, route="unmatched", status="404") == 4
    assert value(families, REQUESTS, total, route="/api/search", status="400") == 1  # the template of the path it asked for
    assert value(families, REQUESTS, total, method="OTHER", route="/api/health", status="405") == 1
    assert not {"/nope", "/nope/1", "/wp-admin/setup.php"} & label_values(families, REQUESTS, "route")
    assert label_values(families, REQUESTS, "method") <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"}


def test_batcher_batch_sizes_and_queue(client):
    client.post("/api/search", json={"queries": [AUDI, "A black Sedan.", "A man in a long coat."], "k": 1})
    client.get("/api/search", params={"q": AUDI, "k": 1})
    batcher = client.app.state.batcher
    families = scrape(client)
    name = "traffic_retrieval_search_batch_size"
    assert families[name].type == "histogram"
    assert value(families, name, f"{name}_count") == batcher.batches >= 2
    assert value(families, name, f"{name}_sum") == batcher.batched_queries == 4
    buckets = {s.labels["le"]: s.value for s in families[name].samples if s.name == f"{name}_bucket"}
    assert buckets["+Inf"] == batcher.batches
    assert buckets["1.0"] == sum(1 for size in batcher.recent_batch_sizes if size == 1)
    assert str(float(batcher.max_batch)) in buckets
    assert value(families, "traffic_retrieval_search_queue_depth", "traffic_retrieval_search_queue_depth") == 0
    assert value(families, "traffic_retrieval_search_queue_capacity", "traffic_retrieval_search_queue_capacity") == 77
    assert value(families, "traffic_retrieval_search_worker_up", "traffic_retrieval_search_worker_up") == 1
    assert value(families, "traffic_retrieval_index_images", "traffic_retrieval_index_images") == client.app.state.retriever.info()["count"]
    assert families["traffic_retrieval_thumbnail_cache_misses"].type == "counter"


def test_each_app_counts_its_own_requests(retriever, client):
    client.get("/api/search", params={"q": AUDI, "k": 1})
    with TestClient(create_app(retriever, ServeSettings()), base_url="http://localhost") as other:
        families = scrape(other)
    assert value(families, REQUESTS, f"{REQUESTS}_total", route="/api/search") == 0
    assert value(scrape(client), REQUESTS, f"{REQUESTS}_total", route="/api/search") == 1


def test_metrics_obey_the_host_allow_list_and_stay_out_of_the_api_schema(client):
    assert client.get("/metrics", headers={"Host": "evil.example"}).status_code == 400
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


# -- the batch-size histogram's bookkeeping ---------------------------------------------
class FakeBatcher(SimpleNamespace):
    def record(self, size: int, append: bool = True) -> None:
        self.batches += 1
        self.batched_queries += size
        if append:
            self.recent_batch_sizes.append(size)


def fake_batcher(maxlen: int = 1000) -> FakeBatcher:
    return FakeBatcher(max_batch=8, batches=0, batched_queries=0, recent_batch_sizes=deque(maxlen=maxlen))


def cumulative(histogram: BatchSizes) -> dict[str, float]:
    family = histogram.family()
    return {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}


def test_batch_sizes_follow_the_batcher():
    batcher = fake_batcher()
    histogram = BatchSizes(batcher)
    assert histogram.bounds == [1, 2, 4, 8]
    for size in (1, 1, 3, 8):
        batcher.record(size)
    assert cumulative(histogram) == {"1.0": 2, "2.0": 2, "4.0": 3, "8.0": 4, "+Inf": 4}
    batcher.record(2)
    assert cumulative(histogram)["2.0"] == 3 and histogram.count == 5 and histogram.sum == 15


def test_a_batch_caught_mid_record_is_not_miscounted():
    batcher = fake_batcher(maxlen=4)
    histogram = BatchSizes(batcher)
    for size in (1, 2, 4, 8):
        batcher.record(size)
    histogram.sync()
    batcher.record(2, append=False)  # counted, its size not yet in the deque (full: same length)
    histogram.sync()
    assert (histogram.count, histogram.sum) == (4, 15)  # waits for it rather than counting the last size seen (8)
    batcher.recent_batch_sizes.append(2)
    assert cumulative(histogram) == {"1.0": 1, "2.0": 3, "4.0": 4, "8.0": 5, "+Inf": 5}
    small = BatchSizes(fake_batcher(maxlen=10))  # a deque not full yet: fewer sizes than batches
    small.batcher.record(1)
    small.batcher.record(4, append=False)
    small.sync()
    assert (small.count, small.sum) == (0, 0)


def test_batches_beyond_the_deque_keep_count_and_sum_exact():
    batcher = fake_batcher(maxlen=3)
    histogram = BatchSizes(batcher)
    for size in (2, 2, 2, 2, 1, 1, 1):  # 7 batches, the deque keeps the last 3
        batcher.record(size)
    buckets = cumulative(histogram)
    assert (histogram.count, histogram.sum) == (7, 11)
    assert buckets["+Inf"] == 7 and buckets["1.0"] == 3 and buckets["2.0"] == 7  # the 4 unseen at their mean size, 2


def test_without_prometheus_client_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails as if not installed
    monkeypatch.delitem(sys.modules, "traffic_retrieval.serve.metrics")
    with pytest.raises(TrafficRetrievalError, match=r"pip install 'traffic-retrieval\[serve\]'"):
        import traffic_retrieval.serve.metrics  # noqa: F401
