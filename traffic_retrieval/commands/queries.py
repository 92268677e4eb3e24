"""``queries``: how each line of a query file will be handled, without loading a model:
its routed category and the text the model will encode (the text form and prompt
applied); the summary line names the recipe, gallery scope included. Use it to debug
routing and prompts: ``traffic-retrieval queries --queries test_text.txt --config
a3r-vit-bigg --json`` prints one ``{"query", "category", "text"}`` object a line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import option
from ..errors import TrafficRetrievalError
from ..retrieval.queries import QueryOptions

HELP = "show each query's routed category and the exact text that will be encoded (no model)"


@dataclass
class QueriesConfig(QueryOptions):
    queries: Path | None = option(None, help="query file, one query per line (e.g. DATA/test/test_text.txt)")
    json: bool = option(False, help='one JSON object a line: {"query", "category", "text"}')


Config = QueriesConfig


def run(config: QueriesConfig) -> dict:
    from ..data.vocabulary import VehicleVocabulary, make_router
    from ..retrieval.queries import query_recipe, read_queries, resolve_query_config, text_to_encode

    if config.queries is None:
        raise TrafficRetrievalError("queries needs --queries FILE")
    lines = read_queries(Path(config.queries))
    recipe = resolve_query_config(config.query)
    route = make_router(recipe.router, VehicleVocabulary.load(config.vocabulary) if config.vocabulary else None)
    categories = {query: route(query) for query in dict.fromkeys(lines)}
    handled = [{"query": query, "category": categories[query], "text": text_to_encode(query, categories[query], recipe)} for query in lines]
    return {"recipe": query_recipe(recipe), "queries": handled,
            "per_category": {c: sum(1 for q in handled if q["category"] == c) for c in sorted({q["category"] for q in handled})}}


def print_result(result: dict, config: QueriesConfig) -> None:
    from ..errors import printable
    from .search import json_line

    if config.json:
        for handled in result["queries"]:
            print(json_line(handled))
        return
    for number, handled in enumerate(result["queries"], start=1):
        print(f"{number:>6}  {handled['category']:<10}  {printable(handled['text'])}")
    recipe = result["recipe"]
    print(f"{len(result['queries'])} queries ({', '.join(f'{n} {c}' for c, n in result['per_category'].items())}); "
          f"text form {recipe['text_form']}, router {recipe['router']}, gallery scope {recipe['gallery_scope']}")
