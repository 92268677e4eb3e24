"""Queries before the model: reading a query file, routing a query to its category,
rewriting it into the text the model encodes (the seed's inference recipe), and
the one ``QueryEncoder`` (route, rewrite, encode, memoised) behind ``predict``,
``predict --index``, ``Retriever``, ``search`` and ``serve``.

Vehicle queries may lose the sentence prefix ("A ", "An ", "This is a ") and the
final period, and may get a prompt suffix describing the camera domain
(" image taken by traffic surveillance cameras"). Pedestrian captions are
encoded as written.
"""

from __future__ import annotations

import codecs
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..config import option
from ..data.schema import VEHICLE
from ..errors import TrafficRetrievalError
from ..io import read_input_bytes

SEED_PROMPT_SUFFIX = " image taken by traffic surveillance cameras"
_VEHICLE_PREFIX = re.compile(r"^\s*(?:this\s+is\s+(?:a|an)|a|an)\s+", re.IGNORECASE)


@dataclass
class QueryConfig:
    strip_vehicle_prefix: bool = option(False, flag="--strip-vehicle-prefix",
                                        help='encode vehicle queries without "A "/"This is a " and the final period')
    prompt: bool = option(False, flag="--prompt", help="prompt enhancement: strip vehicle queries and append --prompt-suffix")
    prompt_suffix: str = option(SEED_PROMPT_SUFFIX, flag="--prompt-suffix", help="the prompt appended to vehicle queries")


def strip_vehicle_query(text: str) -> str:
    """``"This is a white Audi."`` -> ``"white Audi"``; other texts lose only surrounding space and the final period."""
    stripped = _VEHICLE_PREFIX.sub("", text.strip(), count=1).rstrip()
    return stripped[:-1].rstrip() if stripped.endswith(".") else stripped


def text_to_encode(query: str, category: str, config: QueryConfig) -> str:
    """The text the model encodes for a query of a given (routed) category."""
    if category != VEHICLE:
        return query
    text = strip_vehicle_query(query) if config.strip_vehicle_prefix or config.prompt else query
    return text + config.prompt_suffix if config.prompt else text


def read_queries(path: Path) -> list[str]:
    """Every line of the query file, in order (identical lines repeat and are all answered)."""
    raw = read_input_bytes(path, "query file")
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    queries = []
    for line_number, line in enumerate(lines, start=1):
        try:
            queries.append(line.rstrip(b"\r").decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise TrafficRetrievalError(f"{path}:{line_number}: not valid UTF-8 (byte {line[exc.start]:#04x})") from None
    if not queries:
        raise TrafficRetrievalError(f"{path}: no queries")
    return queries


def count_truncated(tokenizer, texts: list[str]) -> int:
    """How many of ``texts`` exceed the tokenizer's context (open_clip cuts them silently)."""
    from ..model.tokens import bound_tokenizer, bounded_text

    context_length = getattr(tokenizer, "context_length", None) or 77
    bound_tokenizer(tokenizer)
    is_long: dict[str, bool] = {}
    for text in texts:
        if text not in is_long:
            if hasattr(tokenizer, "encode") and getattr(tokenizer, "reduction_fn", None) is None:  # open_clip's CLIP BPE
                # the part that can reach the model: past the context it is still over it, at a bounded cost
                is_long[text] = len(tokenizer.encode(bounded_text(tokenizer, text))) + 2 > context_length  # + start and end tokens
            elif hasattr(tokenizer, "tokenizer"):  # open_clip's HFTokenizer: the wrapped tokenizer, untruncated
                is_long[text] = len(tokenizer.tokenizer(text)["input_ids"]) > context_length
            else:  # anything else: the text fills the whole context
                is_long[text] = bool(tokenizer([text])[0, -1] != 0)
    return sum(is_long[text] for text in texts)


@dataclass
class EncodedQueries:
    categories: list[str]  # the routed category of each query
    texts: list[str]  # the text the model encoded for each query
    embeddings: object  # torch.FloatTensor [n, dim], L2-normalised


class QueryEncoder:
    """Route, rewrite and encode queries with one model; the same text is encoded once
    (within a call, and across calls through a bounded cache of the most recent
    ``cache_size`` texts). Thread-safe: the model runs under a lock."""

    def __init__(self, loaded, router, config: QueryConfig | None, device: str, dtype, cache_size: int = 4096):
        self.loaded = loaded
        self.router = router
        self.config = config or QueryConfig()
        self.device = device
        self.dtype = dtype
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def route(self, queries: list[str]) -> list[str]:
        routed = {query: self.router(query) for query in dict.fromkeys(queries)}  # each distinct query routed once
        return [routed[query] for query in queries]

    def texts(self, queries: list[str], categories: list[str]) -> list[str]:
        return [text_to_encode(query, category, self.config) for query, category in zip(queries, categories)]

    def encode_texts(self, texts: list[str]):
        """L2-normalised embeddings of texts as given (already rewritten)."""
        import torch

        from .encode import encode_texts

        with self._lock:
            missing = [text for text in dict.fromkeys(texts) if text not in self._cache]
            if missing:
                for text, embedding in zip(missing, encode_texts(self.loaded, missing, self.device, self.dtype)):
                    self._cache[text] = embedding.clone()  # not a view: a cached row must not keep its whole batch alive
            for text in texts:
                self._cache.move_to_end(text)
            embeddings = torch.stack([self._cache[text] for text in texts]) if texts else torch.zeros((0, 1))
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return embeddings

    def encode(self, queries: list[str], categories: list[str] | None = None) -> EncodedQueries:
        """Each query routed (unless ``categories`` are given), rewritten and encoded."""
        categories = list(categories) if categories is not None else self.route(queries)
        texts = self.texts(queries, categories)
        return EncodedQueries(categories, texts, self.encode_texts(texts))
