"""``soup``: average the weights of several fine-tuned checkpoints of one architecture
(Wortsman et al., "Model soups", 2022).

A uniform soup averages every ingredient. A greedy soup sorts the ingredients by
their own val score, starts from the best, and adds the next one only when the
averaged model's val score strictly improves, so it is never worse on val than
its best ingredient. The output is a self-describing checkpoint like the inputs
(``model/factory.py``) with a ``soup`` entry saying how it was made.

``average_state_dicts`` and ``greedy_soup`` are pure; ``make_soup`` does the file
I/O and the scoring (val official mAP@10, the number ``train`` reports).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import TrafficRetrievalError

METHODS = ("greedy", "uniform")
# Per-run results of the first ingredient that would mislabel the soup.
_DROPPED_KEYS = ("metrics", "history", "epoch", "optimizer", "scaler")


@dataclass
class SoupConfig:
    checkpoints: list[Path]
    val: Path | None = None  # dataset root in the challenge layout; its val split scores ingredients (required for greedy)
    out: Path | None = None
    method: str = "greedy"  # or "uniform"
    device: str = "auto"
    precision: str = "auto"  # autocast while scoring: auto, fp32, bf16 or fp16
    workers: int = 2  # image decoding processes for the val split
    progress: bool = True


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


def read_ingredients(paths: list[Path]) -> list[dict]:
    """Every checkpoint's payload, checked to share the first one's model and tensor layout."""
    from .factory import read_checkpoint

    payloads = []
    for path in paths:
        payload = read_checkpoint(path)
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


def val_scorer(first_path: Path, val_dir: Path, config: SoupConfig) -> Callable[[dict], float]:
    """``score(state_dict)``: val official mAP@10 of the first checkpoint's model with those weights.

    The val images are decoded once with the first checkpoint's preprocessing, and one
    model object is reused: each candidate is copied into it with ``load_state_dict``.
    """
    import torch

    from ..data.prepare import split_rows
    from ..train.data import build_training_set
    from ..train.trainer import autocast_dtype, resolve_device, validate
    from .factory import load_checkpoint

    labels = val_label_file(val_dir)
    _, _, rows, _ = split_rows(val_dir, "val")
    if not rows:
        raise TrafficRetrievalError(f"{labels}: no usable val records (run `traffic-retrieval prepare` to see why)")
    device = resolve_device(config.device)
    dtype = autocast_dtype(config.precision, device)
    loaded = load_checkpoint(first_path, device=device)
    val_set = build_training_set(rows, loaded.preprocess, loaded.tokenizer, None, config.workers)

    def score(state_dict: dict) -> float:
        loaded.model.load_state_dict(state_dict, strict=True)
        with torch.no_grad():
            metrics = validate(loaded.model, val_set, loaded.preprocess, device, dtype)
        loaded.model.eval()
        return float(metrics["official_mAP@10"])

    return score


def val_label_file(val_dir: Path) -> Path:
    from ..data.prepare import label_file

    if not Path(val_dir).is_dir():
        raise TrafficRetrievalError(f"{val_dir}: val dataset directory not found")
    labels = label_file(val_dir, "val")
    if not labels.is_file():
        raise TrafficRetrievalError(f"{labels}: val label file not found (--val takes the dataset root)")
    return labels


def _check_config(config: SoupConfig) -> None:
    if config.method not in METHODS:
        raise TrafficRetrievalError(f"--method must be one of {', '.join(METHODS)}, got {config.method!r}")
    if len(config.checkpoints) < 2:
        raise TrafficRetrievalError(f"a soup needs at least two checkpoints, got {len(config.checkpoints)}")
    if config.out is None:
        raise TrafficRetrievalError("soup needs --out CKPT")
    if config.method == "greedy" and config.val is None:
        raise TrafficRetrievalError("a greedy soup needs --val DATA (its val split scores the ingredients); use --method uniform without it")
    if config.val is not None:
        val_label_file(config.val)  # before reading gigabytes of checkpoints
    if config.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise TrafficRetrievalError(f"precision must be auto, fp32, bf16 or fp16, got {config.precision!r}")


def make_soup(config: SoupConfig) -> dict:
    """Read, check, score and average the checkpoints; write ``config.out``; return the report."""
    from tqdm import tqdm

    from ..io import atomic_torch_save

    _check_config(config)
    paths = [Path(p) for p in config.checkpoints]
    payloads = read_ingredients(paths)
    state_dicts = [payload["state_dict"] for payload in payloads]

    score, bar, ingredient_scores = None, None, None
    if config.val is not None:
        val_score = val_scorer(paths[0], Path(config.val), config)
        # every ingredient, then (greedy) each candidate and the uniform soup
        evaluations = len(paths) + (len(paths) if config.method == "greedy" else 1)
        bar = tqdm(total=evaluations, desc="val scores", unit="model", leave=False, disable=not config.progress)

        def score(state_dict: dict) -> float:
            value = val_score(state_dict)
            bar.update(1)
            return value

        ingredient_scores = [score(state) for state in state_dicts]

    history: list[float] = []
    uniform_score = None
    if config.method == "greedy":
        soup, kept, history = greedy_soup(state_dicts, score, ingredient_scores)
        soup_score = max(history)
        if len(kept) == len(state_dicts):
            uniform_score = soup_score  # the last candidate was the uniform soup
        else:
            uniform_score = score(average_state_dicts(state_dicts))
    else:
        soup, kept = average_state_dicts(state_dicts), list(range(len(state_dicts)))
        soup_score = uniform_score = score(soup) if score is not None else None
    if bar is not None:
        bar.close()

    scores = {
        "metric": "val official_mAP@10",
        "ingredients": ingredient_scores,
        "uniform": uniform_score,
        "soup": soup_score,
        "history": history,
    }
    soup_record = {
        "method": config.method,
        "ingredients": [str(p) for p in paths],
        "kept": [str(paths[i]) for i in kept],
        "val": str(config.val) if config.val is not None else None,
        "scores": scores,
    }
    output = {key: value for key, value in payloads[0].items() if key not in _DROPPED_KEYS}
    output["state_dict"] = soup
    output["soup"] = soup_record
    atomic_torch_save(output, config.out)
    return {
        "out": str(config.out),
        "method": config.method,
        "ingredients": [{"path": str(p), "official_mAP@10": None if ingredient_scores is None else ingredient_scores[i]} for i, p in enumerate(paths)],
        "kept": [str(paths[i]) for i in kept],
        "kept_indices": kept,
        "soup_official_mAP@10": soup_score,
        "uniform_official_mAP@10": uniform_score,
        "history": history,
    }


def format_report(report: dict) -> str:
    """Each ingredient's val score (x100), which ones the soup kept, and the soup's score."""

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    kept = set(report["kept_indices"])
    lines = [f"{'':<4} {'official mAP@10':>15}  ingredient"]
    for i, ingredient in enumerate(report["ingredients"]):
        lines.append(f"{'kept' if i in kept else '':<4} {percent(ingredient['official_mAP@10']):>15}  {ingredient['path']}")
    lines.append(f"{report['method']} soup of {len(kept)}/{len(report['ingredients'])}: {percent(report['soup_official_mAP@10'])}")
    if report["method"] == "greedy":
        lines.append(f"uniform soup of all: {percent(report['uniform_official_mAP@10'])}")
    lines.append(f"wrote {report['out']} (scores x100 on the val split)")
    return "\n".join(lines)
