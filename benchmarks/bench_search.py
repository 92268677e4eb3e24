"""Search latency (p50/p99, one query at a time) and recall@10 against exact search,
for the gallery index's FAISS layer on random L2-normalised vectors.

    python benchmarks/bench_search.py --sizes 100000 1000000 [--dim 512] [--queries 500]

Queries are probe queries (a gallery vector pulled to cosine 0.3 and re-normalised, the
distance of a text query from its best images); pure random queries against pure random
vectors have no true neighbours to find. Writes benchmarks/results/bench_search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def measure(size: int, dim: int, queries: int, kind: str, seed: int) -> dict:
    import numpy as np

    from traffic_retrieval.index.faiss_index import AnnConfig, build, exact_topk, probe_queries, recall_at_k, search

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((size, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    started = time.perf_counter()
    ann = build(vectors, np.arange(size), AnnConfig(kind=kind, flat_max=0, recall_queries=400, seed=seed))
    build_seconds = time.perf_counter() - started
    probes = probe_queries(vectors, queries, seed=seed + 1)
    latencies = []
    found = []
    for query in probes:
        started = time.perf_counter()
        scores, _ = search(ann, query[None, :], 10)
        latencies.append((time.perf_counter() - started) * 1000)
        found.append(scores[0])
    exact = exact_topk(probes, vectors, 10)[0]
    latencies.sort()
    return {
        "size": size, "dim": dim, "kind": ann.kind, "search_param": ann.search_param, "build_seconds": round(build_seconds, 1),
        "p50_ms": round(latencies[len(latencies) // 2], 3), "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 3),
        "recall@10": round(recall_at_k(np.stack(found), exact, 10), 4), "queries": len(probes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--kind", default="hnsw", choices=("hnsw", "ivf"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_search.json")
    args = parser.parse_args()
    results = []
    for size in args.sizes:
        results.append(measure(size, args.dim, args.queries, args.kind, args.seed))
        print(json.dumps(results[-1]), flush=True)
    report = {"benchmark": "bench_search", "goal": "1M vectors: p50 <= 5 ms with recall@10 >= 0.95 against exact",
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}, "results": results}
    from traffic_retrieval.io import atomic_write_json

    atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
