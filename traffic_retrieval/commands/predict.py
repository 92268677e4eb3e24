"""``predict``: encode the test gallery (or read a built index of it) and the queries,
route each query to its category, rank within it (or, with the soft scope, across
all categories with a penalty outside it), optionally re-rank, and write the
submission JSON (one result per line of test_text.txt, in order, texts exactly as in
the file). With ``--gallery-norm center`` the gallery embeddings (and their flipped
twins for re-ranking) are centred on the gallery's mean and re-normalised before
ranking (``retrieval/adapt.py``). When DATA/ground_truth/test_label.txt exists the
summary reports how well gallery images were routed to their categories."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import ModelSource, ReaderOptions, RuntimeOptions, option
from ..errors import TrafficRetrievalError
from ..retrieval.queries import QueryOptions
from ..retrieval.rerank import RerankConfig

HELP = "rank the test gallery for every query and write the submission JSON"


@dataclass
class PredictConfig(ModelSource, RuntimeOptions, ReaderOptions, QueryOptions):
    data: Path | None = option(None, help="dataset root (uses test/test_text.txt and test/test_images/)")
    out: Path = option(Path("submission.json"), help="the submission JSON")
    top_k: int = option(10, minimum=1, maximum=1000, help="results per query")
    queries: Path | None = option(None, help="query file (default DATA/test/test_text.txt)")
    gallery: Path | None = option(None, help="gallery directory (default DATA/test/test_images)")
    index: Path | None = option(None, help="a built index of the gallery (traffic-retrieval index): reuse it instead of re-encoding")
    contact_sheet: Path | None = option(None, metavar="OUT.png",
                                        help="also draw the first 20 queries' top results (relevant ones outlined when DATA/ground_truth/test_gt.txt exists)")
    rerank: RerankConfig = field(default_factory=RerankConfig)


Config = PredictConfig


def list_gallery_images(gallery_dir: Path) -> list[Path]:
    from ..data.prepare import IMAGE_SUFFIXES

    if not Path(gallery_dir).is_dir():
        raise TrafficRetrievalError(f"{gallery_dir}: gallery directory not found")
    images = sorted(p for p in Path(gallery_dir).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise TrafficRetrievalError(f"{gallery_dir}: no images (.jpg, .jpeg, .png, .bmp, .webp)")
    return images


def load_model_for_inference(checkpoint, model_name, pretrained, device, trust_checkpoint: bool = False):
    from ..model.factory import create_model, load_checkpoint

    if checkpoint:
        return load_checkpoint(checkpoint, device=device, trust_architecture=trust_checkpoint)
    if model_name:
        return create_model(model_name, pretrained, None, device)
    raise TrafficRetrievalError("give --checkpoint (a trained model) or --model/--pretrained (zero-shot)")


@dataclass
class _Gallery:
    search: object  # retrieval.search.GallerySearch over gallery rows
    names: list[str]
    embeddings: object  # [n, dim], row order of ``names``
    flipped: object  # embeddings of the flipped images, or None
    categories: list[str]  # the category each image is searched in (the model's vote; an index's: its labels' when it had them)
    unreadable: list[str]
    size: int  # files in the gallery, readable or not
    image_dir: Path


def _read_gallery(config: PredictConfig, loaded, runtime, with_flipped: bool, gallery_bn: str = "none", image_tta: str = "none") -> _Gallery:
    """The gallery's embeddings: from a built index, or encoded now (with ``gallery_bn``
    ``adapt``, after re-estimating the image tower's BatchNorm statistics on the gallery;
    ``image_tta``: ``encode.encode_uint8_images``)."""
    from ..retrieval.encode import encode_image_files, gallery_categories
    from ..retrieval.search import ExactGallerySearch

    if config.index:
        # a built index: its embeddings and categories, no re-encoding (re-ranking then works without flips)
        from ..index.gallery import read_indexed_gallery

        indexed = read_indexed_gallery(config.index, identity=loaded.identity)
        if not indexed.names:
            raise TrafficRetrievalError(f"{config.index}: the index holds no images")
        return _Gallery(indexed.exact_search(), indexed.names, indexed.embeddings, None, indexed.categories,
                        list(indexed.unreadable), len(indexed.names) + len(indexed.unreadable), Path(indexed.info["images"]))
    gallery_dir = Path(config.gallery or Path(config.data) / "test" / "test_images")
    paths = list_gallery_images(gallery_dir)
    if gallery_bn == "adapt":
        from ..retrieval.encode import adapt_batchnorm_to_files

        adapt_batchnorm_to_files(loaded, [str(p) for p in paths], runtime, config.batch_size, config.workers, config.progress, image_tta)
    encoded = encode_image_files(loaded, [str(p) for p in paths], runtime.device, runtime.dtype, config.batch_size, config.workers, config.progress,
                                 with_flipped=with_flipped, image_tta=image_tta)
    if not encoded.readable:
        raise TrafficRetrievalError(f"{gallery_dir}: none of the gallery images could be read (first error: {encoded.errors[0]})")
    categories = gallery_categories(loaded, encoded.embeddings, runtime.device, runtime.dtype)
    return _Gallery(ExactGallerySearch(encoded.embeddings, categories), [paths[i].name for i in encoded.readable], encoded.embeddings, encoded.flipped,
                    categories, encoded.errors, len(paths), gallery_dir)


def run(config: PredictConfig) -> dict:
    from ..data.vocabulary import VehicleVocabulary
    from ..evaluation.submission import write_submission
    from ..retrieval.queries import QueryEncoder, count_truncated, query_recipe, read_queries, resolve_query_config
    from ..retrieval.rerank import rerank_hits
    from ..retrieval.adapt import adapt_gallery, gallery_mean
    from ..retrieval.encode import gallery_bank_offsets
    from ..retrieval.search import ExactGallerySearch, bank_normalised, search_scoped
    from ..runtime import resolve_runtime

    if config.data is None and (config.queries is None or (config.gallery is None and config.index is None)):
        raise TrafficRetrievalError("predict needs --data DIR (or --queries with --gallery or --index)")
    queries = read_queries(Path(config.queries or Path(config.data) / "test" / "test_text.txt"))
    runtime = resolve_runtime(config.device, config.precision)
    loaded = load_model_for_inference(config.checkpoint, config.model, config.pretrained, runtime.device, config.trust_checkpoint)
    if config.index:  # the gallery was encoded as the index says
        from dataclasses import replace

        from ..index.retriever import index_encoding
        from ..index.store import IndexLayout

        layout = IndexLayout(config.index)
        query_config = replace(config.query, **index_encoding(config.query, layout.read_index_json(), layout.root))
    else:
        query_config = config.query
    query_config = resolve_query_config(query_config, loaded.checkpoint)
    gallery = _read_gallery(config, loaded, runtime, with_flipped=config.rerank.enabled, gallery_bn=query_config.gallery_bn,
                            image_tta=query_config.image_tta)

    query_encoder = QueryEncoder(loaded, query_config, runtime.device, runtime.dtype,
                                 vocabulary=VehicleVocabulary.load(config.vocabulary) if config.vocabulary else None)
    encoded = query_encoder.encode(queries)
    recipe = query_encoder.config
    if recipe.gallery_norm != "none":  # one mean, the gallery's, for the embeddings and their flipped twins
        mean = gallery_mean(gallery.embeddings)
        gallery.embeddings = adapt_gallery(gallery.embeddings, recipe.gallery_norm, mean)
        gallery.flipped = adapt_gallery(gallery.flipped, recipe.gallery_norm, mean) if gallery.flipped is not None else None
        gallery.search = ExactGallerySearch(gallery.embeddings, gallery.categories, getattr(gallery.search, "ids", None))
    offsets = gallery_bank_offsets(loaded, gallery.embeddings, recipe.query_bank, recipe.query_bank_beta, runtime.device, runtime.dtype)
    gallery.search = bank_normalised(gallery.search, offsets, getattr(gallery.search, "ids", None))
    depth = max(config.top_k, config.rerank.candidates) if config.rerank.enabled else config.top_k
    hits = search_scoped(gallery.search, encoded.embeddings, encoded.categories, depth, recipe.gallery_scope, recipe.routing_penalty)
    if config.rerank.enabled:
        hits = rerank_hits(hits, gallery.embeddings, gallery.flipped, config.rerank, query_embeddings=encoded.embeddings)
    ranked_names = [[gallery.names[i] for i, _ in found[: config.top_k]] for found in hits]
    write_submission(config.out, [{"text": query, "image_names": names} for query, names in zip(queries, ranked_names)])
    contact_sheet = _contact_sheet(config, queries, ranked_names, gallery.image_dir) if config.contact_sheet else None
    return {
        "submission": str(config.out),
        "queries": len(queries),
        "query_recipe": query_recipe(recipe),
        "queries_per_category": {c: encoded.categories.count(c) for c in sorted(set(encoded.categories))},
        "empty_queries": sum(1 for query in queries if not query.strip()),  # answered like any other line
        "truncated_queries": count_truncated(loaded.tokenizer, encoded.texts),  # longer than the model's text context, cut by the tokenizer
        "context_length": int(getattr(loaded.tokenizer, "context_length", None) or 77),
        "gallery_images": gallery.size,
        "contact_sheet": contact_sheet,
        "unreadable_images": gallery.unreadable,
        "gallery_per_category": {c: gallery.categories.count(c) for c in sorted(set(gallery.categories))},
        "gallery_routing": _gallery_routing(config, gallery),
    }


def _gallery_routing(config: PredictConfig, gallery: _Gallery) -> dict | None:
    """``retrieval.adapt.routing_accuracy`` of the gallery's categories against
    DATA/ground_truth/test_label.txt (images it labels; unlabelled ones are counted), or
    None without that file."""
    import os

    from ..data.labels import read_label_file
    from ..retrieval.adapt import routing_accuracy

    label_file = Path(config.data) / "ground_truth" / "test_label.txt" if config.data else None
    if label_file is None or not label_file.is_file():
        return None
    records, _ = read_label_file(label_file)
    truth = {record.image_name: record.category for record in records}
    pairs = [(category, truth.get(name, truth.get(os.path.splitext(name)[0])))  # label names may omit the suffix
             for name, category in zip(gallery.names, gallery.categories)]
    labelled = [(predicted, true) for predicted, true in pairs if true is not None]
    report = routing_accuracy([p for p, _ in labelled], [t for _, t in labelled])
    return {**report, "unlabelled": len(pairs) - len(labelled), "labels": str(label_file)}


def _contact_sheet(config: PredictConfig, queries: list[str], ranked_names: list[list[str]], image_dir: Path) -> str:
    from ..evaluation.submission import load_ground_truth
    from ..retrieval.contact_sheet import make_contact_sheet

    relevant = None
    truth_file = Path(config.data) / "ground_truth" / "test_gt.txt" if config.data else None
    if truth_file is not None and truth_file.is_file():
        truth = load_ground_truth(truth_file)
        if [q.text for q in truth] == queries:  # test_gt.txt is in query order
            relevant = [q.relevant_names for q in truth]
    return str(make_contact_sheet(queries, ranked_names, image_dir, config.contact_sheet, relevant=relevant))


def print_result(summary: dict, config: PredictConfig) -> None:
    from ..errors import printable

    print(f"wrote {summary['submission']}: {summary['queries']} queries over {summary['gallery_images']} gallery images "
          f"({', '.join(f'{n} {c}' for c, n in summary['gallery_per_category'].items())})")
    recipe = summary["query_recipe"]
    scope = recipe["gallery_scope"] + (f" (penalty {recipe['routing_penalty']:g})" if "routing_penalty" in recipe else "")
    norm = f", gallery norm {recipe['gallery_norm']}" if recipe.get("gallery_norm", "none") != "none" else ""
    norm += f", gallery BatchNorm {recipe['gallery_bn']}" if recipe.get("gallery_bn", "none") != "none" else ""
    norm += f", image TTA {recipe['image_tta']}" if recipe.get("image_tta", "none") != "none" else ""
    norm += f", query bank {recipe['query_bank']} (beta {recipe['query_bank_beta']:g})" if recipe.get("query_bank", "none") != "none" else ""
    print(f"queries: text form {recipe['text_form']}, router {recipe['router']}, gallery scope {scope}{norm} "
          f"({', '.join(f'{n} {c}' for c, n in summary['queries_per_category'].items())})")
    routing = summary.get("gallery_routing")
    if routing:
        from ..retrieval.adapt import format_routing

        print(f"gallery {format_routing(routing)}" + (f"; {routing['unlabelled']} images unlabelled" if routing.get("unlabelled") else ""))
    if summary["empty_queries"]:
        print(f"{summary['empty_queries']} queries are empty or whitespace-only (answered like the others)")
    if summary["truncated_queries"]:
        print(f"{summary['truncated_queries']} queries exceed the model's {summary['context_length']}-token text context and were truncated")
    if summary.get("contact_sheet"):
        print(f"wrote {summary['contact_sheet']}")
    for message in summary["unreadable_images"][:10]:
        print(f"skipped unreadable image: {printable(message)}")  # the message quotes a gallery file's name
    if summary["unreadable_images"]:
        print(f"{len(summary['unreadable_images'])} gallery images could not be read and were skipped")
