"""``Retriever``: text-to-image search over a built index, the one search path for the
CLI, the server and scripts.

```python
from traffic_retrieval.index import Retriever

retriever = Retriever.open("INDEX")                  # index.json, SQLite, FAISS and the recorded checkpoint
for result in retriever.search("This is a white Audi.", k=10):
    print(result.rank, result.score, result.category, result.name, result.path)
retriever.search("a woman with a backpack", k=5, category="pedestrian")
retriever.search_batch(["...", "..."], k=10)         # texts encoded in one batch
retriever.search_image(42, k=10)                     # more like indexed image 42 (itself first); or a path, or a PIL image
retriever.search_combined('0.5*"red car" + #42 - "truck"', k=10)  # docs/queries.md
retriever.info(); retriever.record(42); retriever.image_path(42)
```

A query goes to its category's FAISS index: the one named by ``category``, or the
one ``QueryRouter`` picks (``category=None``, as ``predict`` routes), or all of them
merged by score (``"all"``). Per-category indexes, rather than one index searched
deeper and filtered, return k results of the category however rare it is, and
their recall is measured and tuned per category. Queries are routed, rewritten and
encoded by ``retrieval.queries.QueryEncoder`` and searched by
``retrieval.search.search_routed`` over ``FaissGallerySearch`` (``faiss_search.py``):
the path ``predict`` takes over its exact search. Searches are thread-safe: text
encoding runs under the encoder's lock, FAISS searches take their settings per
call, the store serialises its reads.

Gallery normalisation (``retrieval/adapt.py``): the index's FAISS indexes hold the gallery
as its build said (``index --gallery-norm``, recorded as ``faiss.gallery_norm`` with the
gallery's mean). The retriever follows the index: an unset ``query_config.gallery_norm``
becomes the index's, a different one is refused with one line (rebuild the index with it).
Text queries are never centred; image queries (``search_image``, the image terms of
``search_combined``) are centred on the recorded mean like the gallery, so an image and
its indexed twin still score 1. ``embeddings()`` returns the raw stored embeddings.
An index built with ``gallery_bn: adapt`` (``batchnorm.py``) holds the BatchNorm statistics
it encoded the gallery with; the retriever loads them into its model, so image queries are
encoded in the gallery's space. An index built with ``image_tta: flip`` encoded each image
as the mean of it and its mirror; image queries are encoded the same way. Both settings
are the index's (``index_encoding``): a query recipe asking for another is refused.
An index built with ``query_bank: captions`` (``query_bank.py``) ranks text queries by
cosine minus each image's recorded offset (querybank normalisation), as ``predict`` does;
image queries and combined queries rank by cosine. The bank and its beta are the index's:
a query recipe asking for others is refused (rebuild the index with them: only FAISS).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import TrafficRetrievalError
from ..io import Closeable
from ..retrieval.search import ALL
from .info import check_relative_path, shown

MAX_K = 1000


@dataclass(frozen=True)
class SearchResult:
    rank: int  # 1 = best
    id: int  # the image's id in the index (stable while its file stays in the gallery)
    name: str  # file name
    path: str  # absolute path of the image
    score: float  # cosine similarity between the query and the image
    category: str | None
    label: str | None  # ATTR from the labels file, when the index was given one


@dataclass(frozen=True)
class ImageRecord:
    id: int
    name: str
    path: str  # absolute
    relative_path: str
    category: str | None
    predicted_category: str | None
    label: str | None
    caption: str | None
    size: int
    sha256: str | None
    state: str


def _recipe(config) -> dict:
    """The query recipe ``info()`` reports: text form, router, gallery scope (and the soft scope's penalty)."""
    recipe = {key: getattr(config, key) for key in ("text_form", "router", "gallery_scope")}
    if config.gallery_scope == "soft":
        recipe["routing_penalty"] = config.routing_penalty
    return recipe


def _with_index_recipe(query_config, info: dict, root):
    """``query_config`` with the index's gallery normalisation, BatchNorm statistics and image
    test-time augmentation: an unset one becomes the index's, a different one is refused
    (FAISS holds the gallery one way; re-centring at query time would be another search,
    and the gallery was encoded with its statistics and augmentation)."""
    from dataclasses import replace

    from ..retrieval.queries import QueryConfig

    query_config = query_config or QueryConfig()
    faiss_info = info.get("faiss") or {}
    built = {"gallery_norm": faiss_info.get("gallery_norm", "none"), "query_bank": faiss_info.get("query_bank", "none")}
    if built["query_bank"] != "none":
        built["query_bank_beta"] = float(faiss_info["query_bank_beta"])
    for key, value in built.items():
        asked = getattr(query_config, key)
        if asked is not None and asked != value:
            flag = "--" + key.replace("_", "-")
            raise TrafficRetrievalError(f"{root}: the index holds the gallery with {key} {value}, the query recipe asks for {asked}: "
                                        f"rebuild it with `traffic-retrieval index {flag} {asked} --out {root} ...` (only FAISS is rebuilt), "
                                        f"or leave {key} unset")
    return replace(query_config, **built, **index_encoding(query_config, info, root))


ENCODING_KEYS = ("gallery_bn", "image_tta")  # how an index's gallery was encoded: fixed for its life


def index_encoding(query_config, info: dict, root) -> dict:
    """``{gallery_bn, image_tta}``: how the index's gallery was encoded (absent from an
    index.json of before: ``none``); one that ``query_config`` asks for and that differs is
    refused in one line (the gallery would be in another space than the queries)."""
    encoding = {}
    for key in ENCODING_KEYS:
        built, asked = info.get(key, "none"), getattr(query_config, key)
        if asked is not None and asked != built:
            flag = "--" + key.replace("_", "-")
            raise TrafficRetrievalError(f"{root}: the index's gallery was encoded with {key} {built}, the query recipe asks for {asked}: "
                                        f"build a new index with `traffic-retrieval index {flag} {asked} --out NEW ...`, or leave {key} unset")
        encoding[key] = built
    return encoding


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise TrafficRetrievalError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
    return k


class Retriever(Closeable):
    def __init__(self, layout, info: dict, store, gallery, query_encoder, device: str):
        self.layout = layout
        self._info = info
        self._store = store  # IndexStore, read-only
        self._gallery = gallery  # FaissGallerySearch: category -> AnnIndex
        self._queries = query_encoder  # retrieval.queries.QueryEncoder
        self._device = device
        self._images_root = Path(info["images"])
        faiss_info = info.get("faiss") or {}
        self._gallery_norm = faiss_info.get("gallery_norm", "none")
        self._gallery_mean = faiss_info.get("gallery_mean")  # list of dim floats (None: an index built before means were recorded)
        self._query_bank = faiss_info.get("query_bank", "none")
        self._text_gallery = gallery  # what text queries are ranked in: the FAISS indexes, through the query bank's offsets where built with one
        if self._query_bank != "none":
            from ..retrieval.search import BankNormalisedSearch
            from .query_bank import load_bank_offsets

            ids, offsets = load_bank_offsets(layout.root, faiss_info["bank_offsets"])
            self._text_gallery = BankNormalisedSearch(gallery, offsets, ids)

    @classmethod
    def open(cls, index: str | Path, device: str = "auto", checkpoint: str | Path | None = None, vocabulary: str | Path | None = None,
             precision: str = "auto", query_config=None, trust_checkpoint: bool = False, model: str | None = None,
             pretrained: str | None = None) -> "Retriever":
        """Open ``index``; the model is the one index.json records (``source.py``): its
        checkpoint, or its open_clip model with its pretrained tag or weights file. Given
        ``checkpoint``, or ``model`` and/or ``pretrained`` (the same model at another path, or
        named by the caller), it is refused with one line unless it is the index's model (the
        same checkpoint or weights sha256, model name and tag). ``trust_checkpoint``: a
        checkpoint's architecture, or the open_clip model the index names, may load from
        elsewhere (``hf-hub:``, Hugging Face towers and tokenizers). ``query_config``
        (``retrieval.queries.QueryConfig``): how queries are rewritten before encoding."""
        from ..data.vocabulary import VehicleVocabulary
        from ..retrieval.queries import QueryEncoder
        from ..runtime import autocast_dtype, resolve_device
        from .faiss_search import FaissGallerySearch
        from .source import load_index_model
        from .store import IndexLayout, IndexStore

        layout = IndexLayout(index)
        info = layout.read_index_json()
        device = resolve_device(device)
        loaded = load_index_model(layout.root, info["source"], device, checkpoint=checkpoint, model=model, pretrained=pretrained, trust=trust_checkpoint)
        for attempt in range(2):
            try:
                gallery = FaissGallerySearch.load(layout.root, info["faiss"], info["dim"])
                break
            except TrafficRetrievalError:
                if attempt:  # a build finishing meanwhile replaces the FAISS files: read its index.json once more
                    raise
                info = layout.read_index_json()
        query_config = _with_index_recipe(query_config, info, layout.root)
        if info.get("bn_stats"):  # image queries are encoded with the statistics the gallery was
            from .batchnorm import load_index_batchnorm

            load_index_batchnorm(layout.root, info["bn_stats"], loaded.model)
        store = IndexStore(layout.meta_db, readonly=True)
        query_encoder = QueryEncoder(loaded, query_config, device, autocast_dtype(precision, device),
                                     vocabulary=VehicleVocabulary.load(vocabulary) if vocabulary else None)
        return cls(layout, info, store, gallery, query_encoder, device)

    def close(self) -> None:
        self._store.close()

    @property
    def query_config(self):
        """The resolved query recipe (text form, router, gallery scope) this retriever applies."""
        return self._queries.config

    # -- search --------------------------------------------------------------------
    @property
    def categories(self) -> list[str]:
        return sorted(self._gallery.indexes)

    def _check_category(self, category: str | None) -> None:
        known = {"pedestrian", "vehicle", ALL, *self._gallery.indexes}
        if category is not None and category not in known:
            raise TrafficRetrievalError(f"category must be one of {', '.join(sorted(known))} or None (routed), got {category!r}")

    def search(self, query: str, k: int = 10, category: str | None = None) -> list[SearchResult]:
        return self.search_batch([query], k, category)[0]

    def search_batch(self, queries: list[str], k: int = 10, category: str | None = None) -> list[list[SearchResult]]:
        """The top ``k`` images for each query, best first. ``category``: None (the query
        recipe's gallery scope: the routed category, or all of them when it has no images;
        or the whole gallery),
        ``"pedestrian"``, ``"vehicle"`` or ``"all"``. A query is rewritten for its routed
        category (``"pedestrian"``/``"vehicle"``: for that one) before it is encoded."""
        from ..retrieval.search import search_routed, search_scoped

        check_k(k)
        self._check_category(category)
        if isinstance(queries, str):
            raise TrafficRetrievalError("search_batch takes a list of queries (use search for one)")
        for query in queries:
            if not isinstance(query, str) or not query.strip():
                raise TrafficRetrievalError(f"a query must be a non-empty string, got {query!r}")
        if not queries:
            return []
        queries = list(queries)
        encoded = self._queries.encode(queries, None if category in (None, ALL) else [category] * len(queries))
        recipe = self._queries.config
        if category is None:  # the recipe's scope: routed, all, or soft (every category, a penalty outside the routed one)
            hits = search_scoped(self._text_gallery, encoded.embeddings, encoded.categories, k, recipe.gallery_scope, recipe.routing_penalty)
        else:
            hits = search_routed(self._text_gallery, encoded.embeddings, [category] * len(queries), k)
        return self._results(hits)

    def _results(self, hits) -> list[list[SearchResult]]:
        records = self._store.records({image_id for row in hits for image_id, _ in row})
        results = []
        for row in hits:
            found = [(records[image_id], score) for image_id, score in row if image_id in records]  # a row deleted by a build in progress is skipped
            results.append([SearchResult(rank, record.id, record.name, self._gallery_path(record), score, record.category, record.label)
                            for rank, (record, score) in enumerate(found, start=1)])
        return results

    # -- search by example images, combined queries (docs/queries.md) ---------------------
    def search_image(self, image, k: int = 10, category: str | None = None) -> list[SearchResult]:
        """The top ``k`` images like ``image``: a path, a PIL image, or an index id (an ``int``;
        its stored embedding). An indexed image's own search returns it first. ``category``:
        None or ``"all"`` (an image has no text to route: every category), or one category."""
        return self.search_images([image], k, category)[0]

    def search_images(self, images: list, k: int = 10, category: str | None = None) -> list[list[SearchResult]]:
        """``search_image`` for each of ``images``, encoded in one batch."""
        from ..retrieval.search import search_routed

        check_k(k)
        self._check_category(category)
        if not isinstance(images, (list, tuple)):
            raise TrafficRetrievalError("search_images takes a list of images (use search_image for one)")
        if not images:
            return []
        target = ALL if category is None else category
        images = [self._indexed_id(image) for image in images]  # a gallery file is its indexed image
        hits = search_routed(self._gallery, self._image_embeddings(images), [target] * len(images), k)
        for row, image in zip(hits, images):
            if isinstance(image, int):
                self._own_image_first(row, image, target, k)
        return self._results(hits)

    def search_combined(self, expression: str, k: int = 10, category: str | None = None, allow_paths: bool = True) -> list[SearchResult]:
        """The top ``k`` images for a combined query such as ``0.5*"red car" + #123 - "truck"``
        (``retrieval.compose``): texts routed, rewritten and encoded as ``search`` does, images as
        ``search_image``; the weighted sum of the normalised embeddings, normalised, is searched
        in ``category`` (None or ``"all"``: every category). ``allow_paths=False`` refuses image
        file paths (what a server's clients send)."""
        import torch

        from ..retrieval.compose import IMAGE_ID, IMAGE_PATH, TEXT, combine, parse_expression
        from ..retrieval.search import search_routed

        check_k(k)
        self._check_category(category)
        terms = parse_expression(expression, allow_paths=allow_paths)
        vectors: list = [None] * len(terms)
        texts = [i for i, term in enumerate(terms) if term.kind == TEXT]
        if texts:
            encoded = self._queries.encode([terms[i].value for i in texts], None if category in (None, ALL) else [category] * len(texts))
            for i, embedding in zip(texts, encoded.embeddings):
                vectors[i] = embedding
        images = [i for i, term in enumerate(terms) if term.kind in (IMAGE_ID, IMAGE_PATH)]
        if images:
            for i, embedding in zip(images, self._image_embeddings([terms[i].value for i in images])):
                vectors[i] = embedding
        query = combine(torch.stack([v.float() for v in vectors]), [term.weight for term in terms])
        return self._results(search_routed(self._gallery, query[None], [ALL if category is None else category], k))[0]

    def _indexed_id(self, image):
        """``image`` itself, or the id of the indexed image when it is the path of a file inside the
        gallery that the index holds (its stored embedding then answers, and it comes first)."""
        if isinstance(image, bool) or not isinstance(image, (str, os.PathLike)):
            return image
        real_root, real_path = os.path.realpath(self._images_root), os.path.realpath(image)
        if os.path.commonpath([real_root, real_path]) != real_root:
            return image
        found = self._store.indexed_id_of(os.path.relpath(real_path, real_root).replace(os.sep, "/"))
        return image if found is None else found

    def _image_embeddings(self, images: list):
        """L2-normalised embeddings ``[n, dim]`` of image queries: an ``int`` is an indexed image
        (its stored embedding; its checked file re-encoded where the index kept none), a ``str`` or
        ``Path`` an image file (the one loader and its limits), else a PIL image."""
        import torch

        from ..data.images import load_image

        decoded, stored = {}, {}
        for position, image in enumerate(images):
            if isinstance(image, bool) or not isinstance(image, (int, str, os.PathLike)) and not hasattr(image, "getbbox"):
                raise TrafficRetrievalError(f"an image query is a path, a PIL image or an index id, got {type(image).__name__}")
            if isinstance(image, int):
                stored[position] = image
            elif isinstance(image, (str, os.PathLike)):
                decoded[position] = load_image(image)
            else:
                decoded[position] = image
        vectors = self._stored_embeddings(list(dict.fromkeys(stored.values())))
        for position, image_id in stored.items():
            if vectors[image_id] is None:  # the index keeps no embedding of it (its shard is gone): encode its file again
                decoded[position] = load_image(self.image_path(image_id))
        encoded = dict(zip(decoded, self._encode_images(list(decoded.values())))) if decoded else {}
        rows = [encoded[p] if p in encoded else vectors[stored[p]] for p in range(len(images))]
        embeddings = torch.nn.functional.normalize(torch.stack([row.float() for row in rows]), dim=1)
        if self._gallery_norm != "none":  # in the space FAISS holds the gallery in, as the gallery's own images are
            from ..retrieval.adapt import apply_gallery_norm

            embeddings = apply_gallery_norm(embeddings, torch.tensor(self._gallery_mean, dtype=torch.float32))
        return embeddings

    def _stored_embeddings(self, image_ids: list[int]) -> dict:
        """id -> the embedding the index stored for an indexed image (None when its shard cannot
        be read); an id that is not an indexed image is a one-line error."""
        import torch

        from .store import ShardReader

        records = self._store.records([image_id for image_id in image_ids if 0 <= image_id <= 2**63 - 1])
        for image_id in image_ids:
            record = records.get(image_id)
            if record is None or record.state != "indexed" or record.row is None:
                raise TrafficRetrievalError(f"no indexed image with id {image_id} in index {self.layout.root}")
        reader, found = ShardReader(self.layout, self._info["dim"]), {}
        for image_id in image_ids:
            try:
                found[image_id] = torch.from_numpy(reader.gather([(records[image_id].shard, records[image_id].row)])[0].copy())
            except TrafficRetrievalError:
                found[image_id] = None
        return found

    def _encode_images(self, images: list):
        """The image tower's L2-normalised embeddings of PIL images, under the encoder's lock
        (the model never runs in two threads at once)."""
        import torch

        from ..retrieval.compose import image_uint8
        from ..retrieval.encode import encode_uint8_images

        encoder = self._queries
        preprocess = encoder.loaded.preprocess
        batch = torch.stack([image_uint8(image, preprocess) for image in images])
        with encoder._lock:
            return encode_uint8_images(encoder.loaded.model.eval(), batch, preprocess, encoder.device, encoder.dtype,
                                       image_tta=encoder.config.image_tta)

    def _own_image_first(self, row: list, image_id: int, target: str, k: int) -> None:
        """An indexed image's own search lists it first (an approximate index may rank it lower,
        or miss it), when it lies in the searched category."""
        own = next((hit for hit in row if hit[0] == image_id), None)
        if own is None:
            record = self._store.record(image_id)
            if record is None or (target != ALL and record.category != target):
                return
            own = (image_id, 1.0)  # its cosine similarity with itself
        row[:] = [own] + [hit for hit in row if hit[0] != image_id][: k - 1]

    # -- metadata ------------------------------------------------------------------
    def embeddings(self, batch_rows: int = 65_536):
        """The indexed images' embeddings with their metadata, for notebooks: an iterator of
        ``index.export.EmbeddingBatch`` (``ids``, ``names``, ``paths``, ``categories``,
        ``labels``, ``captions`` and ``embeddings`` float32 ``[n, dim]``, row for row), the
        whole gallery in id order, ``batch_rows`` images at a time.

        The vectors are the ones the index stores in its shards: the model's full-width
        L2-normalised embeddings, kept as float16 (exact up to that rounding), not what FAISS
        holds (which may be PCA-reduced or PQ-compressed)::

            ids, vectors = [], []
            for batch in retriever.embeddings():
                ids.append(batch.ids); vectors.append(batch.embeddings)
        """
        from .export import check_rows, iter_embeddings

        check_rows(batch_rows, "batch_rows")  # now, not at the first next()
        return iter_embeddings(self.layout, self._info, self._store, batch_rows)

    def info(self) -> dict:
        info = self._info
        return {
            "index": str(self.layout.root),
            "images": info["images"],
            "model": info["model"],
            "checkpoint": info["checkpoint"],
            "source": dict(info["source"]),  # checkpoint, or an open_clip model zero-shot (name, tag or weights file)
            "identity": info["identity"],
            "dim": info["dim"],
            "count": info["count"],
            "categories": dict(info["categories"]),
            "kind": dict(info["kind"]),
            "recall@10": info["recall@10"],
            "per_category": {c: dict(entry) for c, entry in info["faiss"]["indexes"].items()},
            "unreadable": info["unreadable"],
            "built_at": info["built_at"],
            "device": self._device,
            "query_recipe": _recipe(self._queries.config),
            "gallery_norm": self._gallery_norm,  # how the FAISS indexes hold the gallery (index --gallery-norm)
            "gallery_bn": info.get("gallery_bn", "none"),  # the BatchNorm statistics the gallery was encoded with (index --gallery-bn)
            "image_tta": info.get("image_tta", "none"),  # the test-time augmentation of its images (index --image-tta)
            "query_bank": self._query_bank,  # how text queries are ranked (index --query-bank)
            **({"query_bank_beta": (info.get("faiss") or {}).get("query_bank_beta")} if self._query_bank != "none" else {}),
        }

    def _gallery_path(self, row) -> str:
        """The absolute path a row names: its relative path under the gallery root (a row
        naming anything else is a tampered index, refused)."""
        problem = check_relative_path(row.path)
        if problem:
            raise TrafficRetrievalError(f"{self.layout.meta_db}: image {row.id}: recorded path {shown(row.path)} {problem}")
        return os.path.join(self._images_root, row.path)

    def record(self, image_id: int) -> ImageRecord:
        """What the index holds about an image. ``path`` is where the row says the file is;
        the file to read or serve is ``image_path``'s, which is checked."""
        row = self._store.record(image_id)
        if row is None:
            raise TrafficRetrievalError(f"no image with id {image_id!r} in index {self.layout.root}")
        return ImageRecord(row.id, row.name, self._gallery_path(row), row.path, row.category, row.predicted_category, row.label, row.caption,
                           row.size, row.sha256, row.state)

    def image_path(self, image_id: int) -> Path:
        """The gallery file of an indexed image, the only path the server reads for an image
        id: its real path (links resolved) lies inside the gallery's real root, it has an
        image suffix, is a regular file, and its size and mtime are those recorded when it
        was encoded. Anything else is a one-line error (a tampered row, or a file changed,
        replaced or removed since it was indexed)."""
        from ..data.prepare import IMAGE_SUFFIXES
        from .scan import inside

        row = self._store.record(image_id)
        if row is None:
            raise TrafficRetrievalError(f"no image with id {image_id!r} in index {self.layout.root}")
        where = f"image {row.id}"
        if row.state != "indexed":
            raise TrafficRetrievalError(f"{where}: not indexed ({row.state})")
        self._gallery_path(row)
        if os.path.splitext(row.path)[1].lower() not in IMAGE_SUFFIXES:
            raise TrafficRetrievalError(f"{where}: {shown(row.path)} is not an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
        real_root = os.path.realpath(self._images_root)
        real = os.path.realpath(os.path.join(real_root, row.path))
        if not inside(real, real_root):
            raise TrafficRetrievalError(f"{where}: {shown(row.path)} leads outside the gallery {self._images_root}")
        try:
            found = os.stat(real)
        except FileNotFoundError:
            raise TrafficRetrievalError(f"{where}: {shown(row.path)} is missing from the gallery") from None
        except OSError as exc:
            raise TrafficRetrievalError(f"{where}: {shown(row.path)} cannot be read ({exc.strerror or exc})") from None
        if not stat.S_ISREG(found.st_mode):
            raise TrafficRetrievalError(f"{where}: {shown(row.path)} is not a regular file")
        if (found.st_size, found.st_mtime_ns) != (row.size, row.mtime_ns):
            raise TrafficRetrievalError(f"{where}: {shown(row.path)} changed since it was indexed (run `traffic-retrieval index` again)")
        return Path(real)
