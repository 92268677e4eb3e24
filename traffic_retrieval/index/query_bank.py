"""Querybank normalisation in an index (``query_bank: captions``, ``retrieval/adapt.py``).

An index built with ``query_bank: captions`` ranks text queries by ``cosine - offset``,
each image's offset being its soft-max similarity to the training captions the
checkpoint stores (``adapt.bank_offsets``), taken on the vectors FAISS holds (centred
when ``gallery_norm`` is ``center``). The offsets depend only on the image, the model and
``beta``, so the build computes them once per FAISS build, for every indexed image, and
writes them next to the FAISS files, ``faiss/bank_offsets.<12 hex>.safetensors`` (the
FAISS fingerprint's, which counts the bank and its beta: changing either rebuilds only
FAISS and the offsets), recorded in index.json as ``faiss.bank_offsets`` {file, sha256,
count}. ``Retriever`` loads them and ranks text queries through
``retrieval.search.BankNormalisedSearch`` (exact whenever FAISS is); image queries,
whose neighbours a caption bank does not describe, rank by cosine.

The file comes from an index folder, so it is untrusted: safetensors holds tensors only
(reading it runs no code), its size is bounded by the count index.json records, its
sha256 must be the recorded one, and it must hold exactly ``ids`` (int64, distinct) and
``offsets`` (float32, finite) of that count.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TrafficRetrievalError
from .info import bank_file_name

BYTES_PER_IMAGE = 12  # int64 id + float32 offset
HEADER_BYTES = 4096  # safetensors' JSON header for two tensors, with room to spare


def resolve_query_bank(asked: str | None, asked_beta: float | None, loaded) -> tuple[str, float]:
    """The build's ``(query_bank, beta)``: the ones asked for, else the checkpoint's recorded recipe's, else none and the default."""
    from ..retrieval.queries import QueryConfig, resolve_query_config

    recipe = resolve_query_config(QueryConfig(query_bank=asked, query_bank_beta=asked_beta), getattr(loaded, "checkpoint", None))
    return recipe.query_bank, float(recipe.query_bank_beta)


def write_bank_offsets(root: Path, fingerprint: str, ids, offsets) -> dict:
    """Write the offsets of the images ``ids`` atomically; their index.json record."""
    import numpy as np
    from safetensors.numpy import save_file

    from ..io import atomic_path, file_sha256

    relative = bank_file_name(fingerprint)
    path = Path(root) / relative
    with atomic_path(path) as tmp:
        save_file({"ids": np.ascontiguousarray(ids, dtype=np.int64), "offsets": np.ascontiguousarray(offsets, dtype=np.float32)}, str(tmp))
    return {"file": relative, "sha256": file_sha256(path), "count": int(len(ids))}


def load_bank_offsets(root: Path, record: dict):
    """``(ids, offsets)`` of an index's recorded offsets file, checked (module docstring)."""
    import numpy as np

    from ..io import read_recorded_safetensors

    path = Path(root) / record["file"]
    count = int(record["count"])
    tensors = read_recorded_safetensors(path, record.get("sha256"), count * BYTES_PER_IMAGE + HEADER_BYTES, f"the offsets of {count} images",
                                        "query_bank captions")
    if set(tensors) != {"ids", "offsets"}:
        raise TrafficRetrievalError(f"{path}: must hold exactly the tensors ids and offsets, holds {', '.join(sorted(tensors)) or 'none'}")
    ids, offsets = tensors["ids"], tensors["offsets"]
    if ids.dtype != np.int64 or offsets.dtype != np.float32 or ids.shape != (count,) or offsets.shape != (count,):
        raise TrafficRetrievalError(f"{path}: ids must be int64 and offsets float32, both of {count} values (index.json's count)")
    if not np.isfinite(offsets).all():
        raise TrafficRetrievalError(f"{path}: offsets hold non-finite values")
    if len(np.unique(ids)) != count:
        raise TrafficRetrievalError(f"{path}: an image id appears twice")
    return ids, offsets
