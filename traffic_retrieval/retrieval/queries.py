"""Queries before the model: reading a query file, routing a query to its category,
rewriting it into the text the model encodes (``data/text_forms.py``), and the one
``QueryEncoder`` (route, rewrite, encode, memoised) behind ``predict``,
``predict --index``, ``Retriever``, ``search``, ``serve`` and training's validation.

``QueryConfig`` holds the query recipe: the text form, the router and the gallery
scope, and the inference-time settings for the camera domain (``retrieval/adapt.py``):
the gallery normalisation, the gallery BatchNorm statistics, the image test-time
augmentation and the soft scope's routing penalty. Unset values come from
the checkpoint (training records the recipe it used), else from ``DEFAULT_RECIPE`` and
``ADAPT_DEFAULTS``, so a model trained in the seed's form is queried in it with no flag
(``resolve_query_config``). A recipe records ``gallery_norm`` only when it is not
``none`` (``gallery_bn``, ``image_tta`` and ``query_bank`` too, the bank with its ``query_bank_beta``) and ``routing_penalty`` only with the soft scope (``query_recipe``): recipes of
today's behaviour keep their three keys.
"""

from __future__ import annotations

import codecs
import math
import threading
import typing
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import option
from ..data.text_forms import SEED_PROMPT_SUFFIX, query_text
from ..errors import TrafficRetrievalError
from ..io import read_input_bytes
from ..options import GalleryBn, GalleryNorm, GalleryScope, ImageTta, QueryBank, RouterKind, TextForm
from .adapt import DEFAULT_BANK_BETA, MAX_BANK_BETA
from .search import DEFAULT_ROUTING_PENALTY

DEFAULT_RECIPE = {"text_form": "sentence", "router": "vocabulary", "gallery_scope": "routed"}
ADAPT_DEFAULTS = {"gallery_norm": "none", "gallery_bn": "none", "image_tta": "none", "query_bank": "none", "query_bank_beta": DEFAULT_BANK_BETA,
                  "routing_penalty": DEFAULT_ROUTING_PENALTY}  # recorded only when they matter (query_recipe)
RECIPE_KEY = "query_recipe"  # where a checkpoint records the recipe its training used


@dataclass
class QueryConfig:
    text_form: TextForm | None = option(None, flag="--text-form",
                                        help="how queries (and training captions) are encoded: a3r (the seed's) or sentence; unset: the checkpoint's, else sentence")
    router: RouterKind | None = option(None, flag="--router",
                                       help="query routing: a3r (the seed's case-sensitive substring) or vocabulary (whole words); unset: the checkpoint's, else vocabulary")
    gallery_scope: GalleryScope | None = option(None, flag="--gallery-scope",
                                                help="rank against all gallery images (the seed's), only the routed category's, or soft: all of them, "
                                                     "images outside the routed category scored --routing-penalty lower; unset: the checkpoint's, else routed")
    gallery_norm: GalleryNorm | None = option(None, flag="--gallery-norm",
                                              help="adapt the gallery to the query side before ranking: none, or center (subtract the gallery's mean "
                                                   "embedding and re-normalise; camera galleries); unset: the checkpoint's (an index: the index's), else none")
    gallery_bn: GalleryBn | None = option(None, flag="--gallery-bn",
                                          help="the image tower's BatchNorm statistics for the gallery: none (the training images'), or adapt "
                                               "(re-estimated on the gallery, AdaBN; camera galleries; no effect on a model without BatchNorm); "
                                               "unset: the checkpoint's (an index: the index's), else none")
    image_tta: ImageTta | None = option(None, flag="--image-tta",
                                        help="test-time handling of every image encoded for retrieval (gallery, image queries): none, "
                                             "flip (the mean of the image's and its mirror's embeddings; twice the image-tower compute), "
                                             "exposure (an under-exposed night frame brightened to middle grey in linear light first, hues "
                                             "kept; day frames almost unchanged) or flip+exposure; "
                                             "unset: the checkpoint's (an index: the index's), else none")
    query_bank: QueryBank | None = option(None, flag="--query-bank",
                                          help="querybank normalisation of the ranking: none (cosine), or captions (each gallery image's score "
                                               "lowered by its soft-max similarity to the training captions the checkpoint stores, an inverted "
                                               "softmax: images near every query stop winning by it; camera galleries); "
                                               "unset: the checkpoint's (an index: the index's), else none")
    query_bank_beta: float | None = option(None, flag="--query-bank-beta", minimum=1e-3, maximum=MAX_BANK_BETA, metavar="BETA",
                                           help=f"--query-bank captions: the inverted softmax's inverse temperature; unset: the checkpoint's, "
                                                f"else {DEFAULT_BANK_BETA:g}")
    routing_penalty: float | None = option(None, flag="--routing-penalty", minimum=0, maximum=10, metavar="PENALTY",
                                           help=f"--gallery-scope soft: score subtracted from images outside a query's routed category; "
                                                f"unset: the checkpoint's, else {DEFAULT_ROUTING_PENALTY}")
    prompt: bool = option(False, flag="--prompt", help="prompt enhancement (the seed's variant): vehicle queries keep their prefix and get --prompt-suffix")
    prompt_suffix: str = option(SEED_PROMPT_SUFFIX, flag="--prompt-suffix", metavar="TEXT", help="the prompt appended to vehicle queries")


@dataclass
class QueryOptions:
    """What a command that answers queries takes: the routing vocabulary and the query recipe."""

    vocabulary: Path | None = option(None, help="vehicle_vocabulary.json from prepare, for query routing (default: the published vocabulary)")
    query: QueryConfig = field(default_factory=QueryConfig)


def resolve_query_config(config: QueryConfig | None, checkpoint: dict | None = None) -> QueryConfig:
    """``config`` with every unset recipe value filled: from the checkpoint's recorded recipe, else the default."""
    config = config or QueryConfig()
    recorded = (checkpoint or {}).get(RECIPE_KEY) or {}
    filled = {}
    for key, default in DEFAULT_RECIPE.items():
        if getattr(config, key) is None:
            value = recorded.get(key) if isinstance(recorded, dict) else None
            filled[key] = value if value in _CHOICES[key] else default
    for key, default in ADAPT_DEFAULTS.items():
        if getattr(config, key) is None:
            value = recorded.get(key) if isinstance(recorded, dict) else None
            filled[key] = value if _valid_adapt_value(key, value) else default
    return replace(config, **filled)


def _valid_adapt_value(key: str, value) -> bool:
    if key == "gallery_norm":
        return value in typing.get_args(GalleryNorm)
    if key == "gallery_bn":
        return value in typing.get_args(GalleryBn)
    if key == "image_tta":
        return value in typing.get_args(ImageTta)
    if key == "query_bank":
        return value in typing.get_args(QueryBank)
    if key == "query_bank_beta":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 < value <= MAX_BANK_BETA
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 10


def query_recipe(config: QueryConfig) -> dict:
    """The recipe a resolved config records in a checkpoint: text form, router and gallery
    scope; ``gallery_norm``, ``gallery_bn``, ``image_tta`` and ``query_bank`` when they are not ``none`` (``query_bank_beta``
    with the bank); ``routing_penalty`` with the soft scope."""
    recipe = {key: getattr(config, key) for key in DEFAULT_RECIPE}
    if config.gallery_norm not in (None, "none"):
        recipe["gallery_norm"] = config.gallery_norm
    for key in ("gallery_bn", "image_tta", "query_bank"):
        if getattr(config, key) not in (None, "none"):
            recipe[key] = getattr(config, key)
    if recipe.get("query_bank", "none") != "none":
        recipe["query_bank_beta"] = DEFAULT_BANK_BETA if config.query_bank_beta is None else float(config.query_bank_beta)
    if config.gallery_scope == "soft":
        recipe["routing_penalty"] = DEFAULT_ROUTING_PENALTY if config.routing_penalty is None else float(config.routing_penalty)
    return recipe


def text_to_encode(query: str, category: str, config: QueryConfig) -> str:
    """The text the model encodes for a query of a given (routed) category (``config`` resolved)."""
    return query_text(query, category, config.text_form or "sentence", config.prompt_suffix if config.prompt else None)


_CHOICES = {"text_form": typing.get_args(TextForm), "router": typing.get_args(RouterKind), "gallery_scope": typing.get_args(GalleryScope)}


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

    def __init__(self, loaded, config: QueryConfig | None, device: str, dtype, vocabulary=None, cache_size: int = 4096):
        from ..data.vocabulary import make_router

        self.loaded = loaded
        self.config = resolve_query_config(config, getattr(loaded, "checkpoint", None))
        self.router = make_router(self.config.router, vocabulary)
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
