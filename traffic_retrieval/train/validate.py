"""Scoring a model on the val split: the trainer after each epoch, and ``soup`` for
each candidate average, score with the challenge's metrics through the same
encoder and ranker ``predict`` uses."""

from __future__ import annotations


def validate(model, val_set, preprocess, device: str, dtype) -> dict:
    """Val split as query set and gallery: official/strict mAP@10 and recall, as in evaluate.
    The model is left in the mode (train or eval) it came in."""
    from ..evaluation.metrics import evaluate_rankings
    from ..retrieval.encode import encode_tokens, encode_uint8_images
    from ..retrieval.search import topk_by_category

    was_training = model.training
    model.eval()
    try:
        image_embeddings = encode_uint8_images(model, val_set.images, preprocess, device, dtype)
        text_embeddings = encode_tokens(model, val_set.tokens, device, dtype)
    finally:
        model.train(was_training)
    categories = [r["category"] for r in val_set.rows]
    ranked = topk_by_category(text_embeddings, categories, image_embeddings, categories, k=10)
    names = [r["name"] for r in val_set.rows]
    names_by_attr: dict[str, set[str]] = {}
    for row in val_set.rows:
        names_by_attr.setdefault(row["attr"], set()).add(row["name"])
    report = evaluate_rankings([[names[i] for i, _ in result] for result in ranked], [names_by_attr[r["attr"]] for r in val_set.rows], categories)
    return report.to_json_dict()
