"""``soup``: average the weights of several fine-tuned checkpoints of one architecture
(Wortsman et al., "Model soups", 2022).

A uniform soup averages every ingredient. A greedy soup sorts the ingredients by
their own val score, starts from the best, and adds the next one only when the
averaged model's val score strictly improves, so it is never worse on val than
its best ingredient. The output is a self-describing checkpoint like the inputs
(``model/factory.py``) with a ``soup`` entry saying how it was made.

``average_state_dicts`` and ``greedy_soup`` are pure; the ``soup`` job
(``commands/soup.py``) does the file I/O and the scoring (val official mAP@10, the
number ``train`` reports).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import TrafficRetrievalError


def average_state_dicts(state_dicts: list[dict]) -> dict:
    """Element-wise mean of floating-point tensors (accumulated in float32, cast back
    to the first dict's dtype); other tensors (step counters, ids) come from the first."""
    import torch

    if not state_dicts:
        raise ValueError("average_state_dicts needs at least one state dict")
    first = state_dicts[0]
    averaged = {}
    for key, value in first.items():
        if not (torch.is_tensor(value) and value.is_floating_point()):
            averaged[key] = value.clone() if torch.is_tensor(value) else value
            continue
        total = value.detach().to(device="cpu", dtype=torch.float32, copy=True)
        for other in state_dicts[1:]:
            total += other[key].detach().to(device="cpu", dtype=torch.float32)
        averaged[key] = (total / len(state_dicts)).to(value.dtype)
    return averaged


def greedy_soup(
    ingredients: list[dict],
    score: Callable[[dict], float],
    ingredient_scores: list[float] | None = None,
) -> tuple[dict, list[int], list[float]]:
    """Greedy soup over ``ingredients`` (state dicts), higher ``score`` is better.

    Returns ``(soup, kept, history)``: ``kept`` are indices into ``ingredients`` in the
    order they joined (the best single ingredient first); ``history`` is the score of
    every soup tried, starting with the best ingredient alone, one entry per
    ingredient, so ``max(history)`` is the soup's score. Soups average their members in
    index order (non-float tensors from the lowest kept index), so keeping all of them
    gives exactly ``average_state_dicts(ingredients)``. ``ingredient_scores`` saves
    re-scoring the ingredients when the caller already has them.
    """
    if not ingredients:
        raise ValueError("greedy_soup needs at least one ingredient")
    if ingredient_scores is None:
        ingredient_scores = [float(score(ingredient)) for ingredient in ingredients]
    if len(ingredient_scores) != len(ingredients):
        raise ValueError(f"{len(ingredient_scores)} ingredient scores for {len(ingredients)} ingredients")
    # Stable sort: on equal scores the earlier checkpoint goes first.
    order = sorted(range(len(ingredients)), key=lambda i: -ingredient_scores[i])
    kept = [order[0]]
    soup = ingredients[order[0]]
    best = float(ingredient_scores[order[0]])
    history = [best]
    for index in order[1:]:
        # Averaged in index order, so a soup that keeps everything is exactly the uniform soup.
        candidate = average_state_dicts([ingredients[i] for i in sorted(kept + [index])])
        candidate_score = float(score(candidate))
        history.append(candidate_score)
        if candidate_score > best:
            kept.append(index)
            soup, best = candidate, candidate_score
    if len(kept) == 1:
        soup = average_state_dicts([soup])  # a copy, never the caller's own dict
    return soup, kept, history


def read_ingredients(paths: list[Path], trust_architecture: bool = False) -> list[dict]:
    """Every checkpoint's payload, checked whole (``check_checkpoint``: it may come from
    someone else) and checked to share the first one's model and tensor layout."""
    from .factory import check_checkpoint, read_checkpoint

    payloads = []
    for path in paths:
        payload = read_checkpoint(path)
        check_checkpoint(payload, path, trust_architecture)
        if payloads:
            check_compatible(payloads[0], paths[0], payload, path)
        payloads.append(payload)
    return payloads


def check_compatible(first: dict, first_path: Path, payload: dict, path: Path) -> None:
    if payload.get("model_name") != first.get("model_name"):
        raise TrafficRetrievalError(
            f"{path}: model {payload.get('model_name')!r} differs from {first_path} ({first.get('model_name')!r}); a soup averages checkpoints of one architecture"
        )
    if payload.get("architecture") != first.get("architecture"):
        raise TrafficRetrievalError(f"{path}: architecture of {payload.get('model_name')!r} differs from {first_path}; a soup averages checkpoints of one architecture")
    state, first_state = payload.get("state_dict") or {}, first.get("state_dict") or {}
    missing, extra = sorted(set(first_state) - set(state)), sorted(set(state) - set(first_state))
    if missing or extra:
        detail = f"lacks {missing[0]!r}" if missing else f"has extra {extra[0]!r}"
        raise TrafficRetrievalError(f"{path}: state_dict {detail} ({len(missing)} missing, {len(extra)} extra keys vs {first_path})")
    for key, value in first_state.items():
        shape, first_shape = tuple(getattr(state[key], "shape", ())), tuple(getattr(value, "shape", ()))
        if shape != first_shape:
            raise TrafficRetrievalError(f"{path}: {key!r} has shape {list(shape)}, {first_path} has {list(first_shape)}")
