"""The FAISS layer: inner-product indexes over L2-normalised embeddings (numpy in,
numpy out), exact for small galleries and approximate for large ones, with the
search-time setting tuned to a recall target and recall@k measured against exact
search on held-out queries.

- ``flat``: ``IndexFlatIP``, exact; the default up to ``flat_max`` vectors, where a
  brute-force scan takes milliseconds.
- ``hnsw``: ``IndexHNSWFlat`` (M=32), no training, the best recall per millisecond;
  ``auto`` picks it above ``flat_max``. ``efSearch`` is tuned. Above ``reduce_dim``
  dimensions the graph is built on the gallery's top ``reduce_dim`` principal
  directions (a rotation without centring, so inner products are kept; image
  embeddings put most of their variance there) and the best ``refine_factor`` x k
  candidates are re-scored exactly with the full vectors (``IndexRefineFlat``): half the
  build time and 0.6x the search time of a full-dimension graph at the same recall
  (``benchmarks/bench_search.py``), the same exact scores returned.
- ``ivf``: ``IndexIVFFlat`` with about 4 sqrt(n) lists trained by k-means on a sample
  (64 points a list);
  smaller and faster to build than HNSW. ``nprobe`` is tuned.
- ``ivfpq``: the same lists holding product-quantised codes (``dim / 8`` bytes a vector,
  32x smaller than float32), the best 32 x k or 128 x k candidates (tuned) re-scored with
  8-bit scalar-quantised vectors (``IndexRefine``): 0.3x the memory of the other kinds
  (576 instead of 2,048 bytes a 512-d vector), for galleries that do not fit in RAM as
  float32; the scores returned are the 8-bit approximations. ``nprobe`` is tuned.
  Below ``PQ_MIN_VECTORS`` (too few to train 256 codewords per sub-space) it is exact.

Every index is wrapped in ``IndexIDMap2`` so FAISS returns image ids directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TrafficRetrievalError

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
PQ_MIN_VECTORS = 10_000
HNSW_EF_CANDIDATES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)


@dataclass
class AnnConfig:
    kind: str = "auto"
    flat_max: int = 100_000  # auto: exact search up to this many vectors per index
    recall_target: float = 0.95  # recall@k the search setting is tuned to reach (on held-out queries, with a margin)
    recall_k: int = 10
    recall_queries: int = 1000  # sampled gallery vectors used as queries (plus any text queries given)
    hnsw_m: int = 32
    hnsw_ef_construction: int = 128
    reduce_dim: int = 128  # hnsw: graph on this many principal directions, exact re-scoring (0: full vectors)
    refine_factor: int = 8  # hnsw with reduce_dim: candidates re-scored exactly, per result
    pq_refine_factors: tuple = (32, 128)  # ivfpq: candidates re-scored with 8-bit vectors, per result (tuned)
    progress: bool = False  # a progress bar while vectors are added (HNSW on 1M vectors takes minutes here)
    ivf_lists: int = 0  # 0: about 4 sqrt(n)
    pq_bytes: int = 0  # ivfpq: code bytes per vector (0: dim / 8)
    seed: int = 0


@dataclass
class AnnIndex:
    index: object  # faiss.IndexIDMap2
    kind: str
    count: int
    search_param: dict = field(default_factory=dict)  # {"efSearch": n} / {"nprobe": n} / {}
    recall: float = 1.0  # recall@k against exact search (1.0 for flat)
    recall_queries: int = 0

    def describe(self) -> dict:
        return {"kind": self.kind, "structure": self.structure(), "count": self.count, "search_param": self.search_param,
                "recall@10": round(self.recall, 4), "recall_queries": self.recall_queries}

    def structure(self) -> str:
        """What FAISS holds, in words: ``IndexHNSWFlat``, ``HNSW32 on 128 principal directions + exact re-scoring``."""
        faiss = _faiss()
        inner = faiss.downcast_index(self.index.index)
        if isinstance(inner, faiss.IndexRefine):
            base = faiss.downcast_index(inner.base_index)
            if isinstance(base, faiss.IndexIVFPQ):
                return f"IVF{base.nlist} with PQ{base.pq.M} codes + 8-bit re-scoring"
            graph = faiss.downcast_index(base.index)
            return f"HNSW{graph.hnsw.nb_neighbors(1)} on {graph.d} principal directions + exact re-scoring"
        return type(inner).__name__


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise TrafficRetrievalError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def choose_kind(kind: str, count: int, flat_max: int) -> str:
    check_kind(kind)
    if kind != "auto":
        return kind
    return "flat" if count <= flat_max else "hnsw"


def _faiss():
    try:
        import faiss
    except ImportError:
        raise TrafficRetrievalError("the index needs FAISS: pip install faiss-cpu") from None
    return faiss


def exact_topk(queries, vectors, k: int, block: int = 65536):
    """Exact top-``k`` inner products ``(scores [Q, k'], positions [Q, k'])``, in gallery blocks."""
    import numpy as np

    k = min(k, len(vectors))
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_positions = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(vectors), block):
        scores = queries @ vectors[start : start + block].T
        scores = np.concatenate([best_scores, scores], axis=1)
        positions = np.concatenate([best_positions, np.arange(start, start + scores.shape[1] - k)[None].repeat(len(queries), 0)], axis=1)
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else np.arange(k)[None].repeat(len(queries), 0)
        best_scores, best_positions = np.take_along_axis(scores, keep, 1), np.take_along_axis(positions, keep, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_positions, order, 1)


def recall_at_k(found_scores, exact_scores, k: int, tolerance: float = 1e-4) -> float:
    """Fraction of the exact top-k recovered, counting ties: a found result whose score
    reaches the exact k-th score is a hit (identical images make the ids ambiguous)."""
    import numpy as np

    k = min(k, exact_scores.shape[1])
    if len(exact_scores) == 0 or k == 0:
        return 1.0
    threshold = exact_scores[:, k - 1 : k] - tolerance
    hits = (found_scores[:, :k] >= threshold) & np.isfinite(found_scores[:, :k])
    return float(np.minimum(hits.sum(axis=1), k).mean() / k)


def _search_parameters(ann: "AnnIndex", param: dict, k: int):
    """Per-call FAISS parameters, nested to match the index: ``IndexRefine`` ->
    (``IndexPreTransform`` ->) HNSW or IVF for a re-scored index, the bare HNSW / IVF otherwise."""
    faiss = _faiss()
    if ann.kind == "flat":
        return None
    factor = int(param.get("k_factor", 1))
    if ann.kind == "hnsw":
        core = faiss.SearchParametersHNSW(efSearch=max(int(param.get("efSearch", 64)), k * factor))
    else:
        core = faiss.SearchParametersIVF(nprobe=int(param.get("nprobe", 1)))
    refine = _inner(ann)
    if not isinstance(refine, faiss.IndexRefine):
        return core
    if isinstance(faiss.downcast_index(refine.base_index), faiss.IndexPreTransform):
        core = faiss.SearchParametersPreTransform(index_params=core)
    return faiss.IndexRefineSearchParameters(k_factor=factor, base_index_params=core)


def search(ann: AnnIndex, queries, k: int, param: dict | None = None):
    """``(scores [Q, k], ids [Q, k])``; missing results (fewer than k vectors reachable) have id -1.

    Search settings are passed per call, never set on the shared index, so concurrent
    searches are safe. An approximate search that comes back short of
    ``min(k, count)`` results is retried with a wider search (up to exhaustive).
    """
    import numpy as np

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, int(k))
    param = dict(ann.search_param if param is None else param)
    while True:
        scores, ids = ann.index.search(queries, k, params=_search_parameters(ann, param, k))
        wanted = min(k, ann.count)
        if ann.kind == "flat" or bool(((ids >= 0).sum(axis=1) >= wanted).all()):
            return scores, ids
        if ann.kind == "hnsw" and param.get("efSearch", 64) < ann.count:
            param["efSearch"] = max(int(param.get("efSearch", 64)), k) * 4
        elif ann.kind in ("ivf", "ivfpq") and param.get("nprobe", 1) < _ivf(ann).nlist:
            param["nprobe"] = min(_ivf(ann).nlist, int(param.get("nprobe", 1)) * 4)
        else:
            return scores, ids


def _inner(ann: AnnIndex):
    return _faiss().downcast_index(ann.index.index)


def _ivf(ann: AnnIndex):
    """The inverted-file part of an ``ivf`` or ``ivfpq`` index."""
    faiss = _faiss()
    inner = _inner(ann)
    return faiss.extract_index_ivf(inner.base_index if isinstance(inner, faiss.IndexRefine) else inner)


def build(vectors, ids, config: AnnConfig, text_queries=None) -> AnnIndex:
    """Build an index of ``vectors`` (float32, L2-normalised) with FAISS ids ``ids``;
    tune and measure the approximate kinds on a sample of the vectors as queries
    (plus ``text_queries``, the realistic workload), half to tune, half to measure.
    A reduced HNSW graph that cannot reach the recall target (a gallery whose variance
    is not in a few directions) is rebuilt on the full vectors."""
    import numpy as np

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    count, dim = vectors.shape
    kind = "flat" if count == 0 else choose_kind(config.kind, count, config.flat_max)
    if kind == "ivfpq" and count < PQ_MIN_VECTORS:
        kind = "flat"  # too few vectors to train the codebooks, and small enough to scan
    reduce_dim = config.reduce_dim if kind == "hnsw" and 0 < config.reduce_dim < dim else 0
    ann = AnnIndex(_populated(_empty_index(vectors, kind, reduce_dim, config), vectors, ids, config.progress), kind, count)
    if kind != "flat":
        _tune_and_measure(ann, vectors, ids, config, text_queries)
        if reduce_dim and ann.recall < config.recall_target:
            ann = AnnIndex(_populated(_empty_index(vectors, kind, 0, config), vectors, ids, config.progress), kind, count)
            _tune_and_measure(ann, vectors, ids, config, text_queries)
    return ann


def _empty_index(vectors, kind: str, reduce_dim: int, config: AnnConfig):
    """The untrained-or-trained, empty FAISS index of ``kind`` wrapped in ``IndexIDMap2``."""
    import numpy as np

    faiss = _faiss()
    count, dim = vectors.shape
    if kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(reduce_dim or dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = config.hnsw_ef_construction
        if reduce_dim:
            inner = faiss.IndexRefineFlat(faiss.IndexPreTransform(principal_directions(vectors, reduce_dim, config.seed), inner))
    else:
        nlist = config.ivf_lists or max(1, min(int(4 * math.sqrt(count)), count // 39))
        if kind == "ivf":
            inner = ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            code_bytes = pq_code_bytes(dim, config.pq_bytes)
            ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, code_bytes, 8, faiss.METRIC_INNER_PRODUCT)
            ivf.by_residual = False  # codes of the vectors themselves: one lookup table a query, not one a list
            ivf.pq.cp.seed = config.seed
            inner = faiss.IndexRefine(ivf, faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT))
        rng = np.random.default_rng(config.seed)
        sample = 64 * max(nlist, 256)  # k-means sample: 64 points a list (and a PQ codeword)
        training = vectors if count <= sample else vectors[np.sort(rng.choice(count, sample, replace=False))]
        ivf.cp.seed = config.seed
        inner.train(training)
    return faiss.IndexIDMap2(inner)


def pq_code_bytes(dim: int, wanted: int = 0) -> int:
    """Sub-quantisers (one byte each): ``wanted``, or ``dim / 8``, rounded down to a divisor of ``dim``."""
    target = max(1, min(dim, wanted or dim // 8))
    return next(m for m in range(target, 0, -1) if dim % m == 0)


def _populated(index, vectors, ids, progress: bool, chunk: int = 65536):
    from tqdm import tqdm

    with tqdm(total=len(vectors), desc="faiss add", unit="vec", disable=not progress or len(vectors) <= chunk, leave=False) as bar:
        for start in range(0, len(vectors), chunk):
            index.add_with_ids(vectors[start : start + chunk], ids[start : start + chunk])
            bar.update(min(chunk, len(vectors) - start))
    return index


def principal_directions(vectors, count: int, seed: int = 0, sample: int = 100_000):
    """A FAISS ``LinearTransform`` onto the top ``count`` eigenvectors of ``X^T X`` (on a
    sample of at most ``sample`` vectors): a rotation without centring, so the inner
    product of two projected vectors approximates theirs, and no bias term."""
    import numpy as np

    faiss = _faiss()
    rng = np.random.default_rng(seed)
    rows = vectors if len(vectors) <= sample else vectors[np.sort(rng.choice(len(vectors), sample, replace=False))]
    rows = rows.astype(np.float64)
    _, eigenvectors = np.linalg.eigh(rows.T @ rows)  # ascending eigenvalues
    projection = np.ascontiguousarray(eigenvectors[:, ::-1][:, :count].T, dtype=np.float32)
    transform = faiss.LinearTransform(vectors.shape[1], count, False)
    faiss.copy_array_to_vector(projection.ravel(), transform.A)
    transform.is_trained = True
    return transform


def probe_queries(vectors, count: int, seed: int = 0, similarity: float = 0.3):
    """Queries for measuring recall: gallery vectors pulled off the image manifold,
    ``normalize(similarity * g + sqrt(1 - similarity**2) * r)`` for a sampled vector g
    and a random unit direction r. A text query sits about that far from its best
    images (CLIP's modality gap, cosine about 0.3), which is the hard case for graph
    search; gallery vectors as queries would find themselves and overstate recall."""
    import numpy as np

    rng = np.random.default_rng(seed)
    anchors = vectors[rng.choice(len(vectors), min(count, len(vectors)), replace=False)]
    noise = rng.standard_normal(anchors.shape).astype(np.float32)
    noise -= (noise * anchors).sum(axis=1, keepdims=True) * anchors  # orthogonal to the anchor
    noise /= np.linalg.norm(noise, axis=1, keepdims=True) + 1e-12
    queries = similarity * anchors + math.sqrt(1 - similarity**2) * noise
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def _tune_and_measure(ann: AnnIndex, vectors, ids, config: AnnConfig, text_queries) -> None:
    import numpy as np

    queries = probe_queries(vectors, config.recall_queries, config.seed)
    if text_queries is not None and len(text_queries):
        queries = np.concatenate([queries, np.asarray(text_queries, dtype=np.float32)])
    queries = queries[np.random.default_rng(config.seed).permutation(len(queries))]
    tune, held_out = (queries[0::2], queries[1::2]) if len(queries) > 1 else (queries, queries)
    k = config.recall_k
    exact_tune = exact_topk(tune, vectors, k)[0]
    target = min(1.0, config.recall_target + 0.02)  # margin: tuned on one half, reported on the other
    refined = {"k_factor": config.refine_factor} if isinstance(_inner(ann), _faiss().IndexRefine) else {}
    if ann.kind == "hnsw":
        smallest = k * refined.get("k_factor", 1)  # the graph must return k_factor x k candidates
        candidates = [{"efSearch": ef, **refined} for ef in HNSW_EF_CANDIDATES if smallest <= ef < 2 * ann.count] or [{"efSearch": smallest, **refined}]
    else:
        nlist = _ivf(ann).nlist
        probes = [p for p in (2 ** i for i in range(0, 32)) if p < nlist] + [nlist]
        # ivfpq: PQ scores are coarse, so a wider re-scoring (cheap: 8-bit vectors) is tried before more lists
        factors = [{"k_factor": f} for f in config.pq_refine_factors] if ann.kind == "ivfpq" else [refined]
        candidates = [{"nprobe": p, **factor} for p in probes for factor in factors]
    chosen = candidates[-1]
    for param in candidates:
        if _recall_by_ids(ann, tune, vectors, ids, k, param, exact_tune) >= target:
            chosen = param
            break
    ann.search_param = chosen
    ann.recall = _recall_by_ids(ann, held_out, vectors, ids, k, chosen, exact_topk(held_out, vectors, k)[0])
    ann.recall_queries = len(held_out)


def _recall_by_ids(ann: AnnIndex, queries, vectors, ids, k: int, param: dict, exact_scores) -> float:
    return recall_of_ids(queries, search(ann, queries, k, param)[1], vectors, ids, exact_scores, k)


def recall_of_ids(queries, found_ids, vectors, ids, exact_scores, k: int) -> float:
    """recall@k of the ids a search returned, each scored exactly against ``vectors`` (FAISS
    id ``ids[i]`` is ``vectors[i]``; a compressed index's own scores are approximate), ties
    counted as in ``recall_at_k``; a missing result (-1) is a miss."""
    import numpy as np

    ids = np.asarray(ids)
    order = np.argsort(ids, kind="stable")
    positions = order[np.clip(np.searchsorted(ids[order], found_ids), 0, len(ids) - 1)]
    valid = (found_ids >= 0) & (ids[positions] == found_ids)
    scores = np.where(valid, np.einsum("qd,qkd->qk", queries, vectors[positions]), -np.inf)
    return recall_at_k(scores.astype(np.float32), exact_scores, k)


def _faiss_reason(exc: Exception) -> str:
    """The useful end of a FAISS error (``... failed: write error in X: 4014 != 51200 (No space left on device)``)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.rsplit("failed: ", 1)[-1][:200]


def save(ann: AnnIndex, path: str | Path) -> None:
    from ..io import atomic_path

    try:
        with atomic_path(path) as tmp:
            _faiss().write_index(ann.index, str(tmp))
    except (RuntimeError, OSError) as exc:  # a full disk: a one-line error; the next run builds the file again
        raise TrafficRetrievalError(f"{path}: cannot write the FAISS index ({_faiss_reason(exc)})") from None


def load(path: str | Path, kind: str, search_param: dict, recall: float = 1.0, recall_queries: int = 0) -> AnnIndex:
    """The FAISS file at ``path``, which must be a regular file (no link, FIFO or device) and
    hold what ``build`` writes: an ``IndexIDMap2`` over an inner-product index of ``kind``."""
    import os
    import stat

    faiss = _faiss()
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        raise TrafficRetrievalError(f"{path}: cannot read FAISS index ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise TrafficRetrievalError(f"{path}: cannot read FAISS index (a {'symbolic link' if stat.S_ISLNK(mode) else 'special file'}, not a regular file)")
    try:
        index = faiss.read_index(str(path))  # already of its own type (and owning it: never re-wrap it with downcast_index)
    except RuntimeError as exc:
        raise TrafficRetrievalError(f"{path}: cannot read FAISS index ({_faiss_reason(exc)})") from None
    ann = AnnIndex(index, kind, int(index.ntotal), dict(search_param), recall, recall_queries)
    found = loaded_kind(ann)
    if found != kind:
        raise TrafficRetrievalError(f"{path}: holds {found}, not a {kind} index as index.json says")
    return ann


def loaded_kind(ann: AnnIndex) -> str:
    """What a loaded FAISS file is, in ``KINDS``' words, or a description of what else it is."""
    faiss = _faiss()
    if not isinstance(ann.index, faiss.IndexIDMap2):
        return f"a {type(ann.index).__name__}"
    inner = _inner(ann)
    if inner.metric_type != faiss.METRIC_INNER_PRODUCT:
        return "an index of another metric than inner product"
    if isinstance(inner, faiss.IndexRefine):
        base = faiss.downcast_index(inner.base_index)
        if isinstance(base, faiss.IndexIVFPQ):
            return "ivfpq"
        if isinstance(base, faiss.IndexPreTransform) and isinstance(faiss.downcast_index(base.index), faiss.IndexHNSW):
            return "hnsw"
        return f"a re-scored {type(base).__name__}"
    for kind, types in (("flat", faiss.IndexFlat), ("hnsw", faiss.IndexHNSW), ("ivf", faiss.IndexIVFFlat)):
        if isinstance(inner, types):
            return kind
    return f"a {type(inner).__name__}"
