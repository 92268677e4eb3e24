"""Print the latest benchmark results (benchmarks/results/*.json) as a Markdown table,
for benchmarks/README.md.   python benchmarks/summarize.py [--results-dir DIR]"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def _load(results_dir: Path, name: str) -> dict | None:
    path = results_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _others(runs: list[dict]) -> str:
    fractions = [r["cpu_load"]["others_busy_fraction"] for r in runs if r.get("cpu_load", {}).get("others_busy_fraction") is not None]
    return f"{min(fractions):.2f}-{max(fractions):.2f}" if fractions else "?"


def _x(value) -> str:
    return f"{value:.2f}x" if value else "n/a"


def rows(results_dir: Path) -> list[str]:
    out = ["| benchmark | ours | peer | speedup (paired) | goal | met | others' CPU share | when |", "|---|---|---|---|---|---|---|---|"]
    encode = _load(results_dir, "bench_encode")
    if encode:
        for model, r in encode["models"].items():
            m = r["median_images_per_second"]
            fp32 = f"; ours fp32 {m['ours_fp32']:.1f}" if "ours_fp32" in m else ""
            out.append(f"| encode {model}, {r['images']} images | {m['ours']:.1f} img/s{fp32} | {m['peer']:.1f} img/s | {r['speedup']:.2f}x ({_x(r.get('speedup_paired_median'))}) "
                       f"| >= 1.5x | {'yes' if r['speedup'] >= 1.5 else 'no'} | {_others(r['repetitions']['ours'] + r['repetitions']['peer'])} | {encode['written'][:16]} |")
    train = _load(results_dir, "bench_train")
    if train and "peer" not in train["medians"]:  # an --ours-only run
        m = train["medians"]["ours"]
        out.append(f"| train {train['parameters']['model']}, batch {train['parameters']['batch_size']}, steady | {m['steady_samples_per_second']:.1f} samples/s "
                   f"| not run ({train.get('peer_skipped')}) | | >= 1.2x | | {_others(train['repetitions']['ours'])} | {train['written'][:16]} |")
    elif train:
        m = train["medians"]
        out.append(f"| train {train['parameters']['model']}, batch {train['parameters']['batch_size']}, steady | {m['ours']['steady_samples_per_second']:.1f} samples/s "
                   f"| {m['peer']['steady_samples_per_second']:.1f} samples/s | {train['speedup']:.2f}x ({_x(train.get('speedup_paired_median'))}) | >= 1.2x "
                   f"| {'yes' if train['goal_met'] else 'no'} | {_others(train['repetitions']['ours'] + train['repetitions']['peer'])} | {train['written'][:16]} |")
        out.append(f"| train, whole run ({train['parameters']['epochs']} epochs) | {m['ours']['wall_seconds']:.1f} s | {m['peer']['wall_seconds']:.1f} s "
                   f"| {train['wall_time_speedup']:.2f}x | | | | |")
    rank = _load(results_dir, "bench_rank_memory")
    if rank:
        m = rank["medians"]
        naive = m.get("naive", {})
        same = rank.get("results_comparison") or {}
        verdict = "identical" if same.get("indices_identical") else ("identical up to exact-tie order" if same.get("identical_up_to_tie_order") else "DIFFERENT")
        p = rank["parameters"]
        naive_peak = f"{naive['peak_rss_mb']:.0f} MB peak, {naive['seconds']:.1f} s" if naive else "skipped"
        out.append(f"| rank {p['queries']:,} x {p['gallery']:,}, peak RSS | {m['ours']['peak_rss_mb']:.0f} MB peak, {m['ours']['seconds']:.1f} s | {naive_peak} "
                   f"| {rank.get('memory_ratio_naive_over_ours') or 0:.1f}x less memory; results {verdict} | <= 2,000 MB | {'yes' if rank['goal_met'] else 'no'} "
                   f"| {_others(rank['repetitions'].get('ours', []) + rank['repetitions'].get('naive', []))} | {rank['written'][:16]} |")
    for name in ("bench_search", "bench_search_full_dim", "bench_search_ivfpq"):
        search = _load(results_dir, name)
        for r in (search or {}).get("results", []):
            goal = "p50 <= 5 ms, recall >= 0.95" if name == "bench_search" and r["data"] == "clip-like" and r["size"] >= 1_000_000 else ""
            met = ("yes" if r["p50_ms"] <= 5 and r["recall@10"] >= 0.95 else "no") if goal else ""
            load = (r.get("cpu_load") or {}).get("others_busy_fraction")
            out.append(f"| search {r['size']:,} {r['data']} {r['dim']}-d, top-10, one query per call | p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.1f} ms, "
                       f"recall@10 {r['recall@10']:.3f} ({r['index']}, {r['search_param']}) | exact scan | | {goal} | {met} "
                       f"| {'?' if load is None else f'{load:.2f}'} | {search['written'][:16]} |")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=_common.RESULTS_DIR)
    args = parser.parse_args(argv)
    print("\n".join(rows(args.results_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
