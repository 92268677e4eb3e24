"""``index.json`` checked before any of it is used, and the gallery paths rows may name.

An index may come from someone else, so nothing in it is used as it is: every field
``Retriever``, ``read_indexed_gallery`` and an incremental build read is checked for its
type and range (``check_index_info``), a bad one being a one-line error naming the field
(``faiss.indexes.vehicle.search_param.efSearch: ...``). The model, ``source`` (a checkpoint,
or an open_clip model and its weights; ``source.py``), must agree with the top-level
``checkpoint``, ``identity`` and ``model``; an index.json of format 1 (checkpoint only) is
read as a checkpoint source. FAISS files are named only by the
pattern the build writes, ``faiss/<category>.<12 hex>.index`` (``faiss_file_name``),
never by a path taken from the file; search settings are bounded, since FAISS allocates
per query in proportion to them. A row's gallery path must be a plain relative path
(``check_relative_path``); which file may be served is ``Retriever.image_path``'s check.
"""

from __future__ import annotations

import math
import os
import re

from ..errors import TrafficRetrievalError

MAX_INDEX_JSON_BYTES = 64 * 2**20  # a real one is a few kilobytes
MAX_DIM = 16_384  # embedding widths are 256 to 1,280 today
MAX_COUNT = 2**40
MAX_EF_SEARCH = 4096  # the largest value the build tunes to (faiss_index.HNSW_EF_CANDIDATES)
MAX_NPROBE = 2**20  # FAISS clamps nprobe to the number of lists
MAX_K_FACTOR = 256  # re-scoring candidates per result (the build tunes 8, 32 or 128)
MAX_CATEGORIES = 1000
MAX_NAME_CHARS = 200
MAX_PATH_CHARS = 4096
BUILT_KINDS = ("flat", "hnsw", "ivf", "ivfpq")
GALLERY_NORMS = ("none", "center")  # faiss.gallery_norm: how the FAISS indexes hold the gallery (retrieval/adapt.py)
GALLERY_BNS = ("none", "adapt")  # gallery_bn: the BatchNorm statistics the gallery was encoded with (batchnorm.py)
IMAGE_TTAS = ("none", "flip", "exposure", "flip+exposure")  # image_tta: how every image was encoded at test time (encoding.py)
BN_STATS_FILE = "bn_stats.safetensors"  # = batchnorm.BN_STATS_FILE
QUERY_BANKS = ("none", "captions")  # faiss.query_bank: how text queries are ranked (retrieval/adapt.py, query_bank.py)
MAX_BANK_BETA = 1000.0  # = adapt.MAX_BANK_BETA
SEARCH_PARAMS = {  # kind -> the settings it may carry, with their bounds
    "flat": {},
    "hnsw": {"efSearch": MAX_EF_SEARCH, "k_factor": MAX_K_FACTOR},
    "ivf": {"nprobe": MAX_NPROBE, "k_factor": MAX_K_FACTOR},
    "ivfpq": {"nprobe": MAX_NPROBE, "k_factor": MAX_K_FACTOR},
}
SOURCE_KINDS = ("checkpoint", "pretrained")  # index.json's source.kind (source.py)
WEIGHTS_KINDS = ("file", "tag", "model")  # source.weights of an open_clip model: a weights file, a pretrained tag, or the hf-hub:/local-dir: model's own
HEX64 = re.compile(r"[0-9a-f]{64}")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")  # = model.factory.MODEL_NAME; pretrained tags too
HF_REPO = re.compile(r"hf-hub:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
PLAIN_KEY = re.compile(r"[A-Za-z0-9_@-]{1,40}")
FAISS_FILE = re.compile(r"faiss/[A-Za-z0-9_-]+\.[0-9a-f]{12}\.index")
BANK_FILE = re.compile(r"faiss/bank_offsets\.[0-9a-f]{12}\.safetensors")


def category_file_stem(category: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", category) or "_"


def faiss_file_name(category: str, fingerprint: str) -> str:
    """The one name a category's FAISS file may have, relative to the index folder."""
    return f"faiss/{category_file_stem(category)}.{fingerprint[:12]}.index"


def bank_file_name(fingerprint: str) -> str:
    """The one name the querybank offsets file may have (``query_bank.py``), relative to the index folder."""
    return f"faiss/bank_offsets.{fingerprint[:12]}.safetensors"


def shown(value, limit: int = 60) -> str:
    """A value from a file, short enough for a one-line error."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(name) -> str:
    """A key from the file as it appears in a field name: itself when plain, else quoted and shortened."""
    return name if isinstance(name, str) and PLAIN_KEY.fullmatch(name) else shown(name, 40)


def check_relative_path(path) -> str | None:
    """Why ``path`` is not a plain ``/``-separated path inside a folder, or None when it is."""
    if not isinstance(path, str) or not path:
        return "is not a path"
    if len(path) > MAX_PATH_CHARS or "\0" in path:
        return "is not a usable path"
    if path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
        return "is not a relative path inside the gallery"
    return None


class _Fields:
    """Reads fields of a JSON document, each failure a one-line error naming the field."""

    def __init__(self, where):
        self.where = where

    def fail(self, field: str, reason: str):
        raise TrafficRetrievalError(f"{self.where}: {field}: {reason}")

    def get(self, document: dict, field: str, key: str, required: bool = True):
        if key not in document:
            if required:
                self.fail(field, "missing")
            return None
        return document[key]

    def mapping(self, value, field: str, limit: int = MAX_CATEGORIES) -> dict:
        if not isinstance(value, dict):
            self.fail(field, f"must be an object, got {shown(value)}")
        if len(value) > limit:
            self.fail(field, f"has {len(value)} entries, at most {limit} allowed")
        return value

    def integer(self, value, field: str, minimum: int, maximum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            self.fail(field, f"must be an integer from {minimum} to {maximum}, got {shown(value)}")
        return value

    def fraction(self, value, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
            self.fail(field, f"must be a number from 0 to 1, got {shown(value)}")
        return value

    def text(self, value, field: str, limit: int = MAX_NAME_CHARS) -> str:
        if not isinstance(value, str) or not value or len(value) > limit or "\0" in value:
            self.fail(field, f"must be a non-empty string of at most {limit} characters, got {shown(value)}")
        return value

    def absolute_path(self, value, field: str) -> str:
        self.text(value, field, MAX_PATH_CHARS)
        if not os.path.isabs(value):
            self.fail(field, f"must be an absolute path, got {shown(value)}")
        return value

    def choice(self, value, field: str, choices) -> str:
        if not isinstance(value, str) or value not in choices:
            self.fail(field, f"must be one of {', '.join(choices)}, got {shown(value)}")
        return value


def check_index_info(info, where) -> dict:
    """``info`` (index.json, parsed) when every field it is used by is well formed; else a
    one-line ``TrafficRetrievalError`` ``"<where>: <field>: <reason>"``. Unknown fields are
    left alone (a newer build may add some)."""
    fields = _Fields(where)
    if not isinstance(info, dict):
        fields.fail("(document)", f"must be a JSON object, got {type(info).__name__}")
    images = fields.absolute_path(fields.get(info, "images", "images"), "images")
    if os.path.normpath(images) == os.sep or os.path.normpath(images) == "//":
        fields.fail("images", "the file system root cannot be a gallery")
    from .store import INDEX_FORMAT_V1

    legacy = info.get("format") == INDEX_FORMAT_V1  # checkpoint indexes written before sources were recorded
    checkpoint = fields.get(info, "checkpoint", "checkpoint")
    if checkpoint is not None or legacy:
        fields.absolute_path(checkpoint, "checkpoint")
    identity = fields.get(info, "identity", "identity")
    model = fields.text(fields.get(info, "model", "model"), "model", MAX_PATH_CHARS)
    if legacy:
        _check_sha256(fields, identity, "identity", "the checkpoint's sha256")
        info["source"] = {"kind": "checkpoint", "path": checkpoint, "sha256": identity}  # read as format 2 says it
    else:
        _check_source(fields, info, checkpoint, identity, model)
    dim = fields.integer(fields.get(info, "dim", "dim"), "dim", 1, MAX_DIM)
    dtype = fields.get(info, "embedding_dtype", "embedding_dtype", required=False)
    if dtype is not None and dtype != "float16":
        fields.fail("embedding_dtype", f"must be float16, got {shown(dtype)}")
    for key in ("count", "unreadable"):
        fields.integer(fields.get(info, key, key), key, 0, MAX_COUNT)
    if "pending" in info:
        fields.integer(info["pending"], "pending", 0, MAX_COUNT)
    for category, count in fields.mapping(fields.get(info, "categories", "categories"), "categories").items():
        fields.integer(count, f"categories.{_key(category)}", 0, MAX_COUNT)
    for category, kind in fields.mapping(fields.get(info, "kind", "kind"), "kind").items():
        fields.choice(kind, f"kind.{_key(category)}", BUILT_KINDS)
    fields.fraction(fields.get(info, "recall@10", "recall@10"), "recall@10")
    fields.text(fields.get(info, "built_at", "built_at"), "built_at")
    labels = info.get("labels")
    if labels is not None and not isinstance(labels, dict):
        fields.fail("labels", f"must be an object or null, got {shown(labels)}")
    faiss_info = _check_faiss(fields, fields.mapping(fields.get(info, "faiss", "faiss"), "faiss"), dim)
    for key in ("gallery_norm", "query_bank"):
        if key in info and info[key] != faiss_info[key]:
            fields.fail(key, f"must be faiss.{key} {shown(faiss_info[key])}, got {shown(info[key])}")
    _check_batchnorm(fields, info)
    info["image_tta"] = fields.choice(info.get("image_tta", "none"), "image_tta", IMAGE_TTAS)  # absent: an index of before, none
    return info


def _check_batchnorm(fields: _Fields, info: dict) -> None:
    """``gallery_bn`` (absent: an index built before it existed, ``none``) and ``bn_stats``:
    null, or with ``adapt`` the statistics file's record."""
    setting = fields.choice(info.get("gallery_bn", "none"), "gallery_bn", GALLERY_BNS)
    stats = info.get("bn_stats")
    if stats is not None:
        if setting != "adapt":
            fields.fail("bn_stats", f"must be null with gallery_bn {setting}, got {shown(stats)}")
        stats = fields.mapping(stats, "bn_stats", limit=8)
        if stats.get("file") != BN_STATS_FILE:
            fields.fail("bn_stats.file", f"must be {BN_STATS_FILE}, got {shown(stats.get('file'))}")
        _check_sha256(fields, stats.get("sha256"), "bn_stats.sha256", "the statistics file's sha256")
        fields.integer(stats.get("images"), "bn_stats.images", 1, MAX_COUNT)
    info["gallery_bn"], info["bn_stats"] = setting, stats


def _check_sha256(fields: _Fields, value, field: str, what: str) -> str:
    if not isinstance(value, str) or not HEX64.fullmatch(value):
        fields.fail(field, f"must be {what} (64 hex digits), got {shown(value)}")
    return value


def _check_source(fields: _Fields, info: dict, checkpoint, identity, model: str) -> None:
    """``source``, the model the index was built with (``source.py``), and its agreement with
    the top-level ``checkpoint``, ``identity`` and ``model`` that readers also use."""
    source = fields.mapping(fields.get(info, "source", "source"), "source", limit=16)
    kind = fields.choice(fields.get(source, "source.kind", "kind"), "source.kind", SOURCE_KINDS)
    sha256 = fields.get(source, "source.sha256", "sha256")
    if kind == "checkpoint":
        path = fields.absolute_path(fields.get(source, "source.path", "path"), "source.path")
        if checkpoint != path:
            fields.fail("checkpoint", f"must be source.path {shown(path)} (the checkpoint the index was built with), got {shown(checkpoint)}")
        _check_sha256(fields, identity, "identity", "the checkpoint's sha256")
        if sha256 != identity:
            fields.fail("source.sha256", f"must be identity (the checkpoint's sha256), got {shown(sha256)}")
        return
    if checkpoint is not None:
        fields.fail("checkpoint", f"must be null for an index built with an open_clip model (source.kind pretrained), got {shown(checkpoint)}")
    name = fields.text(fields.get(source, "source.model", "model"), "source.model", MAX_PATH_CHARS)
    if name != model:
        fields.fail("model", f"must be source.model {shown(name)}, got {shown(model)}")
    weights = fields.choice(fields.get(source, "source.weights", "weights"), "source.weights", WEIGHTS_KINDS)
    pretrained = fields.get(source, "source.pretrained", "pretrained")
    if weights == "model":
        if not (HF_REPO.fullmatch(name) or (name.startswith("local-dir:") and os.path.isabs(name[len("local-dir:"):]))):
            fields.fail("source.model", f"must be hf-hub:ORG/REPO or local-dir:/absolute/folder (weights: model), got {shown(name)}")
        if pretrained is not None:
            fields.fail("source.pretrained", f"must be null (weights: model), got {shown(pretrained)}")
    elif not MODEL_NAME.fullmatch(name):
        fields.fail("source.model", f"must be a plain open_clip model name (letters, digits and _ . + -, no path), got {shown(name)}")
    elif weights == "tag" and not (isinstance(pretrained, str) and MODEL_NAME.fullmatch(pretrained)):
        fields.fail("source.pretrained", f"must be an open_clip pretrained tag (letters, digits and _ . + -), got {shown(pretrained)}")
    elif weights == "file":
        fields.absolute_path(pretrained, "source.pretrained")
    if weights == "file":
        _check_sha256(fields, sha256, "source.sha256", "the weights file's sha256")
        if identity != sha256:
            fields.fail("identity", f"must be source.sha256 (the weights file's sha256), got {shown(identity)}")
    else:
        if sha256 is not None:
            fields.fail("source.sha256", f"must be null unless the weights are a file, got {shown(sha256)}")
        fields.text(identity, "identity", MAX_PATH_CHARS + MAX_NAME_CHARS)


def _check_faiss(fields: _Fields, faiss_info: dict, dim: int) -> dict:
    """``faiss_info`` checked; ``gallery_norm`` (absent: an index built before it existed) set to ``none``."""
    norm = faiss_info.get("gallery_norm", "none")
    fields.choice(norm, "faiss.gallery_norm", GALLERY_NORMS)
    mean = faiss_info.get("gallery_mean")
    if mean is None and norm != "none":
        fields.fail("faiss.gallery_mean", f"missing (required with gallery_norm {norm})")
    if mean is not None:
        if not isinstance(mean, list) or len(mean) != dim:
            fields.fail("faiss.gallery_mean", f"must be a list of dim ({dim}) numbers, got {shown(mean)}")
        if not all(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and abs(value) <= 1.001 for value in mean):
            fields.fail("faiss.gallery_mean", "must hold finite numbers from -1 to 1 (the mean of unit vectors)")
    faiss_info["gallery_norm"] = norm
    fingerprint = fields.get(faiss_info, "faiss.fingerprint", "fingerprint")
    if not isinstance(fingerprint, str) or not HEX64.fullmatch(fingerprint):
        fields.fail("faiss.fingerprint", f"must be 64 hex digits, got {shown(fingerprint)}")
    indexes = fields.mapping(fields.get(faiss_info, "faiss.indexes", "indexes"), "faiss.indexes")
    for category, entry in indexes.items():
        if not isinstance(category, str) or not category or len(category) > MAX_NAME_CHARS:
            fields.fail("faiss.indexes", f"category names must be short strings, got {shown(category)}")
        prefix = f"faiss.indexes.{_key(category)}"
        entry = fields.mapping(entry, prefix, limit=64)
        name = fields.get(entry, f"{prefix}.file", "file")
        expected = faiss_file_name(category, fingerprint)
        if not isinstance(name, str) or not FAISS_FILE.fullmatch(name) or name != expected:
            fields.fail(f"{prefix}.file", f"must be {expected} (FAISS files are named by the build, inside the index folder), got {shown(name)}")
        kind = fields.choice(fields.get(entry, f"{prefix}.kind", "kind"), f"{prefix}.kind", BUILT_KINDS)
        fields.integer(fields.get(entry, f"{prefix}.count", "count"), f"{prefix}.count", 0, MAX_COUNT)
        fields.fraction(fields.get(entry, f"{prefix}.recall@10", "recall@10"), f"{prefix}.recall@10")
        fields.integer(fields.get(entry, f"{prefix}.recall_queries", "recall_queries"), f"{prefix}.recall_queries", 0, MAX_COUNT)
        params = fields.mapping(fields.get(entry, f"{prefix}.search_param", "search_param"), f"{prefix}.search_param", limit=8)
        allowed = SEARCH_PARAMS[kind]
        for key, value in params.items():
            if key not in allowed:
                fields.fail(f"{prefix}.search_param.{_key(key)}",
                            f"not a setting of a {kind} index (allowed: {', '.join(allowed) or 'none'})")
            fields.integer(value, f"{prefix}.search_param.{key}", 1, allowed[key])
    _check_query_bank(fields, faiss_info, fingerprint)
    return faiss_info


def _check_query_bank(fields: _Fields, faiss_info: dict, fingerprint: str) -> None:
    """``faiss.query_bank`` (absent: an index built before it existed, ``none``), its
    ``query_bank_beta`` and ``bank_offsets`` {file, sha256, count} (``query_bank.py``)."""
    bank = fields.choice(faiss_info.get("query_bank", "none"), "faiss.query_bank", QUERY_BANKS)
    faiss_info["query_bank"] = bank
    if bank == "none":
        for key in ("query_bank_beta", "bank_offsets"):
            if faiss_info.get(key) is not None:
                fields.fail(f"faiss.{key}", f"must be absent with query_bank none, got {shown(faiss_info[key])}")
        return
    beta = fields.get(faiss_info, "faiss.query_bank_beta", "query_bank_beta")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or not 0 < beta <= MAX_BANK_BETA:
        fields.fail("faiss.query_bank_beta", f"must be a number in (0, {MAX_BANK_BETA:g}], got {shown(beta)}")
    record = fields.mapping(fields.get(faiss_info, "faiss.bank_offsets", "bank_offsets"), "faiss.bank_offsets", limit=8)
    expected = bank_file_name(fingerprint)
    name = record.get("file")
    if not isinstance(name, str) or not BANK_FILE.fullmatch(name) or name != expected:
        fields.fail("faiss.bank_offsets.file", f"must be {expected} (named by the build, inside the index folder), got {shown(name)}")
    _check_sha256(fields, record.get("sha256"), "faiss.bank_offsets.sha256", "the offsets file's sha256")
    count = fields.integer(record.get("count"), "faiss.bank_offsets.count", 0, MAX_COUNT)
    indexed = sum(entry["count"] for entry in faiss_info["indexes"].values())
    if count != indexed:
        fields.fail("faiss.bank_offsets.count", f"must be the FAISS indexes' total count {indexed}, got {count}")
