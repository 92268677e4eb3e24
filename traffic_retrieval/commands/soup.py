"""``soup``: average the weights of several fine-tuned checkpoints of one architecture
(uniform, or greedy by a val criterion: official mAP@10, or the seed's text-to-image
R@10 with one caption per image; ``model/soup.py``). The criterion is scored on the
camera-domain val split of ``--val`` (``val_camera``, in the test's surveillance look)
where the dataset has one, else on its val split (``--val-split``). The val captions are
queried in the first checkpoint's recorded query recipe (text form, router, gallery
scope). The output is a self-describing checkpoint like the inputs with a ``soup``
entry saying how it was made."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from ..config import CheckpointTrust, RuntimeOptions, option
from ..data.prepare import CAMERA_VAL_SPLIT
from ..errors import TrafficRetrievalError
from ..options import SoupCriterion, SoupMethod

HELP = "average checkpoints' weights (uniform or greedy on the val split)"
# Per-run results of the first ingredient that would mislabel the soup.
_DROPPED_KEYS = ("metrics", "history", "epoch", "optimizer", "scaler")
ValSplit = Literal["auto", "val", "val_camera"]
"""The split of --val that scores: auto is the camera-domain val_camera where the dataset has its labels, else val."""


@dataclass
class SoupConfig(RuntimeOptions, CheckpointTrust):
    checkpoints: list[Path] = option(default_factory=list, help="the checkpoints to average (two or more)")
    val: Path | None = option(None, help="dataset root whose val split scores the ingredients (needed for greedy)")
    val_split: ValSplit = option("auto", help="the split of --val that scores: val_camera (camera-domain), val; auto: val_camera where present")
    out: Path | None = option(None, help="the soup checkpoint to write")
    method: SoupMethod = option("greedy", help="greedy keeps an ingredient only when the val score improves")
    criterion: SoupCriterion = option("official", help="the val score: official mAP@10, or r10 (text-to-image R@10, one caption per image: the seed's)")
    workers: int = option(2, minimum=0, help="image decoding processes for the val split")
    progress: bool = option(True, help="progress bars")


Config = SoupConfig


CRITERION_METRICS = {"official": "official_mAP@10", "r10": "t2i_R@10"}  # criterion -> train.validate report key


def scoring_split(val_dir: Path, val_split: str) -> str:
    """The split of ``val_dir`` that scores: ``val_split``, where auto is val_camera when its label file exists, else val."""
    from ..data.prepare import label_file

    if val_split != "auto":
        return val_split
    return CAMERA_VAL_SPLIT if label_file(val_dir, CAMERA_VAL_SPLIT).is_file() else "val"


def val_scorer(first_path: Path, val_dir: Path, config: SoupConfig) -> Callable[[dict], float]:
    """``score(state_dict)``: the val criterion of the first checkpoint's model with those weights,
    on the split ``scoring_split`` names.

    The val images are decoded once with the first checkpoint's preprocessing, and one
    model object is reused: each candidate is copied into it with ``load_state_dict``.
    """
    import torch

    from ..data.prepare import split_rows
    from ..model.factory import load_checkpoint
    from ..retrieval.queries import resolve_query_config
    from ..runtime import resolve_runtime
    from ..train.data import build_training_set
    from ..train.validate import val_queries, validate

    split = scoring_split(val_dir, config.val_split)
    labels = val_label_file(val_dir, split)
    _, _, rows, _ = split_rows(val_dir, split)
    if not rows:
        raise TrafficRetrievalError(f"{labels}: no usable {split} records (run `traffic-retrieval prepare` to see why)")
    runtime = resolve_runtime(config.device, config.precision)
    device, dtype = runtime.device, runtime.dtype
    loaded = load_checkpoint(first_path, device=device, trust_architecture=config.trust_checkpoint)
    recipe = resolve_query_config(None, loaded.checkpoint)
    val_set = build_training_set(rows, loaded.preprocess, loaded.tokenizer, None, config.workers, recipe.text_form)
    queries = val_queries(val_set, loaded.tokenizer, recipe, bank_texts=(loaded.checkpoint or {}).get("category_texts"))
    metric = CRITERION_METRICS[config.criterion]

    def score(state_dict: dict) -> float:
        loaded.model.load_state_dict(state_dict, strict=True)
        with torch.no_grad():
            metrics = validate(loaded.model, val_set, loaded.preprocess, device, dtype, queries)
        loaded.model.eval()
        return float(metrics[metric])

    return score


def val_label_file(val_dir: Path, split: str = "val") -> Path:
    from ..data.prepare import label_file

    if not Path(val_dir).is_dir():
        raise TrafficRetrievalError(f"{val_dir}: val dataset directory not found")
    labels = label_file(val_dir, split)
    if not labels.is_file():
        raise TrafficRetrievalError(f"{labels}: {split} label file not found (--val takes the dataset root)")
    return labels


def _check_config(config: SoupConfig) -> None:
    if len(config.checkpoints) < 2:
        raise TrafficRetrievalError(f"a soup needs at least two checkpoints, got {len(config.checkpoints)}")
    if config.out is None:
        raise TrafficRetrievalError("soup needs --out CKPT")
    if config.method == "greedy" and config.val is None:
        raise TrafficRetrievalError("a greedy soup needs --val DATA (its val split scores the ingredients); use --method uniform without it")
    if config.val is not None:
        val_label_file(config.val, scoring_split(config.val, config.val_split))  # before reading gigabytes of checkpoints


def run(config: SoupConfig) -> dict:
    """Read, check, score and average the checkpoints; write ``config.out``; return the report."""
    from tqdm import tqdm

    from ..io import atomic_torch_save
    from ..model.soup import average_state_dicts, greedy_soup, read_ingredients

    _check_config(config)
    paths = [Path(p) for p in config.checkpoints]
    payloads = read_ingredients(paths, config.trust_checkpoint)
    state_dicts = [payload["state_dict"] for payload in payloads]

    score: Callable[[dict], float] | None = None  # the val criterion of a state dict, when --val is given
    bar, ingredient_scores = None, None
    split = scoring_split(Path(config.val), config.val_split) if config.val is not None else None
    if config.val is not None:
        val_score = val_scorer(paths[0], Path(config.val), config)
        # every ingredient, then (greedy) each candidate and the uniform soup
        evaluations = len(paths) + (len(paths) if config.method == "greedy" else 1)
        bar = tqdm(total=evaluations, desc="val scores", unit="model", leave=False, disable=not config.progress)

        def counted_score(state_dict: dict) -> float:
            value = val_score(state_dict)
            bar.update(1)
            return value

        score = counted_score

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
        "metric": f"{split or 'val'} {CRITERION_METRICS[config.criterion]}",
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
        "val_split": split,
        "scores": scores,
    }
    output = {key: value for key, value in payloads[0].items() if key not in _DROPPED_KEYS}
    output["state_dict"] = soup
    output["soup"] = soup_record
    atomic_torch_save(output, config.out)
    return {
        "out": str(config.out),
        "method": config.method,
        "criterion": config.criterion,
        "metric": CRITERION_METRICS[config.criterion],
        "val_split": split,  # the split of --val that scored (None without --val)
        "ingredients": [{"path": str(p), "score": None if ingredient_scores is None else ingredient_scores[i]} for i, p in enumerate(paths)],
        "kept": [str(paths[i]) for i in kept],
        "kept_indices": kept,
        "soup_score": soup_score,
        "uniform_score": uniform_score,
        "history": history,
    }


def format_report(report: dict) -> str:
    """Each ingredient's val score (x100, on the split that scored), which ones the soup kept, and the soup's score."""

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    kept = set(report["kept_indices"])
    split = report.get("val_split") or "val"
    lines = [f"{'':<4} {split + ' ' + report['metric']:>15}  ingredient"]
    for i, ingredient in enumerate(report["ingredients"]):
        lines.append(f"{'kept' if i in kept else '':<4} {percent(ingredient['score']):>15}  {ingredient['path']}")
    lines.append(f"{report['method']} soup of {len(kept)}/{len(report['ingredients'])}: {percent(report['soup_score'])}")
    if report["method"] == "greedy":
        lines.append(f"uniform soup of all: {percent(report['uniform_score'])}")
    lines.append(f"wrote {report['out']} (scores x100 on the {split} split)")
    return "\n".join(lines)


def print_result(report: dict, config: SoupConfig) -> None:
    print(format_report(report))
