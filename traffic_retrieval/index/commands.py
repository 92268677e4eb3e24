"""The ``index`` and ``search`` subcommands. ``cli.py`` registers them with
``add_parsers(commands)``; heavy modules are imported inside the handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .faiss_index import KINDS

INDEX_FLAGS = {
    # flag: (type, help); None = not given, so --config YAML values and the defaults apply
    "images": (Path, "gallery folder, walked recursively (.jpg .jpeg .png .bmp .webp)"),
    "checkpoint": (Path, "traffic-retrieval checkpoint that encodes the images (recorded in the index)"),
    "out": (Path, "index folder (created, or updated incrementally)"),
    "labels": (Path, "optional IMAGE$ATTR$TEXT file: labels and true categories of gallery images"),
    "batch_size": (int, "images per batch (default 256)"),
    "workers": (int, "image decoding processes (default 2)"),
    "shard_size": (int, "images per embedding shard, the unit of resumption (default 4096)"),
    "device": (str, "auto, cpu, cuda (under torchrun: this rank's GPU)"),
    "precision": (str, "auto, fp32, bf16 or fp16"),
    "flat_max": (int, "--kind auto: exact search up to this many images per category (default 100000), HNSW above"),
    "recall_target": (float, "recall@10 the approximate search is tuned to (default 0.95)"),
    "reduce_dim": (int, "hnsw: build the graph on this many principal directions and re-score candidates exactly "
                        "(default 128; 0: full vectors; falls back to full vectors when the recall target is missed)"),
}


def _index(args) -> None:
    from ..config import build_config
    from .build import IndexConfig, build_index, format_report

    overrides = {key: getattr(args, key) for key in INDEX_FLAGS}
    overrides["kind"] = args.kind
    overrides["progress"] = False if args.no_progress else None
    report = build_index(build_config(IndexConfig, args.config, overrides))
    if "rank" in report:  # torchrun: rank 0 reports
        return
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def format_results(results) -> str:
    return "\n".join(f"{r.rank:>4}  {r.score:7.4f}  {r.category or '-':<10}  {r.name}  {r.path}" for r in results) or "(no results)"


def _search(args) -> None:
    from dataclasses import asdict

    from .retriever import Retriever, check_k

    check_k(args.k)
    with Retriever.open(args.index, device=args.device, checkpoint=args.checkpoint, vocabulary=args.vocabulary) as retriever:
        category = None if args.category == "routed" else args.category
        batches = retriever.search_batch(args.text, k=args.k, category=category)
    for query, results in zip(args.text, batches):
        if args.json:
            print(json.dumps({"query": query, "results": [asdict(r) for r in results]}, ensure_ascii=False))
        else:
            if len(args.text) > 1:
                print(f"query: {query}")
            print(format_results(results))


def add_parsers(commands) -> None:
    """Register ``index`` and ``search`` on an argparse subparsers object."""
    p = commands.add_parser("index", help="build or update a persistent gallery index (SQLite + embedding shards + FAISS)")
    p.add_argument("--config", help="YAML file with IndexConfig keys (flags win)")
    for key, (kind, text) in INDEX_FLAGS.items():
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=kind, help=text)
    p.add_argument("--kind", choices=KINDS, help="FAISS index: auto (flat when small, else hnsw), flat (exact), hnsw, ivf, "
                                                  "ivfpq (compressed: 0.3x the memory, approximate scores)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.set_defaults(func=_index)

    p = commands.add_parser("search", help="text-to-image search in an index")
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("text", nargs="+", help="query text (several: one search each, encoded in one batch)")
    p.add_argument("-k", "--k", type=int, default=10, help="results per query, 1..1000 (default 10)")
    p.add_argument("--category", choices=("routed", "pedestrian", "vehicle", "all"), default="routed",
                   help="routed (default: by the vehicle vocabulary), pedestrian, vehicle or all")
    p.add_argument("--vocabulary", type=Path, help="vehicle_vocabulary.json from prepare, for routing")
    p.add_argument("--checkpoint", type=Path, help="the index's checkpoint at another path (must be the same model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="one JSON object per query: {query, results: [{rank, id, name, path, score, category, label}]}")
    p.set_defaults(func=_search)


def build_parser() -> argparse.ArgumentParser:
    """A parser with only these two commands (tests, and ``python -m traffic_retrieval.index``)."""
    parser = argparse.ArgumentParser(prog="traffic-retrieval")
    add_parsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser
