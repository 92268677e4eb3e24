"""Training curves as a picture: ``write_training_curves(RUN)`` reads ``RUN/train.log``
and writes ``RUN/training_curves.png`` (loss per epoch, and the validation metrics
when the run validated), next to the TensorBoard logs, for a look without TensorBoard.

``train.log`` lines are ``YYYY-MM-DD HH:MM:SS <message>``; the epoch records are
JSON messages with ``epoch``, ``loss`` and optionally ``val`` (see ``log.RunLog``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from ..errors import TrafficRetrievalError

CURVES_FILE = "training_curves.png"
VAL_METRICS = ("official_mAP@10", "strict_mAP@10", "recall@1", "recall@5", "recall@10")


def read_epoch_records(log_path: str | Path) -> list[dict]:
    """The epoch records of a train.log, by epoch (a resumed run's later record of an epoch wins)."""
    try:
        text = Path(log_path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise TrafficRetrievalError(f"{log_path}: training log not found") from None
    by_epoch: dict[int, dict] = {}
    for line in text.splitlines():
        start = line.find("{")
        if start < 0:
            continue
        try:
            record = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int) and isinstance(record.get("loss"), (int, float)):
            by_epoch[record["epoch"]] = record
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def plot_training_curves(records: list[dict], title: str = ""):
    """A matplotlib Figure (Agg canvas, no pyplot: safe in any thread and never opens a window)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in records]
    with_val = [r for r in records if isinstance(r.get("val"), dict)]
    figure = Figure(figsize=(11 if with_val else 6, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2 if with_val else 1, squeeze=False)[0]
    loss_axis = axes[0]
    loss_axis.plot(epochs, [r["loss"] for r in records], marker="o", markersize=3, color="tab:blue")
    loss_axis.set(title="training loss (mean per epoch)", xlabel="epoch", ylabel="loss")
    loss_axis.grid(alpha=0.3)
    if with_val:
        val_axis = axes[1]
        for split, style in (("val", "-"), ("val_camera", "--")):  # the camera-domain split, where the run has one
            for metric in VAL_METRICS:
                points = [(r["epoch"], r[split][metric]) for r in with_val
                          if isinstance(r.get(split), dict) and isinstance(r[split].get(metric), (int, float))]
                if points:
                    val_axis.plot(*zip(*points), linestyle=style, marker="o", markersize=3, label=metric if split == "val" else f"{split} {metric}")
        val_axis.set(title="validation", xlabel="epoch", ylabel="score", ylim=(0, 1.02))
        val_axis.grid(alpha=0.3)
        val_axis.legend(loc="best", fontsize="small")
    for axis in axes:
        axis.xaxis.get_major_locator().set_params(integer=True)
    if title:
        figure.suptitle(title)
    return figure


def write_training_curves(run_dir: str | Path) -> Path | None:
    """Write RUN/training_curves.png from RUN/train.log; None when no epoch has finished yet."""
    from ..io import atomic_path

    run_dir = Path(run_dir)
    records = read_epoch_records(run_dir / "train.log")
    if not records:
        return None
    if importlib.util.find_spec("matplotlib") is None:  # the curves extra is not installed
        print(f"{CURVES_FILE} skipped: matplotlib is not installed (pip install 'traffic-retrieval[curves]')", file=sys.stderr)
        return None
    figure = plot_training_curves(records, title=run_dir.resolve().name)
    out = run_dir / CURVES_FILE
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png")
    return out
