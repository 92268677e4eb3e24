"""``GET /metrics``: the service's counters in Prometheus' text format (version 0.0.4).

- ``traffic_retrieval_http_requests_total{method, route, status}``: answered requests,
  by route *template* (``/api/images/{image_id}``, never one label per id; a path no
  route matches is ``route="unmatched"``, a method outside the usual ones ``method="OTHER"``),
  refusals by the Host allow-list and the body guard included;
- ``traffic_retrieval_http_request_duration_seconds{route}``: a latency histogram;
- ``traffic_retrieval_http_requests_in_progress``;
- ``traffic_retrieval_search_batch_size``: a histogram of the queries encoded together
  per ``search_batch`` call, read from the batcher's counters (``batches``,
  ``batched_queries``, ``recent_batch_sizes``) at scrape time and after each search:
  exact unless more than ``recent_batch_sizes.maxlen`` batches ran between two looks
  (then those beyond it count at their mean size);
- ``traffic_retrieval_search_queue_depth`` / ``_queue_capacity``, ``traffic_retrieval_search_worker_up``,
  ``traffic_retrieval_search_single_calls_total`` (image and combined searches, run alone);
- ``traffic_retrieval_thumbnail_cache_{hits,misses}_total``, ``traffic_retrieval_index_images``.

Each app has its own ``CollectorRegistry`` (tests make many apps; the global registry
would mix them). ``install_metrics(app)`` adds the middleware (outermost: it sees the
answers of the Host allow-list and body guard too) and the route; the route is behind
the same Host allow-list as the rest, so a scraper must use an allowed name
(``--allowed-host``).
"""

from __future__ import annotations

import threading
import time

from ..errors import TrafficRetrievalError

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.exposition import generate_latest
    from prometheus_client.utils import floatToGoString
except ImportError:
    raise TrafficRetrievalError("the search service's /metrics needs prometheus_client, which is not installed: "
                                "pip install 'traffic-retrieval[serve]'") from None

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SEARCH_ROUTES = frozenset({"/api/search"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class BatchSizes:
    """A cumulative histogram of the batcher's batch sizes, kept in step with its counters.

    The batcher's worker records a batch as ``batches += 1; batched_queries += size;
    recent_batch_sizes.append(size)``; a look that catches it in between sees totals that
    disagree with the deque (their sum differs), and looks again.
    """

    def __init__(self, batcher):
        self.batcher = batcher
        bounds = {1, batcher.max_batch}
        bound = 2
        while bound < batcher.max_batch:
            bounds.add(bound)
            bound *= 2
        self.bounds = sorted(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket (not cumulative), the last one +Inf
        self.count = 0
        self.sum = 0
        self._lock = threading.Lock()

    def _add(self, size: float, times: int = 1) -> None:
        position = next((i for i, bound in enumerate(self.bounds) if size <= bound), len(self.bounds))
        self.counts[position] += times

    def sync(self) -> None:
        batcher = self.batcher
        with self._lock:
            for _attempt in range(10):
                total, queries = batcher.batches, batcher.batched_queries
                new = total - self.count
                if new <= 0:
                    return
                recent = batcher.recent_batch_sizes
                sizes = tuple(recent)
                if (batcher.batches, batcher.batched_queries) != (total, queries):
                    continue  # recorded meanwhile
                added = queries - self.sum
                if new <= len(sizes):
                    window = sizes[len(sizes) - new:]
                    if sum(window) != added:  # a batch counted whose size is not in the deque yet
                        time.sleep(0)
                        continue
                    for size in window:
                        self._add(size)
                else:  # more batches than the deque keeps since the last look
                    if recent.maxlen is None or len(sizes) < recent.maxlen:
                        time.sleep(0)
                        continue  # not full, so not lost: one is being recorded
                    lost, lost_sum = new - len(sizes), added - sum(sizes)
                    for size in sizes:
                        self._add(size)
                    if lost > 0:
                        self._add(max(lost_sum, 0) / lost, lost)
                self.count, self.sum = total, queries
                return

    def family(self) -> HistogramMetricFamily:
        self.sync()
        with self._lock:
            cumulative, buckets = 0, []
            for bound, count in zip([*self.bounds, float("inf")], self.counts):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            return HistogramMetricFamily("traffic_retrieval_search_batch_size", "Queries encoded together in one search_batch call "
                                         "(micro-batching).", buckets=buckets, sum_value=self.sum)


class ServiceCollector:
    """What the service's parts count themselves, read at scrape time."""

    def __init__(self, service, batch_sizes: BatchSizes):
        self.service = service
        self.batch_sizes = batch_sizes

    def collect(self):
        batcher, thumbnails = self.service.batcher, self.service.thumbnails.stats()
        yield self.batch_sizes.family()
        yield GaugeMetricFamily("traffic_retrieval_search_queue_depth", "Queries waiting for the model.", value=batcher.queued)
        yield GaugeMetricFamily("traffic_retrieval_search_queue_capacity", "Queries that may wait at most (max_queued_queries); "
                                "past it a search answers 503.", value=batcher.max_queued)
        yield GaugeMetricFamily("traffic_retrieval_search_worker_up", "1 while the search worker takes requests.", value=int(batcher.alive))
        calls = getattr(batcher, "calls", None)  # searches by image and combined queries: run alone, not batched
        if isinstance(calls, int):
            yield CounterMetricFamily("traffic_retrieval_search_single_calls", "Model calls the search worker ran alone "
                                      "(searches by an example image, combined queries).", value=calls)
        yield CounterMetricFamily("traffic_retrieval_thumbnail_cache_hits", "Thumbnails served from memory.", value=thumbnails["hits"])
        yield CounterMetricFamily("traffic_retrieval_thumbnail_cache_misses", "Thumbnails decoded.", value=thumbnails["misses"])
        yield GaugeMetricFamily("traffic_retrieval_index_images", "Images in the index.", value=self.service.info["count"])


class Metrics:
    """One app's registry and the instruments its middleware updates."""

    def __init__(self, service):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("traffic_retrieval_http_requests", "HTTP requests answered, by method, route template and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("traffic_retrieval_http_request_duration_seconds", "Time from a request's arrival to the end of its "
                                 "answer, by route template.", ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_progress = Gauge("traffic_retrieval_http_requests_in_progress", "HTTP requests being answered.", registry=self.registry)
        self.batch_sizes = BatchSizes(service.batcher)
        self.registry.register(ServiceCollector(service, self.batch_sizes))
        self._children: dict[tuple, tuple] = {}  # (method, route, status) -> (counter, histogram): no label lookup per request

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(method, route, str(status)), self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)
        if route in SEARCH_ROUTES:
            self.batch_sizes.sync()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_templates(routes, prefix: str = "") -> list[str]:
    """The path templates of ``routes``, in matching order (an included router's too)."""
    found = []
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI 0.16x keeps an included router as one entry
        if inner is not None:
            found += route_templates(inner.routes, prefix + (getattr(getattr(route, "include_context", None), "prefix", "") or ""))
        elif isinstance(getattr(route, "path_format", None), str) and not hasattr(route, "routes"):  # a route, not a Mount
            found.append(prefix + route.path_format)
    return found


class RouteTemplates:
    """The template a request's path falls under: the route that answered it, or for a request
    answered before routing (Host allow-list, body guard) the first template its path matches."""

    def __init__(self, router):
        self.router = router
        self._patterns = None

    def __call__(self, scope) -> str:
        route = scope.get("route")  # set by Starlette/FastAPI when a route matched (also for a 405)
        if route is not None:
            return getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED
        if self._patterns is None:  # the routes are all added once the app serves
            from starlette.routing import compile_path

            self._patterns = [(compile_path(template)[0], template) for template in route_templates(self.router.routes)]
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        return next((template for pattern, template in self._patterns if pattern.match(path)), UNMATCHED)


class MetricsMiddleware:
    """Times every HTTP request and counts its answer (plain ASGI, as ``GuardMiddleware``)."""

    def __init__(self, app, metrics: Metrics, router):
        self.app = app
        self.metrics = metrics
        self.route_template = RouteTemplates(router)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # an exception that escapes becomes ServerErrorMiddleware's 500

        async def send_counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics = self.metrics
        metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_counted)
        finally:
            metrics.in_progress.dec()
            method = scope.get("method", "")
            metrics.observe(method if method in METHODS else "OTHER", self.route_template(scope), status,
                            time.perf_counter() - started)


def install_metrics(app) -> Metrics:
    """Count ``app``'s requests and serve ``GET /metrics``; call after ``app.state.service`` is set."""
    from fastapi.responses import Response

    metrics = Metrics(app.state.service)

    async def scrape() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    app.add_api_route("/metrics", scrape, methods=["GET"], include_in_schema=False)
    app.add_middleware(MetricsMiddleware, metrics=metrics, router=app.router)  # added last: the outermost
    app.state.metrics = metrics
    return metrics
