"""``search``: text-to-image search in a built index (``traffic-retrieval index``). Each
query goes to the FAISS index of its category (routed by the vehicle vocabulary, or
the one given by ``--category``); several queries are encoded in one batch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import RuntimeOptions, option
from ..errors import TrafficRetrievalError
from ..options import SearchCategory

HELP = "text-to-image search in an index"


@dataclass
class SearchConfig(RuntimeOptions):
    text: list[str] = option(default_factory=list, positional=True, help="query text (several: one search each, encoded in one batch)")
    index: Path | None = option(None, help="the index folder (traffic-retrieval index --out)")
    k: int = option(10, short="-k", minimum=1, maximum=1000, help="results per query")  # maximum: index.retriever.MAX_K
    category: SearchCategory = option("routed", help="where to search: routed (each query by the vehicle vocabulary), one category, or all of them")
    vocabulary: Path | None = option(None, help="vehicle_vocabulary.json from prepare, for routing (default: the published vocabulary)")
    checkpoint: Path | None = option(None, help="the index's checkpoint at another path (must be the same model)")
    json: bool = option(False, help="one JSON object per query: {query, results: [{rank, id, name, path, score, category, label}]}")


Config = SearchConfig


def run(config: SearchConfig) -> dict:
    """``{"index": ..., "searches": [{"query": ..., "results": [SearchResult as a dict, ...]}, ...]}``."""
    from dataclasses import asdict

    from ..config import checked
    from ..index.retriever import Retriever

    config = checked(config)
    if config.index is None:
        raise TrafficRetrievalError("search needs --index")
    if not config.text:
        raise TrafficRetrievalError("search needs at least one query text")
    with Retriever.open(config.index, device=config.device, checkpoint=config.checkpoint, vocabulary=config.vocabulary,
                        precision=config.precision) as retriever:
        batches = retriever.search_batch(config.text, k=config.k, category=None if config.category == "routed" else config.category)
    return {"index": str(config.index), "searches": [{"query": query, "results": [asdict(r) for r in results]} for query, results in zip(config.text, batches)]}


def format_results(results: list[dict]) -> str:
    return "\n".join(f"{r['rank']:>4}  {r['score']:7.4f}  {r['category'] or '-':<10}  {r['name']}  {r['path']}" for r in results) or "(no results)"


def print_result(result: dict, config: SearchConfig) -> None:
    for search in result["searches"]:
        if config.json:
            print(json.dumps(search, ensure_ascii=False))
        else:
            if len(result["searches"]) > 1:
                print(f"query: {search['query']}")
            print(format_results(search["results"]))
