"""Memory of the search service under a flood of unique-word queries and slow clients.

The server: ``traffic-retrieval serve`` (the ``serve`` command's own code path) in a
subprocess on 127.0.0.1 over an index of the synthetic test split (500 images, a
tiny randomly initialised TR-Tiny-RN; the gallery's size does not change what a query
costs in memory). Clients: ``--clients`` threads with keep-alive ``httpx.Client``s and
``--slow-clients`` threads that send each request a few bytes at a time and read the
answer slowly (raw sockets, one connection per request), all taking the next query
from one list until ``--queries`` are answered. Every query is 6 to 10 random
lower-case words, so nearly every word is new to the server: before issue 12, open_clip's
tokenizer remembered each one forever.

Two things grew without bound before issue 12: open_clip's word cache (every new word,
~1 KB per query here), and, far more, the CPU's bf16 kernels, which cache a primitive
for every new input shape: the text tower's input was cut to each batch's longest
query, so random query lengths made new shapes (~300 MiB over 10,000 queries, still
growing). The word cache is now bounded and the cut rounded up to a multiple of 16.

Recorded: the server process's resident memory (``VmRSS`` from ``/proc/PID/status``)
before and after a warm-up, every ``--sample-every`` queries and at the end, with the
growth from the start of the flood and after its first ``--warmup-fraction`` (memory
must stay flat once the caches are full), errors (must be 0), and for scale how many
distinct words the flood held and what open_clip's unbounded word cache would have kept.

    python benchmarks/bench_serve_memory.py           # writes benchmarks/results/serve_memory.json
    python benchmarks/bench_serve_memory.py --quick   # smoke run: 100 images, 300 queries
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import string
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


FLAT_MIB_PER_1000 = 5.0  # allocator noise; the unbounded growth measured before the fix was ~10-60 MiB per 1,000 queries


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000, help="unique-word queries answered in the flood")
    parser.add_argument("--clients", type=int, default=8, help="fast clients (keep-alive)")
    parser.add_argument("--slow-clients", type=int, default=4, help="clients that send and read a few bytes at a time")
    parser.add_argument("--sample-every", type=int, default=1000, help="queries between two memory samples")
    parser.add_argument("--warmup-queries", type=int, default=200, help="ordinary queries before the flood (not counted)")
    parser.add_argument("--warmup-fraction", type=float, default=0.2, help="the part of the flood after which memory must be flat")
    parser.add_argument("--sources", type=int, default=500, help="synthetic test images in the index (60%% pedestrians)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=_common.DEFAULT_CACHE_DIR)
    parser.add_argument("--results-dir", type=Path, default=None, help=_common.RESULTS_DIR_HELP)
    parser.add_argument("--name", default=None, help="result file name (default serve_memory, serve_memory_quick with --quick)")
    parser.add_argument("--wait-quiet", type=float, default=60, help="first wait up to this many seconds for other processes to leave the CPUs")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.queries, args.sample_every, args.clients, args.slow_clients = 300, 100, 4, 2
        args.warmup_queries, args.sources, args.wait_quiet = 20, 100, 0
    args.name = args.name or ("serve_memory_quick" if args.quick else "serve_memory")
    args.results_dir = _common.results_dir_for(args.results_dir, args.quick)
    return args


# -- the index and the server ------------------------------------------------------------------
def build_index(args, out: Path) -> tuple[Path, Path]:
    """(index folder, dataset): the synthetic test split (made once, reused) indexed into ``out``."""
    import torch

    from traffic_retrieval.commands.index import IndexConfig
    from traffic_retrieval.commands.index import run as run_index
    from traffic_retrieval.io import atomic_torch_save
    from traffic_retrieval.model.factory import checkpoint_payload, create_model

    pedestrians = round(args.sources * 0.6)
    data = _common.synthetic_dataset(args.cache_dir, seed=0, train_pedestrians=4, train_vehicles=4, val_pedestrians=0, val_vehicles=0,
                                     test_pedestrians=pedestrians, test_vehicles=args.sources - pedestrians, workers=2)
    torch.manual_seed(0)
    atomic_torch_save(checkpoint_payload(create_model("TR-Tiny-RN")), out / "tiny.pt")
    print(f"[bench] indexing {args.sources} images ...", file=sys.stderr, flush=True)
    run_index(IndexConfig(images=data / "test" / "test_images", checkpoint=out / "tiny.pt", out=out / "INDEX",
                          labels=data / "ground_truth" / "test_label.txt", workers=2, progress=False, device="cpu"))
    return out / "INDEX", data


def memory_mib(pid: int) -> dict:
    """Resident memory now (``VmRSS``) and at its peak (``VmHWM``), in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mib": fields["VmRSS"], "peak_rss_mib": fields["VmHWM"]}


# -- the flood ------------------------------------------------------------------------------------
def unique_word_queries(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(5, 12))) for _ in range(rng.randint(6, 10)))
            for _ in range(count)]


def slow_get(base_url: str, target: str, piece: int = 16, pause_s: float = 0.02) -> int:
    """One request sent ``piece`` bytes at a time and its answer read as slowly; returns the status."""
    host, port = base_url.removeprefix("http://").split(":")
    request = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode("ascii")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        for start in range(0, len(request), piece):
            sock.sendall(request[start:start + piece])
            time.sleep(pause_s)
        answer = b""
        while chunk := sock.recv(256):
            answer += chunk
            time.sleep(pause_s / 4)
    return int(answer.split(b" ", 2)[1])


class Flood:
    """Fast and slow clients answering ``queries``; ``on_answered(count)`` runs after each answer (samples memory)."""

    def __init__(self, base_url: str, queries: list[str], on_answered):
        self.base_url, self.queries, self.on_answered = base_url, queries, on_answered
        self.lock = threading.Lock()
        self.next = 0
        self.answered = 0
        self.by_kind = {"fast": 0, "slow": 0}
        self.errors: list[str] = []

    def take(self) -> int | None:
        with self.lock:
            if self.next >= len(self.queries):
                return None
            self.next += 1
            return self.next - 1

    def done(self, kind: str, problem: str | None) -> None:
        with self.lock:
            self.answered += 1
            self.by_kind[kind] += 1
            if problem:
                self.errors.append(problem)
            count = self.answered
        self.on_answered(count)

    def fast(self) -> None:
        import httpx

        with httpx.Client(base_url=self.base_url, timeout=60) as http:
            while (number := self.take()) is not None:
                try:
                    response = http.get("/api/search", params={"q": self.queries[number], "k": 10})
                    problem = None if response.status_code == 200 and response.json()["count"] == 10 else f"HTTP {response.status_code}: {response.text[:200]}"
                except Exception as exc:  # a refused or dropped connection is an error to count, not a crash
                    problem = f"{type(exc).__name__}: {exc}"
                self.done("fast", problem)

    def slow(self) -> None:
        while (number := self.take()) is not None:
            try:
                status = slow_get(self.base_url, "/api/search?" + urlencode({"q": self.queries[number], "k": 10}))
                problem = None if status == 200 else f"slow client: HTTP {status}"
            except Exception as exc:
                problem = f"slow client: {type(exc).__name__}: {exc}"
            self.done("slow", problem)

    def run(self, clients: int, slow_clients: int) -> float:
        threads = [threading.Thread(target=self.fast) for _ in range(clients)] + [threading.Thread(target=self.slow) for _ in range(slow_clients)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - began


def unbounded_word_cache(queries: list[str]) -> dict:
    """What open_clip's own word cache would hold after these queries: words and an estimate of its bytes."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    for query in queries:
        tokenizer.encode(query)
    cache = tokenizer.cache
    entries = sum(sys.getsizeof(word) + sys.getsizeof(split) for word, split in cache.items()) + sys.getsizeof(cache)
    return {"words": len(cache), "estimated_mib": round(entries / 2**20, 1)}


def linear_slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else None


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet = _common.wait_for_quiet(args.wait_quiet) if args.wait_quiet else None
    workdir = Path(tempfile.mkdtemp(prefix="trb-serve-memory-"))
    try:
        index, data = build_index(args, workdir)
        queries = unique_word_queries(args.queries, args.seed)
        ordinary = [line for line in (data / "test" / "test_text.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
        load_before = _common.loadavg()
        process, base_url = _common.start_server(index, "--device", "cpu")
        try:
            idle = memory_mib(process.pid)
            warm = Flood(base_url, [ordinary[i % len(ordinary)] for i in range(args.warmup_queries)], lambda count: None)
            warm.run(args.clients, 0)
            started = time.perf_counter()
            samples = [{"queries": 0, "seconds": 0.0, **memory_mib(process.pid)}]
            sample_lock = threading.Lock()

            def sample(count: int) -> None:
                if count % args.sample_every == 0 and count < args.queries:
                    with sample_lock:
                        samples.append({"queries": count, "seconds": round(time.perf_counter() - started, 1), **memory_mib(process.pid)})

            flood = Flood(base_url, queries, sample)
            with _common.CpuLoad() as cpu:
                wall = flood.run(args.clients, args.slow_clients)
            samples.append({"queries": flood.answered, "seconds": round(time.perf_counter() - started, 1), **memory_mib(process.pid)})
            samples.sort(key=lambda s: s["queries"])
            import httpx

            info = httpx.get(base_url + "/api/info", timeout=30).json()
            health = httpx.get(base_url + "/api/health", timeout=30).json()
        finally:
            _common.stop_server(process)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    start, end = samples[0]["rss_mib"], samples[-1]["rss_mib"]
    after_warmup = next(s for s in samples if s["queries"] >= args.warmup_fraction * args.queries)
    slope = linear_slope([(s["queries"], s["rss_mib"]) for s in samples if s["queries"] >= after_warmup["queries"]])
    summary = {
        "queries": flood.answered, "errors": len(flood.errors), "fast_answers": flood.by_kind["fast"], "slow_answers": flood.by_kind["slow"],
        "rss_idle_mib": idle["rss_mib"], "rss_start_mib": start, "rss_end_mib": end, "peak_rss_mib": samples[-1]["peak_rss_mib"],
        "growth_mib": round(end - start, 1),
        "growth_after_warmup_mib": round(end - after_warmup["rss_mib"], 1), "after_warmup_from_query": after_warmup["queries"],
        "slope_mib_per_1000_queries_after_warmup": round(slope * 1000, 3) if slope is not None else None,
        "throughput_qps": round(flood.answered / wall, 1),
    }
    summary["flat_after_warmup"] = summary["slope_mib_per_1000_queries_after_warmup"] is not None and summary["slope_mib_per_1000_queries_after_warmup"] < FLAT_MIB_PER_1000
    payload = {
        "measures": f"resident memory of `traffic-retrieval serve` (a subprocess on 127.0.0.1) while {args.clients} keep-alive clients and "
                    f"{args.slow_clients} slow clients (a few bytes at a time, one connection per request) send {args.queries} GET /api/search "
                    "of 6-10 random words each (nearly every word new to the server)",
        "goal": f"0 errors; memory flat after warm-up: under {FLAT_MIB_PER_1000} MiB per 1,000 queries (before issue 12 it grew "
                "with every new word and every new query length)",
        "index": {"images": args.sources, "model": "TR-Tiny-RN (random weights)"},
        "distinct_words": len({word for query in queries for word in query.split()}),
        "unbounded_open_clip_word_cache": unbounded_word_cache(queries),
        "machine": _common.machine(),
        "quiet_wait": quiet,
        "loadavg_before": load_before,
        "loadavg_after": _common.loadavg(),
        "cpu_load": cpu.result,
        "summary": summary,
        "samples": samples,
        "server_batching": info["batching"],
        "health_after": health,
        "error_examples": flood.errors[:5],
    }
    path = _common.write_result(args.name, payload, args.results_dir)
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")
    if flood.errors or (not args.quick and not summary["flat_after_warmup"]):  # a few hundred queries are too few to judge the slope
        sys.exit(1)


if __name__ == "__main__":
    main()
