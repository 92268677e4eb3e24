"""``search``: search a built index (``traffic-retrieval index``) by text, by example
images, or by combined queries.

- ``search --index I QUERY...``: text queries; each goes to the FAISS index of its
  category (routed by the vehicle vocabulary, or the one given by ``--category``);
  several queries are encoded in one batch;
- ``search --index I --image PATH...``: each argument is an image file; the images most
  like it (every category unless ``--category`` names one: an image has no text to route);
- ``search --index I --expr EXPR...``: each argument is a combined query such as
  ``'0.5*"red car" + #123 - "truck"'`` (docs/queries.md): quoted texts, ``#ID`` for an
  indexed image, image file paths, ``+``/``-`` and ``W*`` weights; every category unless
  ``--category`` names one.

The output is the same for all three: a table, or ``--json`` one object per query.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import CheckpointTrust, RuntimeOptions, option
from ..errors import TrafficRetrievalError
from ..options import SearchCategory
from ..retrieval.queries import QueryOptions

HELP = "search an index by text, by example images (--image) or by combined queries (--expr)"


@dataclass
class SearchConfig(RuntimeOptions, CheckpointTrust, QueryOptions):
    text: list[str] = option(default_factory=list, positional=True, metavar="QUERY",
                             help="query text (several: one search each, encoded in one batch); with --image an image file, with --expr a combined query")
    image: bool = option(False, help="the queries are image files: search by example (every category unless --category names one)")
    expr: bool = option(False, help='the queries are combined queries, e.g. \'0.5*"red car" + #123 - "truck"\' (docs/queries.md; every category unless --category names one)')
    index: Path | None = option(None, help="the index folder (traffic-retrieval index --out)")
    k: int = option(10, short="-k", minimum=1, maximum=1000, help="results per query")  # maximum: index.retriever.MAX_K
    category: SearchCategory = option("routed", help="where to search: routed (the query recipe's gallery scope: the routed category, or all with --gallery-scope all; "
                                                     "all for --image and --expr), one category, or all of them")
    checkpoint: Path | None = option(None, help="the index's checkpoint at another path (must be the same model)")
    model: str | None = option(None, help="a zero-shot index's open_clip model, if not the one it records (must be the same)")
    pretrained: str | None = option(None, help="a zero-shot index's weights file at another path, or its tag (must be the same weights)")
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
    if config.image and config.expr:
        raise TrafficRetrievalError("search takes --image or --expr, not both")
    if not config.text:
        raise TrafficRetrievalError(f"search needs at least one {'image file' if config.image else 'combined query' if config.expr else 'query text'}")
    if config.expr:
        from ..retrieval.compose import parse_expression

        for position, expression in enumerate(config.text):  # every expression checked before the model loads
            try:
                parse_expression(expression)
            except TrafficRetrievalError as exc:
                raise TrafficRetrievalError(f"query {position + 1}: {exc}" if len(config.text) > 1 else str(exc)) from None
    category = None if config.category == "routed" else config.category
    with Retriever.open(config.index, device=config.device, checkpoint=config.checkpoint, model=config.model, pretrained=config.pretrained,
                        vocabulary=config.vocabulary,
                        precision=config.precision, query_config=config.query, trust_checkpoint=config.trust_checkpoint) as retriever:
        if config.image:
            batches = retriever.search_images(list(config.text), k=config.k, category=category)
        elif config.expr:
            batches = [retriever.search_combined(expression, k=config.k, category=category) for expression in config.text]
        else:
            batches = retriever.search_batch(config.text, k=config.k, category=category)
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
