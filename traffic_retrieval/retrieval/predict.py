"""``predict``: encode the test gallery and the queries, route each query to its
category, rank within it, and write the submission JSON (one result per line of
test_text.txt, in order, texts exactly as in the file)."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path

from ..data.prepare import IMAGE_SUFFIXES
from ..errors import TrafficRetrievalError
from .queries import SEED_PROMPT_SUFFIX, QueryConfig, text_to_encode


@dataclass
class PredictConfig:
    data: Path | None = None  # the dataset root (test/test_text.txt, test/test_images/)
    checkpoint: Path | None = None
    out: Path = Path("submission.json")
    top_k: int = 10
    model: str | None = None  # zero-shot with a plain open_clip model instead of a checkpoint
    pretrained: str | None = None
    vocabulary: Path | None = None  # vehicle vocabulary for routing (default: the published one)
    strip_vehicle_prefix: bool = False  # "This is a white Audi." -> "white Audi" before encoding
    prompt: bool = False  # the seed's prompt enhancement for vehicle queries
    prompt_suffix: str = SEED_PROMPT_SUFFIX
    rerank: bool = False  # adaption re-ranking of the top candidates
    rerank_candidates: int = 50
    rerank_neighbours: int = 10
    rerank_adapted_weight: float = 0.5
    rerank_reciprocal_weight: float = 0.5
    queries: Path | None = None  # default DATA/test/test_text.txt
    gallery: Path | None = None  # default DATA/test/test_images
    index: Path | None = None  # a built index of the gallery (traffic-retrieval index), reused instead of re-encoding
    contact_sheet: Path | None = None  # PNG of the first queries' top results
    batch_size: int = 256
    workers: int = 2
    device: str = "auto"
    precision: str = "auto"
    progress: bool = True


def read_queries(path: Path) -> list[str]:
    """Every line of the query file, in order (identical lines repeat and are all answered)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise TrafficRetrievalError(f"{path}: query file not found") from None
    except IsADirectoryError:
        raise TrafficRetrievalError(f"{path}: query file is a directory, expected a file") from None
    except OSError as exc:
        raise TrafficRetrievalError(f"{path}: cannot read query file ({exc.strerror})") from None
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
    context_length = getattr(tokenizer, "context_length", None) or 77
    is_long: dict[str, bool] = {}
    for text in texts:
        if text not in is_long:
            if hasattr(tokenizer, "encode") and getattr(tokenizer, "reduction_fn", None) is None:  # open_clip's CLIP BPE
                is_long[text] = len(tokenizer.encode(text)) + 2 > context_length  # + start and end tokens
            elif hasattr(tokenizer, "tokenizer"):  # open_clip's HFTokenizer: the wrapped tokenizer, untruncated
                is_long[text] = len(tokenizer.tokenizer(text)["input_ids"]) > context_length
            else:  # anything else: the text fills the whole context
                is_long[text] = bool(tokenizer([text])[0, -1] != 0)
    return sum(is_long[text] for text in texts)


def list_gallery_images(gallery_dir: Path) -> list[Path]:
    if not Path(gallery_dir).is_dir():
        raise TrafficRetrievalError(f"{gallery_dir}: gallery directory not found")
    images = sorted(p for p in Path(gallery_dir).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise TrafficRetrievalError(f"{gallery_dir}: no images (.jpg, .jpeg, .png, .bmp, .webp)")
    return images


def load_model_for_inference(checkpoint, model_name, pretrained, device):
    from ..model.factory import create_model, load_checkpoint

    if checkpoint:
        return load_checkpoint(checkpoint, device=device)
    if model_name:
        return create_model(model_name, pretrained, None, device)
    raise TrafficRetrievalError("give --checkpoint (a trained model) or --model/--pretrained (zero-shot)")


def rank_queries(loaded, queries: list[str], gallery, gallery_names: list[str], gallery_category_of: list[str], router, device, dtype, top_k: int,
                 query_config: QueryConfig | None = None, rerank_config=None, query_block: int = 1024) -> list[list[str]]:
    """Top-k gallery names for each query, ranked within the query's routed category,
    optionally re-ranked (``rerank_config``) using image-space evidence."""
    import torch

    from .encode import encode_texts
    from .rank import topk_by_category
    from .rerank import rerank

    query_config = query_config or QueryConfig()
    query_categories = [router(query) for query in queries]
    texts = [text_to_encode(query, category, query_config) for query, category in zip(queries, query_categories)]
    query_embeddings = encode_texts(loaded, texts, device, dtype)
    depth = max(top_k, rerank_config.candidates) if rerank_config else top_k
    ranked = topk_by_category(query_embeddings, query_categories, gallery.embeddings, gallery_category_of, depth)
    if rerank_config:
        # queries of one category have equally many candidates: re-rank them in blocks
        by_length: dict[int, list[int]] = {}
        for row, result in enumerate(ranked):
            by_length.setdefault(len(result), []).append(row)
        for rows in by_length.values():
            for start in range(0, len(rows), query_block):
                block = rows[start : start + query_block]
                indices = torch.tensor([[i for i, _ in ranked[row]] for row in block], dtype=torch.long)
                scores = torch.tensor([[score for _, score in ranked[row]] for row in block])
                flipped = gallery.flipped[indices] if gallery.flipped is not None else None
                new_scores, order = rerank(scores, gallery.embeddings[indices], flipped, rerank_config)
                reordered = indices.gather(1, order)
                for row, row_indices, row_scores in zip(block, reordered.tolist(), new_scores.tolist()):
                    ranked[row] = list(zip(row_indices, row_scores))
    return [[gallery_names[i] for i, _ in result[:top_k]] for result in ranked]


def predict(config: PredictConfig) -> dict:
    from ..data.vocabulary import QueryRouter, VehicleVocabulary
    from ..evaluation.submission import write_submission
    from ..train.trainer import autocast_dtype, resolve_device
    from .encode import encode_image_files, gallery_categories

    if config.data is None and (config.queries is None or (config.gallery is None and config.index is None)):
        raise TrafficRetrievalError("predict needs --data DIR (or --queries with --gallery or --index)")
    if config.batch_size < 1 or config.workers < 0:
        raise TrafficRetrievalError(f"--batch-size must be at least 1 and --workers zero or more, got {config.batch_size} and {config.workers}")
    if not 1 <= config.top_k <= 1000:
        raise TrafficRetrievalError(f"--top-k must be between 1 and 1000, got {config.top_k}")
    queries_path = Path(config.queries or Path(config.data) / "test" / "test_text.txt")
    gallery_dir = Path(config.gallery or Path(config.data) / "test" / "test_images")
    queries = read_queries(queries_path)

    device = resolve_device(config.device)
    dtype = autocast_dtype(config.precision, device)
    loaded = load_model_for_inference(config.checkpoint, config.model, config.pretrained, device)
    router = QueryRouter(VehicleVocabulary.load(config.vocabulary) if config.vocabulary else None)

    rerank_config = None
    if config.rerank:
        from .rerank import RerankConfig, check_rerank_config

        rerank_config = RerankConfig(config.rerank_candidates, config.rerank_neighbours, config.rerank_adapted_weight, config.rerank_reciprocal_weight)
        check_rerank_config(rerank_config)
    if config.index:
        # a built index: its embeddings and categories, no re-encoding (re-ranking then works without flips)
        from ..index.gallery import read_indexed_gallery

        indexed = read_indexed_gallery(config.index, identity=loaded.identity)
        gallery, gallery_names, category_of = indexed.as_image_encoding(), indexed.names, indexed.categories
        gallery_size = len(indexed.names) + len(indexed.unreadable)
        if not gallery_names:
            raise TrafficRetrievalError(f"{config.index}: the index holds no images")
    else:
        gallery_paths = list_gallery_images(gallery_dir)
        gallery_size = len(gallery_paths)
        gallery = encode_image_files(loaded, [str(p) for p in gallery_paths], device, dtype, config.batch_size, config.workers, config.progress, with_flipped=config.rerank)
        if not gallery.readable:
            raise TrafficRetrievalError(f"{gallery_dir}: none of the gallery images could be read (first error: {gallery.errors[0]})")
        gallery_names = [gallery_paths[i].name for i in gallery.readable]
        category_of = gallery_categories(loaded, gallery.embeddings, device, dtype)
    errors = gallery.errors
    query_config = QueryConfig(config.strip_vehicle_prefix, config.prompt, config.prompt_suffix)
    category_of_query = {query: router(query) for query in dict.fromkeys(queries)}
    truncated = count_truncated(loaded.tokenizer, [text_to_encode(query, category_of_query[query], query_config) for query in queries])
    ranked_names = rank_queries(loaded, queries, gallery, gallery_names, category_of, router, device, dtype, config.top_k, query_config, rerank_config)
    write_submission(config.out, [{"text": query, "image_names": names} for query, names in zip(queries, ranked_names)])
    contact_sheet = None
    if config.contact_sheet:
        from ..evaluation.submission import load_ground_truth
        from .contact_sheet import make_contact_sheet

        relevant = None
        truth_file = Path(config.data) / "ground_truth" / "test_gt.txt" if config.data else None
        if truth_file is not None and truth_file.is_file():
            truth = load_ground_truth(truth_file)
            if [q.text for q in truth] == queries:  # test_gt.txt is in query order
                relevant = [q.relevant_names for q in truth]
        image_dir = Path(indexed.info["images"]) if config.index else gallery_dir
        contact_sheet = str(make_contact_sheet(queries, ranked_names, image_dir, config.contact_sheet, relevant=relevant))
    return {
        "submission": str(config.out),
        "queries": len(queries),
        "empty_queries": sum(1 for query in queries if not query.strip()),  # answered like any other line
        "truncated_queries": truncated,  # longer than the model's text context, cut by the tokenizer
        "context_length": int(getattr(loaded.tokenizer, "context_length", None) or 77),
        "gallery_images": gallery_size,
        "contact_sheet": contact_sheet,
        "unreadable_images": errors,
        "gallery_per_category": {c: category_of.count(c) for c in sorted(set(category_of))},
    }
