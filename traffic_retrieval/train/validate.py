"""Scoring a model on the val split: the trainer after each epoch, and ``soup`` for
each candidate average, score with the challenge's metrics through the same query
recipe (router, text form, gallery scope, the gallery's normalisation, BatchNorm statistics
and test-time augmentation) and ranker ``predict`` uses.

Besides the official/strict mAP@10 and recalls (val captions as queries, val images
as the gallery), the report holds ``t2i_R@10``: open_clip's one-to-one text-to-image
recall@10 (the seed's validation and greedy-soup criterion): caption i finds image i
among the top 10 of the whole val set.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ValQueries:
    """The val captions as queries: tokenized in the query form, with their routed categories."""

    tokens: object  # int tensor [n, context]
    categories: list[str]
    gallery_scope: str = "routed"
    gallery_norm: str = "none"
    gallery_bn: str = "none"  # adapt: the val images are encoded by a copy of the model with BatchNorm statistics of their own (AdaBN)
    image_tta: str = "none"  # flip: each val image encoded as the mean of it and its mirror (encode.encode_uint8_images)
    routing_penalty: float = 0.05
    routing_texts: dict | None = None  # category -> captions: also report how the val images route (gallery_categories)
    tokenizer: object = None
    query_bank: str = "none"  # captions: ranked by cosine minus each val image's offset against bank_texts (adapt.bank_offsets)
    query_bank_beta: float = 10.0
    bank_texts: dict | None = None  # category -> captions of the query bank (the checkpoint's category_texts)


def val_queries(val_set, tokenizer, recipe, routing_texts: dict | None = None, bank_texts: dict | None = None) -> ValQueries:
    """Each val caption routed and rewritten as ``predict`` would a query (``recipe``: a
    resolved ``retrieval.queries.QueryConfig``). ``routing_texts`` (the category captions a
    checkpoint stores) adds the routing accuracy of the val images to the report; they are
    also the query bank of ``query_bank: captions`` unless ``bank_texts`` are given."""
    from ..data.vocabulary import make_router
    from ..model.tokens import tokenize
    from ..retrieval.queries import text_to_encode

    route = make_router(recipe.router)
    categories = [route(row["text"]) for row in val_set.rows]
    texts = [text_to_encode(row["text"], category, recipe) for row, category in zip(val_set.rows, categories)]
    bank = recipe.query_bank or "none"
    if bank != "none":
        from ..retrieval.encode import bank_captions

        bank_captions(bank_texts or routing_texts)  # none stored: the one-line error now, not after the first epoch
    return ValQueries(tokenize(tokenizer, texts), categories, recipe.gallery_scope, recipe.gallery_norm, recipe.gallery_bn or "none",
                      recipe.image_tta or "none", recipe.routing_penalty, routing_texts, tokenizer, bank, recipe.query_bank_beta,
                      bank_texts or routing_texts)


def one_to_one_recall(text_embeddings, image_embeddings, k: int = 10, block: int = 1024) -> float:
    """Share of texts whose own image (same row) ranks in the top ``k`` of all images
    (ties count against it, as open_clip's ``torch.topk`` evaluation may)."""
    import torch

    if len(text_embeddings) == 0:
        return 0.0
    found = 0
    for start in range(0, len(text_embeddings), block):
        scores = text_embeddings[start : start + block] @ image_embeddings.T
        own = scores[torch.arange(len(scores)), torch.arange(start, start + len(scores))]
        found += int(((scores > own[:, None]).sum(dim=1) < k).sum())
    return found / len(text_embeddings)


def validate(model, val_set, preprocess, device: str, dtype, queries: ValQueries | None = None) -> dict:
    """Val split as query set and gallery: official/strict mAP@10 and recall, as in evaluate,
    plus ``t2i_R@10``. ``queries`` None: the captions as tokenized for training, each
    searched in its labelled category. The model is left in the mode it came in."""
    from ..evaluation.metrics import evaluate_rankings
    from ..retrieval.adapt import adapt_gallery
    from ..retrieval.encode import encode_tokens, encode_uint8_images
    from ..retrieval.search import ExactGallerySearch, bank_normalised, search_scoped

    gallery_categories = [r["category"] for r in val_set.rows]
    queries = queries or ValQueries(val_set.tokens, gallery_categories)
    was_training = model.training
    model.eval()
    try:
        image_embeddings = encode_uint8_images(_gallery_model(model, val_set, preprocess, device, dtype, queries.gallery_bn, queries.image_tta),
                                               val_set.images, preprocess, device, dtype, image_tta=queries.image_tta)
        text_embeddings = encode_tokens(model, queries.tokens, device, dtype)
        ranked_embeddings = adapt_gallery(image_embeddings, queries.gallery_norm)
        offsets = _bank_offsets(model, queries, ranked_embeddings, device, dtype)
    finally:
        model.train(was_training)
    gallery = bank_normalised(ExactGallerySearch(ranked_embeddings, gallery_categories), offsets)
    ranked = search_scoped(gallery, text_embeddings, queries.categories, 10, queries.gallery_scope, queries.routing_penalty)
    names = [r["name"] for r in val_set.rows]
    names_by_attr: dict[str, set[str]] = {}
    for row in val_set.rows:
        names_by_attr.setdefault(row["attr"], set()).add(row["name"])
    report = evaluate_rankings([[names[i] for i, _ in result] for result in ranked], [names_by_attr[r["attr"]] for r in val_set.rows], gallery_categories)
    scores = {**report.to_json_dict(), "t2i_R@10": one_to_one_recall(text_embeddings, image_embeddings)}  # open_clip's: raw embeddings
    if queries.routing_texts:
        scores["routing"] = _routing(model, queries, image_embeddings, gallery_categories, device, dtype)
    return scores


def _bank_offsets(model, queries: ValQueries, gallery_embeddings, device: str, dtype):
    """``encode.gallery_bank_offsets`` of the val images for the queries' ``query_bank`` (None: none)."""
    from types import SimpleNamespace

    from ..retrieval.encode import gallery_bank_offsets

    view = SimpleNamespace(model=model, tokenizer=queries.tokenizer, checkpoint=None)
    return gallery_bank_offsets(view, gallery_embeddings, queries.query_bank, queries.query_bank_beta, device, dtype, queries.bank_texts)


def _gallery_model(model, val_set, preprocess, device: str, dtype, gallery_bn: str, image_tta: str = "none", batch_size: int = 256):
    """The model that encodes the val images: ``model`` itself, or for ``gallery_bn`` ``adapt``
    (and a tower with BatchNorm) a copy whose statistics are the val images' own (AdaBN; as
    ``image_tta`` exposes them), so the model being trained keeps its running statistics."""
    import copy

    from ..retrieval.adapt import batchnorm_layers, estimate_batchnorm, image_tta_parts

    if gallery_bn != "adapt" or not batchnorm_layers(model):
        return model
    adapted = copy.deepcopy(model)
    batches = (val_set.images[start : start + batch_size] for start in range(0, len(val_set.images), batch_size))
    estimate_batchnorm(adapted, batches, preprocess, device, dtype, "exposure" in image_tta_parts(image_tta))
    return adapted


def _routing(model, queries: ValQueries, image_embeddings, true_categories: list[str], device: str, dtype) -> dict:
    """How the val images route to a category (``retrieval.encode.gallery_categories``, as ``predict``
    and ``index`` route a gallery) against their labels."""
    from types import SimpleNamespace

    from ..retrieval.adapt import routing_accuracy
    from ..retrieval.encode import gallery_categories

    view = SimpleNamespace(model=model, tokenizer=queries.tokenizer, checkpoint={"category_texts": queries.routing_texts})
    was_training = model.training
    model.eval()
    try:
        predicted = gallery_categories(view, image_embeddings, device, dtype)
    finally:
        model.train(was_training)
    return routing_accuracy(predicted, true_categories)
