"""Peak memory of ranking: ``topk_similar`` (blockwise) vs the naive full similarity matrix.

ours:  traffic_retrieval.retrieval.rank.topk_similar(queries, gallery, k) with its
       default blocks (1,024 queries x 65,536 gallery images at a time).
naive: (queries @ gallery.T).topk(k, dim=1): the whole queries x gallery matrix at once.

Each variant runs in a fresh subprocess, which makes the same random L2-normalised
embeddings from the same seed and reports its peak RSS (``resource.getrusage``
ru_maxrss), its RSS before ranking and the ranking time; the parent compares the
top-k indices and scores of both. Repetitions alternate ours, naive, ours, ...
Goal documented in benchmarks/README.md: ours' peak <= 2 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

GOAL_PEAK_MB = 2000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repetitions", type=int, default=2, help="subprocess runs per variant (interleaved)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", type=Path, default=None, help=_common.RESULTS_DIR_HELP)
    parser.add_argument("--name", default=None, help="result file name (default bench_rank_memory, bench_rank_memory_quick with --quick)")
    parser.add_argument("--wait-quiet", type=float, default=180, help="first wait up to this many seconds for other processes to leave the CPUs (0: do not wait)")
    parser.add_argument("--quick", action="store_true", help="smoke run (< 60 s)")
    parser.add_argument("--child", choices=("ours", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.wait_quiet = 0
        args.queries, args.gallery, args.repetitions = 2_000, 10_000, 1
    args.name = args.name or ("bench_rank_memory_quick" if args.quick else "bench_rank_memory")
    args.results_dir = _common.results_dir_for(args.results_dir, args.quick)
    return args


def rss_mb() -> float:
    """Current resident set size (VmRSS) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args) -> None:
    import time

    import torch

    from traffic_retrieval.retrieval.rank import topk_similar

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    queries = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=generator), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(args.gallery, args.dim, generator=generator), dim=1)
    rss_before, peak_before = rss_mb(), peak_rss_mb()
    started = time.perf_counter()
    if args.child == "ours":
        scores, indices = topk_similar(queries, gallery, args.k)
    else:
        scores, indices = (queries @ gallery.T).topk(args.k, dim=1)
    seconds = time.perf_counter() - started
    report = {"variant": args.child, "seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rss_before_ranking_mb": rss_before,
              "peak_rss_before_ranking_mb": peak_before}
    torch.save({"scores": scores, "indices": indices, "report": report}, args.child_out)


def run_variant(variant: str, args, workdir: Path) -> tuple[dict, object]:
    import torch

    out = workdir / f"{variant}.pt"
    command = [sys.executable, __file__, "--child", variant, "--child-out", str(out), "--queries", str(args.queries),
               "--gallery", str(args.gallery), "--dim", str(args.dim), "--k", str(args.k), "--threads", str(args.threads), "--seed", str(args.seed)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        return {"variant": variant, "error": (completed.stderr.strip().splitlines() or [f"exit {completed.returncode}"])[-1], "returncode": completed.returncode}, None
    payload = torch.load(out, weights_only=True)
    out.unlink()
    return payload["report"], (payload["scores"], payload["indices"])


def mem_available_mb() -> float | None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return None


def compare(ours, naive) -> dict:
    import torch

    ours_scores, ours_indices = ours
    naive_scores, naive_indices = naive
    same_rows = (ours_indices == naive_indices).all(dim=1)
    # topk_similar orders exact ties by the lower index; topk's tie order is unspecified, and a
    # different matmul blocking may change a score in its last bit: count what explains a difference
    same_sets = torch.tensor([set(a) == set(b) for a, b in zip(ours_indices.tolist(), naive_indices.tolist())])
    same_scores = (ours_scores == naive_scores).all(dim=1)
    return {
        "indices_identical": bool(same_rows.all()),
        # a row whose scores are bit-identical and whose index sets are equal differs only in the order of exact ties
        "identical_up_to_tie_order": bool((same_rows | (same_sets & same_scores)).all()),
        "rows_with_identical_indices": int(same_rows.sum()),
        "rows_with_identical_index_sets": int(same_sets.sum()),
        "rows": len(same_rows),
        "max_abs_score_difference": float((ours_scores - naive_scores).abs().max()),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    naive_matrix_mb = args.queries * args.gallery * 4 / 2**20
    available = mem_available_mb()
    run_naive = available is None or naive_matrix_mb * 1.2 < available
    sides = ["ours", "naive"] if run_naive else ["ours"]
    reps = {side: [] for side in sides}
    outputs = {}
    quiet = _common.wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    load_before = _common.loadavg()
    with tempfile.TemporaryDirectory(prefix="bench-rank-") as tmp:
        for _ in range(args.repetitions):
            for side in sides:
                with _common.CpuLoad() as load:
                    report, result = run_variant(side, args, Path(tmp))
                report["cpu_load"] = load.result
                reps[side].append(report)
                if result is not None:
                    outputs[side] = result
                print(f"[bench_rank_memory] {side}: {json.dumps(report)}", file=sys.stderr, flush=True)
    load_after = _common.loadavg()
    ok = {side: [r for r in runs if "error" not in r] for side, runs in reps.items()}
    medians = {side: {"peak_rss_mb": _common.median([r["peak_rss_mb"] for r in runs]),
                      "ranking_peak_increase_mb": _common.median([r["peak_rss_mb"] - r["rss_before_ranking_mb"] for r in runs]),
                      "seconds": _common.median([r["seconds"] for r in runs])} for side, runs in ok.items() if runs}
    comparison = compare(outputs["ours"], outputs["naive"]) if "ours" in outputs and "naive" in outputs else None
    ours_peak = medians.get("ours", {}).get("peak_rss_mb")
    naive_peak = medians.get("naive", {}).get("peak_rss_mb")
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("results_dir", "child", "child_out")}
    path = _common.write_result(args.name, {
        "compares": "traffic_retrieval topk_similar (blockwise) vs naive (queries @ gallery.T).topk, fresh subprocess per run",
        "metric": "peak RSS in MB (ru_maxrss, lower is better) and ranking seconds; median of interleaved runs",
        "goal": f"ours peak RSS <= {GOAL_PEAK_MB} MB",
        "machine": _common.machine() | {"mem_available_mb_at_start": available},
        "parameters": params | {"naive_similarity_matrix_mb": round(naive_matrix_mb, 1), "naive_run": run_naive},
        "quiet_wait": quiet,
        "repetitions": reps,
        "medians": medians,
        "memory_ratio_naive_over_ours": naive_peak / ours_peak if ours_peak and naive_peak else None,
        "time_ratio_naive_over_ours": medians["naive"]["seconds"] / medians["ours"]["seconds"] if "naive" in medians and "ours" in medians else None,
        "results_comparison": comparison,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "goal_met": ours_peak is not None and ours_peak <= GOAL_PEAK_MB,
    }, args.results_dir)
    naive_text = f"naive {naive_peak:.0f} MB in {medians['naive']['seconds']:.1f} s" if naive_peak else "naive skipped/failed"
    ours_text = f"ours {ours_peak:.0f} MB in {medians['ours']['seconds']:.1f} s" if ours_peak else "ours failed"
    if comparison is None:
        same = "not compared"
    elif comparison["indices_identical"]:
        same = "identical"
    elif comparison["identical_up_to_tie_order"]:
        same = f"identical up to the order of exact ties ({comparison['rows'] - comparison['rows_with_identical_indices']} of {comparison['rows']} rows)"
    else:
        same = f"DIFFERENT ({comparison['rows_with_identical_index_sets']}/{comparison['rows']} rows with the same top-k set)"
    print(f"bench_rank_memory: {args.queries} queries x {args.gallery} gallery: {ours_text} vs {naive_text}; results {same}; goal ours <= {GOAL_PEAK_MB} MB; wrote {path}")
    return 0 if ours_peak is not None else 1


if __name__ == "__main__":
    sys.exit(main())
