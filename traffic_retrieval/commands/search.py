"""``search``: text-to-image search in a built index (``traffic-retrieval index``). Each
query goes to the FAISS index of its category (routed by the vehicle vocabulary, or
the one given by ``--category``); several queries are encoded in one batch."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import CheckpointTrust, RuntimeOptions, option
from ..errors import TrafficRetrievalError
from ..options import SearchCategory
from ..retrieval.queries import QueryConfig

HELP = "text-to-image search in an index"


@dataclass
class SearchConfig(RuntimeOptions, CheckpointTrust):
    text: list[str] = option(default_factory=list, positional=True, help="query text (several: one search each, encoded in one batch)")
    index: Path | None = option(None, help="the index folder (traffic-retrieval index --out)")
    k: int = option(10, short="-k", minimum=1, maximum=1000, help="results per query")  # maximum: index.retriever.MAX_K
    category: SearchCategory = option("routed", help="where to search: routed (the query recipe's gallery scope: the routed category, or all with --gallery-scope all), one category, or all of them")
    vocabulary: Path | None = option(None, help="vehicle_vocabulary.json from prepare, for routing (default: the published vocabulary)")
    checkpoint: Path | None = option(None, help="the index's checkpoint at another path (must be the same model)")
    json: bool = option(False, help="one JSON object per query: {query, results: [{rank, id, name, path, score, category, label}]}")
    query: QueryConfig = field(default_factory=QueryConfig)


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
                        precision=config.precision, query_config=config.query, trust_checkpoint=config.trust_checkpoint) as retriever:
        batches = retriever.search_batch(config.text, k=config.k, category=None if config.category == "routed" else config.category)
    return {"index": str(config.index), "searches": [{"query": query, "results": [asdict(r) for r in results]} for query, results in zip(config.text, batches)]}


def format_results(results: list[dict]) -> str:
    """One line per result; names and paths come from the gallery's files, so control characters are escaped."""
    from ..errors import printable

    return "\n".join(f"{r['rank']:>4}  {r['score']:7.4f}  {printable(r['category'] or '-'):<10}  {printable(r['name'])}  {printable(r['path'])}"
                     for r in results) or "(no results)"


def json_line(value) -> str:
    """JSON on one line, non-ASCII kept, but every character that is not printable (C1 controls
    such as CSI, bidi overrides, lone surrogates from undecodable file names) written as
    ``\\uXXXX``: ``json.dumps`` escapes only the C0 controls. Such characters occur only
    inside JSON strings, where an escape means the same character."""
    text = json.dumps(value, ensure_ascii=False)
    return "".join(char if char.isprintable() else json.dumps(char)[1:-1] for char in text)


def print_result(result: dict, config: SearchConfig) -> None:
    from ..errors import printable

    for search in result["searches"]:
        if config.json:
            print(json_line(search))
        else:
            if len(result["searches"]) > 1:
                print(f"query: {printable(search['query'])}")
            print(format_results(search["results"]))
