"""Load on the search service: 8 concurrent clients, 1000 searches, a 10k-image index.

The index: 500 synthetic test-split images (300 pedestrians, 200 vehicles) linked
under 10,000 distinct file names (``g00000_<name>``; symlinks, copies where links
fail) with their labels, encoded by a tiny randomly initialised TR-Tiny-RN. Made
once in the cache folder and reused. Generating 10,000 synthetic images would
take far longer and change nothing the server does: it searches 10,000 vectors
and serves 10,000 files by id either way (duplicate pictures only mean duplicate
scores).

The server: ``traffic-retrieval serve`` (the ``serve`` command's own code path)
in a subprocess on 127.0.0.1, so clients and server do not share a GIL. Clients:
threads, each with its own keep-alive ``httpx.Client``, take the next search from
a shared counter until 1000 are done; queries cycle through the dataset's
test_text.txt, k=10, categories routed. Reported: errors (must be 0), latency
p50/p90/p99/max measured by the clients, throughput, and the server's
micro-batching counters. Three server settings, alternating when repeated:
micro-batching as by default (up to 32 queries, no waiting window), with a 2 ms
window (``--batch-wait-ms 2``), and off (``--batch-size 1``).

    python benchmarks/bench_serve.py            # writes benchmarks/results/serve_load.json
    python benchmarks/bench_serve.py --quick    # smoke run: 1,000-image index, 200 searches
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402



def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="distinct file names in the gallery")
    parser.add_argument("--sources", type=int, default=500, help="synthetic images they link to (60%% pedestrians)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=40, help="searches before timing (not counted)")
    parser.add_argument("--repetitions", type=int, default=1, help="rounds of all variants, interleaved")
    parser.add_argument("--variant", action="append", metavar="NAME=BATCH_SIZE/WAIT_MS",
                        help="a server setting to measure (repeatable; default: batched=32/ (the default wait), batched_wait_2ms=32/2, unbatched=1/0)")
    parser.add_argument("--cache-dir", type=Path, default=_common.DEFAULT_CACHE_DIR)
    parser.add_argument("--results-dir", type=Path, default=None, help=_common.RESULTS_DIR_HELP)
    parser.add_argument("--name", default=None, help="result file name (default serve_load, serve_load_quick with --quick)")
    parser.add_argument("--wait-quiet", type=float, default=60, help="first wait up to this many seconds for other processes to leave the CPUs")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.requests, args.warmup, args.wait_quiet = 1_000, 200, 10, 0
    args.name = args.name or ("serve_load_quick" if args.quick else "serve_load")
    args.results_dir = _common.results_dir_for(args.results_dir, args.quick)
    args.variants = {}
    for text in args.variant or ["batched=32/", "batched_wait_2ms=32/2", "unbatched=1/0"]:
        name, _, setting = text.partition("=")
        size, _, wait = setting.partition("/")
        args.variants[name] = (int(size), float(wait) if wait else None)
    return args


# -- the index ---------------------------------------------------------------------------------
def build_gallery_index(args) -> tuple[Path, Path, dict]:
    """(index folder, dataset, build info): linked gallery, labels, tiny checkpoint, index; reused when complete."""
    import torch

    from traffic_retrieval.commands.index import IndexConfig
    from traffic_retrieval.commands.index import run as build_index
    from traffic_retrieval.io import atomic_torch_save, atomic_write_text
    from traffic_retrieval.model.factory import checkpoint_payload, create_model

    pedestrians = round(args.sources * 0.6)
    data = _common.synthetic_dataset(args.cache_dir, seed=0, train_pedestrians=4, train_vehicles=4, val_pedestrians=0, val_vehicles=0,
                                     test_pedestrians=pedestrians, test_vehicles=args.sources - pedestrians, workers=2)
    root = args.cache_dir / f"serve-{args.images}-from-{args.sources}"
    index = root / "INDEX"
    done = root / "build_report.json"
    if done.is_file():
        return index, data, json.loads(done.read_text()) | {"reused": True}
    shutil.rmtree(root, ignore_errors=True)
    gallery = root / "gallery"
    gallery.mkdir(parents=True)
    sources = sorted((data / "test" / "test_images").iterdir())
    labels = {line.split("$", 1)[0]: line.split("$", 1)[1] for line in (data / "ground_truth" / "test_label.txt").read_text(encoding="utf-8").splitlines() if line}
    lines = []
    for number in range(args.images):
        source = sources[number % len(sources)]
        name = f"g{number:05d}_{source.name}"
        try:
            (gallery / name).symlink_to(source)
        except OSError:
            shutil.copyfile(source, gallery / name)
        label = labels.get(source.name) or labels.get(source.stem)
        if label is not None:
            lines.append(f"{name}${label}")
    atomic_write_text(root / "labels.txt", "\n".join(lines) + "\n")
    torch.manual_seed(0)
    checkpoint = root / "tiny.pt"
    atomic_torch_save(checkpoint_payload(create_model("TR-Tiny-RN")), checkpoint)
    print(f"[bench] indexing {args.images} images ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    report = build_index(IndexConfig(images=gallery, checkpoint=checkpoint, out=index, labels=root / "labels.txt", workers=2, progress=False))
    info = {"count": report["count"], "categories": report["categories"], "kind": report["kind"], "build_seconds": round(time.perf_counter() - started, 1)}
    (done).write_text(json.dumps(info))
    return index, data, info | {"reused": False}


# -- one load run ----------------------------------------------------------------------------
def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-fraction * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def load(base_url: str, queries: list[str], requests: int, clients: int, k: int) -> dict:
    import httpx

    latencies, errors, lock = [], [], threading.Lock()
    counter = iter(range(requests))
    start = threading.Barrier(clients + 1)

    def client():
        with httpx.Client(base_url=base_url, timeout=60) as http:
            start.wait()
            while True:
                with lock:
                    number = next(counter, None)
                if number is None:
                    return
                began = time.perf_counter()
                try:
                    response = http.get("/api/search", params={"q": queries[number % len(queries)], "k": k})
                    ok = response.status_code == 200 and response.json()["count"] == k
                    problem = None if ok else f"HTTP {response.status_code}: {response.text[:200]}"
                except Exception as exc:  # a refused or dropped connection is an error to count, not a crash
                    problem = f"{type(exc).__name__}: {exc}"
                elapsed = (time.perf_counter() - began) * 1000
                with lock:
                    (errors.append(problem) if problem else latencies.append(elapsed))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    with _common.CpuLoad() as cpu:
        start.wait()
        began = time.perf_counter()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": requests, "clients": clients, "errors": len(errors), "error_examples": errors[:5],
        "wall_seconds": round(wall, 3), "throughput_rps": round(requests / wall, 1),
        "latency_ms": {"p50": round(percentile(latencies, 0.50), 2), "p90": round(percentile(latencies, 0.90), 2),
                       "p99": round(percentile(latencies, 0.99), 2), "max": round(latencies[-1], 2) if latencies else None,
                       "mean": round(sum(latencies) / len(latencies), 2) if latencies else None},
        "cpu_load": cpu.result,
    }


def run(index: Path, queries: list[str], args, batch_size: int, wait_ms: float | None) -> dict:
    import httpx

    process, base_url = _common.start_server(index, "--batch-size", str(batch_size), *(["--batch-wait-ms", str(wait_ms)] if wait_ms is not None else []))
    try:
        load(base_url, queries, args.warmup, args.clients, args.k)
        before = httpx.get(base_url + "/api/info", timeout=30).json()["batching"]
        result = load(base_url, queries, args.requests, args.clients, args.k)
        after = httpx.get(base_url + "/api/info", timeout=30).json()["batching"]
    finally:
        _common.stop_server(process)
    batches, answered = after["batches"] - before["batches"], after["queries"] - before["queries"]
    return result | {"server_batching": {"max_batch": batch_size, "max_wait_ms": after["max_wait_ms"], "encoding_calls": batches,
                                         "mean_batch": round(answered / batches, 2) if batches else None, "largest_batch_so_far": after["largest_batch"]}}


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet = _common.wait_for_quiet(args.wait_quiet) if args.wait_quiet else None
    index, data, build = build_gallery_index(args)
    queries = list(dict.fromkeys(line for line in (data / "test" / "test_text.txt").read_text(encoding="utf-8").splitlines() if line.strip()))
    load_before = _common.loadavg()
    rounds = {name: [] for name in args.variants}
    for _ in range(args.repetitions):
        for name, (batch_size, wait_ms) in args.variants.items():
            rounds[name].append(run(index, queries, args, batch_size, wait_ms))
    summary = {name: {"errors": sum(r["errors"] for r in runs), "throughput_rps": _common.median([r["throughput_rps"] for r in runs]),
                      "p50_ms": _common.median([r["latency_ms"]["p50"] for r in runs]), "p99_ms": _common.median([r["latency_ms"]["p99"] for r in runs])}
               for name, runs in rounds.items()}
    payload = {
        "measures": f"{args.clients} concurrent clients (threads, keep-alive httpx) sending {args.requests} GET /api/search (k={args.k}, routed) "
                    "to `traffic-retrieval serve` on 127.0.0.1 in a subprocess; latency measured by the clients",
        "goal": "0 errors",
        "index": {"images": args.images, "distinct_pictures": args.sources, "built_from": "synthetic test-split images linked under distinct names",
                  "model": "TR-Tiny-RN (random weights)", **build},
        "queries": len(queries),
        "machine": _common.machine(),
        "quiet_wait": quiet,
        "loadavg_before": load_before,
        "loadavg_after": _common.loadavg(),
        "summary": summary,
        "runs": rounds,
    }
    path = _common.write_result(args.name, payload, args.results_dir)
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")
    if any(s["errors"] for s in summary.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
