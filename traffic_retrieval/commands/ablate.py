"""``ablate``: the pipeline with each stage of the method added in turn, measured.

Stages are added cumulatively in the order of docs/method.md. Every training uses the
same seed, preset and number of epochs. A stage is kept for the following rows
only when it raises the official mAP@10 on the *validation* split (the test
split is reported, never used to decide), so a stage that does not help is shown
as such instead of being hidden.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import option
from ..errors import TrafficRetrievalError

HELP = "train and score the pipeline with each stage of the method added in turn"


@dataclass
class AblationConfig:
    data: Path | None = option(None, help="dataset with val labels and ground_truth/test_gt.txt")
    out: Path = option(Path("ablation.md"), help="the Markdown report")
    work: Path | None = option(None, help="working directory (default: next to the report, <report>_work/)")
    seed: int = option(0, help="random seed of every training")
    epochs: int = option(20, minimum=1, help="epochs of every training (same budget for every row)")
    preset: str = option("cpu-tiny", help="training preset every row starts from")
    progress: bool = option(True, help="progress bars")


Config = AblationConfig


@dataclass(frozen=True)
class Setup:
    """What one row trains and how it predicts."""

    train: tuple = ()  # TrainConfig overrides as (key, value) pairs
    attribute_augmentation: bool = False
    prompt: bool = False
    rerank: bool = False
    soup: bool = False

    def with_train(self, **overrides) -> "Setup":
        return replace(self, train=tuple(sorted({**dict(self.train), **overrides}.items())))


PLAIN = Setup().with_train(resize_mode="squash", loss="clip", augment=False, attribute_heads=0.0)

# (row name, how it changes the setup, why it might help)
STAGES = [
    ("+ square padding", lambda s: s.with_train(resize_mode="pad"), "keeps aspect ratio of tall pedestrians and wide vehicles"),
    ("+ attribute augmentation", lambda s: replace(s, attribute_augmentation=True), "vehicle captions completed with the previous row's model (self-enhancement)"),
    ("+ prompt", lambda s: replace(s, prompt=True), "vehicle queries stripped and suffixed with the seed's camera prompt"),
    ("+ re-ranking", lambda s: replace(s, rerank=True), "adaption re-ranking of the top 50"),
    ("+ soup", lambda s: replace(s, soup=True), "greedy soup of the run's last 3 epoch checkpoints"),
    ("+ multi-positive loss", lambda s: s.with_train(loss="multi-positive"), "equal-ATTR pairs are positives"),
    ("+ attribute heads", lambda s: s.with_train(attribute_heads=0.5), "auxiliary flag/color/type/brand losses"),
    ("+ surveillance augmentation", lambda s: s.with_train(augment=True), "low-res/blur/exposure/cast/noise on training images (ours)"),
]


@dataclass
class Row:
    name: str
    setup: Setup
    val: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    kept: bool = True
    note: str = ""
    seconds: float = 0.0


def write_split_queries(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    """A labelled split as a retrieval benchmark: every caption is a query, relevance = equal ATTR."""
    from ..io import atomic_write_text

    names_by_attr: dict[str, list[str]] = {}
    for row in rows:
        names_by_attr.setdefault(row["attr"], []).append(Path(row["image"]).name)
    queries = out_dir / "val_text.txt"
    ground_truth = out_dir / "val_gt.txt"
    atomic_write_text(queries, "".join(row["text"] + "\n" for row in rows))
    atomic_write_text(ground_truth, "".join("$".join([row["text"], *names_by_attr[row["attr"]]]) + "\n" for row in rows))
    return queries, ground_truth


class Runner:
    """Trains each distinct setup once and scores it on val and test."""

    def __init__(self, config: AblationConfig, work: Path):
        self.config, self.work = config, work
        self.prepared = work / "prepared"
        self.checkpoints: dict[tuple, Path] = {}
        self.run_count = 0

    def train(self, setup: Setup, augmenter: Path | None) -> Path:
        from . import command_config
        from .augment import AugmentCaptionsConfig
        from .augment import run as augment_captions
        from .train import TrainConfig
        from .train import run as train

        key = (setup.train, setup.attribute_augmentation)
        if key in self.checkpoints:
            return self.checkpoints[key]
        self.run_count += 1
        run_dir = self.work / f"run{self.run_count}"
        manifest = "train"
        if setup.attribute_augmentation:
            if augmenter is None:
                raise TrafficRetrievalError("attribute augmentation needs an earlier checkpoint to augment with")
            manifest = f"train_augmented_run{self.run_count}"
            augment_captions(AugmentCaptionsConfig(work=self.prepared, checkpoint=augmenter, out_manifest=manifest, progress=self.config.progress))
        overrides = {"work": self.prepared, "out": run_dir, "seed": self.config.seed, "epochs": self.config.epochs,
                     "train_manifest": manifest, "keep_checkpoints": 3, "resume": True, "progress": self.config.progress, **dict(setup.train)}
        train(command_config("train", self.config.preset, overrides))
        self.checkpoints[key] = run_dir / "checkpoints" / "final.pt"
        return self.checkpoints[key]

    def soup(self, checkpoint: Path) -> Path:
        from .soup import SoupConfig
        from .soup import run as make_soup

        epochs = sorted(checkpoint.parent.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))[-3:]
        if len(epochs) < 2:
            return checkpoint  # a one-epoch run has nothing to average
        out = checkpoint.parent / "soup.pt"
        if not out.is_file():
            make_soup(SoupConfig(checkpoints=epochs, val=Path(self.config.data), out=out, method="greedy", progress=self.config.progress))
        return out

    def score(self, checkpoint: Path, setup: Setup, queries: Path, gallery: Path, ground_truth: Path, name: str) -> dict:
        from ..evaluation.evaluate import evaluate_files
        from ..retrieval.queries import QueryConfig
        from ..retrieval.rerank import RerankConfig
        from .predict import PredictConfig
        from .predict import run as predict

        submission = self.work / f"{name}.json"
        predict(PredictConfig(checkpoint=checkpoint, queries=queries, gallery=gallery, out=submission, query=QueryConfig(prompt=setup.prompt),
                              rerank=RerankConfig(enabled=setup.rerank), vocabulary=self.prepared / "vehicle_vocabulary.json", progress=self.config.progress))
        return evaluate_files(submission, ground_truth).to_json_dict()


def run(config: AblationConfig) -> list[Row]:
    from ..io import atomic_write_json, atomic_write_text, read_jsonl
    from .prepare import PrepareConfig
    from .prepare import run as prepare

    data = Path(config.data) if config.data else None
    if data is None or not (data / "ground_truth" / "test_gt.txt").is_file():
        raise TrafficRetrievalError(f"{data}/ground_truth/test_gt.txt: ablate needs a dataset with test ground truth")
    work = Path(config.work) if config.work else Path(config.out).with_name(Path(config.out).stem + "_work")
    runner = Runner(config, work)
    prepare(PrepareConfig(data=data, work=runner.prepared))
    val_rows = read_jsonl(runner.prepared / "manifests" / "val.jsonl")
    if not val_rows:
        raise TrafficRetrievalError(f"{data}/val/val_label.txt: ablate needs a labelled val split to decide which stages to keep")
    val_queries, val_gt = write_split_queries(val_rows, work)
    val_gallery = data / "val" / "val_images"
    test = (data / "test" / "test_text.txt", data / "test" / "test_images", data / "ground_truth" / "test_gt.txt")

    def measure(name: str, setup: Setup, augmenter: Path | None) -> tuple[Row, Path]:
        started = time.time()
        checkpoint = runner.train(setup, augmenter)
        scored = runner.soup(checkpoint) if setup.soup else checkpoint
        row = Row(name, setup)
        row.val = runner.score(scored, setup, val_queries, val_gallery, val_gt, f"{len(rows)}-val")
        row.test = runner.score(scored, setup, *test, f"{len(rows)}-test")
        row.seconds = time.time() - started
        return row, checkpoint

    rows: list[Row] = []
    best, best_checkpoint = measure("plain (squash, CLIP loss, no augmentation)", PLAIN, None)
    rows.append(best)
    for name, change, why in STAGES:
        row, checkpoint = measure(name, change(best.setup), best_checkpoint)
        row.note = why
        row.kept = row.val["official_mAP@10"] > best.val["official_mAP@10"]
        rows.append(row)
        if row.kept:
            best, best_checkpoint = row, checkpoint
        atomic_write_json(work / "ablation.json", [row_to_dict(r) for r in rows])
    atomic_write_text(config.out, format_markdown(rows, config))
    return rows


def row_to_dict(row: Row) -> dict:
    return {"name": row.name, "setup": {"train": dict(row.setup.train), "attribute_augmentation": row.setup.attribute_augmentation,
            "prompt": row.setup.prompt, "rerank": row.setup.rerank, "soup": row.setup.soup},
            "kept": row.kept, "note": row.note, "val": row.val, "test": row.test, "seconds": row.seconds}


def format_markdown(rows: list[Row], config: AblationConfig) -> str:
    def pct(value: float) -> str:
        return f"{100 * value:.1f}"

    lines = [
        "# Ablation",
        "",
        f"`traffic-retrieval ablate --data {config.data} --out {config.out} --epochs {config.epochs} --seed {config.seed}`"
        f" (preset `{config.preset}`, every training {config.epochs} epochs, seed {config.seed}).",
        "",
        "Stages are added in turn; a stage is kept for the rows below it only if it raised the official mAP@10 on the",
        "validation split. Scores x100 on the test split unless marked val.",
        "",
        "| stage | kept | val official | official | strict | R@10 | ped. official | ped. strict | ped. R@10 | veh. official | veh. strict | veh. R@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ped, veh = row.test["per_category"]["pedestrian"], row.test["per_category"]["vehicle"]
        lines.append(
            f"| {row.name} | {'yes' if row.kept else 'no'} | {pct(row.val['official_mAP@10'])} | {pct(row.test['official_mAP@10'])} | "
            f"{pct(row.test['strict_mAP@10'])} | {pct(row.test['recall@10'])} | {pct(ped['official_mAP@10'])} | {pct(ped['strict_mAP@10'])} | "
            f"{pct(ped['recall@10'])} | {pct(veh['official_mAP@10'])} | {pct(veh['strict_mAP@10'])} | {pct(veh['recall@10'])} |"
        )
    lines += ["", "What each stage does:", ""]
    lines += [f"- **{row.name}**: {row.note}" for row in rows[1:]]
    final = next(row for row in reversed(rows) if row.kept)
    lines += ["", f"Full method (last kept row, {final.name}): official {pct(final.test['official_mAP@10'])}, strict "
              f"{pct(final.test['strict_mAP@10'])}; plain: official {pct(rows[0].test['official_mAP@10'])}, strict {pct(rows[0].test['strict_mAP@10'])}.", ""]
    return "\n".join(lines)



def print_result(rows: list[Row], config: AblationConfig) -> None:
    print(Path(config.out).read_text(encoding="utf-8"))
