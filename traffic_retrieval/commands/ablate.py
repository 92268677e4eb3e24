"""``ablate``: the seed's recipe (A3R) reproduced, then each of our departures from it
measured on its own.

The first row trains the seed's recipe to the letter at the preset's scale (square
padding, RandomResizedCrop, CLIP loss, a cosine six times the run's length as the
seed's 30-of-5 epochs, bare attribute-augmented vehicle captions, the a3r text form
and router, the whole gallery searched). Every other row changes ONE thing from that
row, so each departure is measured against the seed and not against a moving
baseline. The last row combines every departure that raised the official mAP@10 on
a *validation* split (the test split is reported, never used to decide): the
camera-domain one (``val_camera``, in the test's surveillance look) where the dataset
has it, else the clean val split. Every row reports both.

The seed completed vehicle captions with the zero-shot ViT-bigG-14, which a CPU run
cannot load; here the augmenter is a first run of the same recipe without
augmentation (self-enhancement, the paper's other use of the same stage).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import option
from ..data.prepare import CAMERA_VAL_SPLIT  # the camera-domain val split: it decides where the dataset has it
from ..errors import TrafficRetrievalError

HELP = "train the seed's recipe and score each of our departures from it"
SEED_SCHEDULE_FACTOR = 6  # the seed ran 5 epochs of a 30-epoch cosine


@dataclass
class AblationConfig:
    data: Path | None = option(None, help="dataset with val labels (val_camera too, which then decides) and ground_truth/test_gt.txt")
    out: Path = option(Path("ablation.md"), help="the Markdown report")
    work: Path | None = option(None, help="working directory (default: next to the report, <report>_work/)")
    seed: int = option(0, help="random seed of every training")
    epochs: int = option(20, minimum=1, help="epochs of every training (same budget for every row)")
    preset: str = option("cpu-tiny", help="training preset every row starts from (its model, batch, lr)")
    progress: bool = option(True, help="progress bars")


Config = AblationConfig


@dataclass(frozen=True)
class Setup:
    """What one row trains and how it predicts."""

    train: tuple = ()  # TrainConfig overrides as sorted (key, value) pairs
    text_form: str = "a3r"  # trained and queried in
    router: str = "a3r"
    gallery_scope: str = "all"
    gallery_norm: str = "none"
    gallery_bn: str = "none"
    image_tta: str = "none"
    query_bank: str = "none"
    caption_form: str = "bare"  # of the attribute-augmented vehicle captions ("" = no augmentation)
    prompt: bool = False
    rerank: str = ""  # "" (none), "a3r" or "ours"
    soup: str = ""  # "" (none) or the greedy soup's criterion: "official" or "r10"

    def with_train(self, **overrides) -> "Setup":
        return replace(self, train=tuple(sorted({**dict(self.train), **overrides}.items())))

    def training_key(self) -> tuple:
        """What decides the trained weights (routing and scope only change validation's report)."""
        return self.train, self.text_form, self.caption_form


def with_image_tta_part(image_tta: str, part: str) -> str:
    """``image_tta`` with ``part`` (``flip`` or ``exposure``) added: the rows that add one keep the other."""
    from ..retrieval.adapt import IMAGE_TTAS, image_tta_parts

    parts = image_tta_parts(image_tta) | {part}
    return next(name for name in IMAGE_TTAS if name != "none" and set(name.split("+")) == parts)


def seed_setup(epochs: int) -> Setup:
    return Setup().with_train(resize_mode="pad", random_resized_crop=True, loss="clip", augment=False, augment_level="surveillance",
                              augment_schedule="constant", consistency=0.0, attribute_heads=0.0, style_mix=0.0, feature_style_mix=0.0,
                              schedule_epochs=SEED_SCHEDULE_FACTOR * epochs)


# (row name, how it changes the seed's setup, what it is)
DEPARTURES = [
    ("sentence text form", lambda s, e: replace(s, text_form="sentence", caption_form="sentence"),
     "captions and queries as written (\"This is a white Audi Sedan.\"), not the seed's bare phrase and cut query"),
    ("vocabulary router", lambda s, e: replace(s, router="vocabulary"), "whole-word, case-insensitive routing with generic vehicle words"),
    ("routed gallery scope", lambda s, e: replace(s, gallery_scope="routed"), "each query ranked only among gallery images of its category"),
    ("full cosine", lambda s, e: s.with_train(schedule_epochs=e), "the cosine decays to 0 within the run, not over 6x its length"),
    ("no RandomResizedCrop", lambda s, e: s.with_train(random_resized_crop=False), "the padded image as is"),
    ("squash", lambda s, e: s.with_train(resize_mode="squash"), "resize ignoring the aspect ratio instead of zero-padding"),
    ("multi-positive loss", lambda s, e: s.with_train(loss="multi-positive"), "equal-ATTR pairs in a batch are positives"),
    ("attribute heads", lambda s, e: s.with_train(attribute_heads=0.5), "auxiliary flag/color/type/brand losses on the image embedding"),
    ("surveillance augmentation", lambda s, e: s.with_train(augment=True), "low-res/blur/exposure/cast/noise on training images"),
    ("camera augmentation", lambda s, e: s.with_train(augment=True, augment_level="camera"),
     "stronger camera degradations: resolution, Gaussian blur, JPEG, gamma, desaturation, noise, casts, border occluders"),
    ("camera augmentation, ramped", lambda s, e: s.with_train(augment=True, augment_level="camera", augment_schedule="ramp"),
     "the same, its probabilities growing linearly over the schedule (clean images first)"),
    ("camera augmentation, ramped + consistency", lambda s, e: s.with_train(augment=True, augment_level="camera", augment_schedule="ramp",
                                                                            consistency=0.5),
     "the same, plus a loss pulling each augmented image's embedding toward its clean view's"),
    ("centred gallery", lambda s, e: replace(s, gallery_norm="center"), "the gallery's mean embedding subtracted before ranking"),
    ("gallery BatchNorm (AdaBN)", lambda s, e: replace(s, gallery_bn="adapt"), "the image tower's BatchNorm statistics re-estimated on the gallery"),
    ("flip test-time augmentation", lambda s, e: replace(s, image_tta=with_image_tta_part(s.image_tta, "flip")),
     "each gallery image encoded as the mean of it and its mirror image"),
    ("style mixing", lambda s, e: s.with_train(style_mix=0.5), "half the training images take a mix of another image's exposure and white balance (MixStyle)"),
    ("no attribute augmentation", lambda s, e: replace(s, caption_form=""), "vehicle captions as labelled"),
    ("prompt", lambda s, e: replace(s, prompt=True), "vehicle queries keep their prefix and get the seed's camera prompt"),
    ("re-ranking (a3r)", lambda s, e: replace(s, rerank="a3r"), "the seed's adaption re-ranking of the top 50"),
    ("re-ranking (ours)", lambda s, e: replace(s, rerank="ours"), "our text + adapted-query + k-reciprocal re-ranking of the top 50"),
    ("greedy soup (R@10)", lambda s, e: replace(s, soup="r10"), "greedy soup of the run's last 3 epoch checkpoints by val text-to-image R@10 (the seed's)"),
    ("greedy soup (official)", lambda s, e: replace(s, soup="official"), "the same soup by val official mAP@10"),
    ("feature style mixing", lambda s, e: s.with_train(feature_style_mix=0.5),
     "MixStyle inside the image tower: half the images' layer1/layer2 feature maps take a mix of another image's channel statistics"),
    ("query bank (captions)", lambda s, e: replace(s, query_bank="captions"),
     "querybank normalisation: each gallery image's score lowered by its soft-max similarity to the stored training captions"),
    ("camera-wide augmentation, ramped", lambda s, e: s.with_train(augment=True, augment_level="camera-wide", augment_schedule="ramp"),
     "the camera set plus motion blur and night exposures, resolution and shift drawn per image, ramped"),
    ("camera-night augmentation, ramped", lambda s, e: s.with_train(augment=True, augment_level="camera-night", augment_schedule="ramp"),
     "the camera set plus night frames as automatic exposure leaves them (noise, banding), ramped"),
    ("automatic exposure", lambda s, e: replace(s, image_tta=with_image_tta_part(s.image_tta, "exposure")),
     "each under-exposed gallery image brightened to middle grey in linear light before it is encoded"),
]
SEED_ROW = "A3R seed recipe"
COMBINED_ROW = "combined: every departure that helped on val"


@dataclass
class Row:
    name: str
    setup: Setup
    val: dict = field(default_factory=dict)
    val_camera: dict = field(default_factory=dict)  # empty where the dataset has no camera-domain val split
    test: dict = field(default_factory=dict)
    better: bool = False  # than the seed row, on the deciding split's official mAP@10 (``deciding_scores``)
    note: str = ""
    seconds: float = 0.0


def deciding_scores(row: Row) -> dict:
    """The scores that decide whether a departure helped: camera val where the dataset has it, else val."""
    return row.val_camera or row.val


def write_split_queries(rows: list[dict], out_dir: Path, split: str = "val") -> tuple[Path, Path]:
    """A labelled split as a retrieval benchmark: every caption is a query, relevance = equal ATTR
    (OUT_DIR/<split>_text.txt and OUT_DIR/<split>_gt.txt)."""
    from ..io import atomic_write_text

    names_by_attr: dict[str, list[str]] = {}
    for row in rows:
        names_by_attr.setdefault(row["attr"], []).append(Path(row["image"]).name)
    queries = out_dir / f"{split}_text.txt"
    ground_truth = out_dir / f"{split}_gt.txt"
    atomic_write_text(queries, "".join(row["text"] + "\n" for row in rows))
    atomic_write_text(ground_truth, "".join("$".join([row["text"], *names_by_attr[row["attr"]]]) + "\n" for row in rows))
    return queries, ground_truth


class Runner:
    """Trains each distinct setup once and scores it on val and test."""

    def __init__(self, config: AblationConfig, work: Path):
        self.config, self.work = config, work
        self.prepared = work / "prepared"
        self.checkpoints: dict[tuple, Path] = {}
        self.manifests: dict[str, str] = {}  # caption form -> augmented manifest
        self.claimed: set[Path] = set()  # run folders this ablation trains in

    def augmented_manifest(self, caption_form: str) -> str:
        """The training manifest with vehicle captions completed in ``caption_form`` by the
        augmenter: the seed's recipe trained without augmentation."""
        from .augment import AugmentCaptionsConfig
        from .augment import run as augment_captions

        if not caption_form:
            return "train"
        if caption_form not in self.manifests:
            augmenter = self.train(replace(seed_setup(self.config.epochs), caption_form=""))
            manifest = f"train_augmented_{caption_form}"
            augment_captions(AugmentCaptionsConfig(work=self.prepared, checkpoint=augmenter, out_manifest=manifest, caption_form=caption_form,
                                                   progress=self.config.progress))
            self.manifests[caption_form] = manifest
        return self.manifests[caption_form]

    def run_folder(self, config) -> Path:
        """Where a training goes: the folder of an earlier ablation in this work folder that
        trained with the same settings (resumed, or reused when finished), else the next new
        ``runN``. A work folder reused after rows changed never resumes another row's training."""
        from .train import recorded_run_config, training_differences

        earlier = sorted((folder for folder in self.work.glob("run*") if folder.name[3:].isdigit()), key=lambda folder: int(folder.name[3:]))
        for folder in earlier:
            recorded = recorded_run_config(folder) if folder not in self.claimed else None
            if recorded is not None and not training_differences(recorded, config):
                self.claimed.add(folder)
                return folder
        number = 1
        while (self.work / f"run{number}").exists() or self.work / f"run{number}" in self.claimed:
            number += 1
        self.claimed.add(self.work / f"run{number}")
        return self.work / f"run{number}"

    def train(self, setup: Setup) -> Path:
        from . import command_config
        from .train import run as train

        key = setup.training_key()
        if key in self.checkpoints:
            return self.checkpoints[key]
        manifest = self.augmented_manifest(setup.caption_form)
        overrides = {"work": self.prepared, "seed": self.config.seed, "epochs": self.config.epochs,
                     "train_manifest": manifest, "keep_checkpoints": 3, "resume": True, "progress": self.config.progress,
                     "query": {"text_form": setup.text_form, "gallery_norm": setup.gallery_norm, "gallery_bn": setup.gallery_bn,
                               "image_tta": setup.image_tta, "query_bank": setup.query_bank}, **dict(setup.train)}
        run_dir = self.run_folder(command_config("train", self.config.preset, {**overrides, "out": self.work / "run0"}))
        train(command_config("train", self.config.preset, {**overrides, "out": run_dir}))
        self.checkpoints[key] = run_dir / "checkpoints" / "final.pt"
        return self.checkpoints[key]

    def soup(self, checkpoint: Path, criterion: str) -> Path:
        from .soup import SoupConfig
        from .soup import run as make_soup

        epochs = sorted(checkpoint.parent.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))[-3:]
        if len(epochs) < 2:
            return checkpoint  # a one-epoch run has nothing to average
        out = checkpoint.parent / f"soup_{criterion}.pt"
        if not out.is_file():
            make_soup(SoupConfig(checkpoints=epochs, val=Path(self.config.data), out=out, method="greedy", criterion=criterion,
                                 progress=self.config.progress))
        return out

    def score(self, checkpoint: Path, setup: Setup, queries: Path, gallery: Path, ground_truth: Path, name: str) -> dict:
        from ..evaluation.evaluate import evaluate_files
        from ..retrieval.queries import QueryConfig
        from ..retrieval.rerank import RerankConfig
        from .predict import PredictConfig
        from .predict import run as predict

        submission = self.work / f"{name}.json"
        query = QueryConfig(text_form=setup.text_form, router=setup.router, gallery_scope=setup.gallery_scope, gallery_norm=setup.gallery_norm,
                            gallery_bn=setup.gallery_bn, image_tta=setup.image_tta, query_bank=setup.query_bank, prompt=setup.prompt)
        rerank = RerankConfig(enabled=bool(setup.rerank), method=setup.rerank or "ours")
        predict(PredictConfig(checkpoint=checkpoint, queries=queries, gallery=gallery, out=submission, query=query, rerank=rerank,
                              vocabulary=self.prepared / "vehicle_vocabulary.json", progress=self.config.progress))
        return evaluate_files(submission, ground_truth).to_json_dict()


def combine(seed: Setup, helpful: list[tuple[Row, object]], epochs: int) -> Setup:
    """The seed's setup with every helpful departure applied, the best on the deciding val split
    last, so where two change the same setting (two re-rankings, two soups) the better one wins."""
    setup = seed
    for _, change in sorted(helpful, key=lambda pair: deciding_scores(pair[0])["official_mAP@10"]):
        setup = change(setup, epochs)
    return setup


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
        raise TrafficRetrievalError(f"{data}/val/val_label.txt: ablate needs a labelled val split to decide which departures help")
    val_queries, val_gt = write_split_queries(val_rows, work)
    val_gallery = data / "val" / "val_images"
    camera_manifest = runner.prepared / "manifests" / f"{CAMERA_VAL_SPLIT}.jsonl"
    camera_rows = read_jsonl(camera_manifest) if camera_manifest.is_file() else []
    camera_val = ((*write_split_queries(camera_rows, work, CAMERA_VAL_SPLIT), data / CAMERA_VAL_SPLIT / f"{CAMERA_VAL_SPLIT}_images")
                  if camera_rows else None)  # (queries, ground truth, gallery)
    test = (data / "test" / "test_text.txt", data / "test" / "test_images", data / "ground_truth" / "test_gt.txt")
    rows: list[Row] = []

    def measure(name: str, setup: Setup, note: str) -> Row:
        started = time.time()
        checkpoint = runner.train(setup)
        scored = runner.soup(checkpoint, setup.soup) if setup.soup else checkpoint
        row = Row(name, setup, note=note)
        row.val = runner.score(scored, setup, val_queries, val_gallery, val_gt, f"{len(rows)}-val")
        if camera_val is not None:
            camera_queries, camera_gt, camera_gallery = camera_val
            row.val_camera = runner.score(scored, setup, camera_queries, camera_gallery, camera_gt, f"{len(rows)}-{CAMERA_VAL_SPLIT}")
        row.test = runner.score(scored, setup, *test, f"{len(rows)}-test")
        row.seconds = time.time() - started
        if rows:
            row.better = deciding_scores(row)["official_mAP@10"] > deciding_scores(rows[0])["official_mAP@10"]
        rows.append(row)
        atomic_write_json(work / "ablation.json", [row_to_dict(r) for r in rows])
        return row

    seed = seed_setup(config.epochs)
    measure(SEED_ROW, seed, "the seed's recipe to the letter at this scale")
    helpful = []
    for name, change, note in DEPARTURES:
        row = measure(name, change(seed, config.epochs), note)
        if row.better:
            helpful.append((row, change))
    if helpful:
        measure(COMBINED_ROW, combine(seed, helpful, config.epochs), ", ".join(row.name for row, _ in helpful))
    atomic_write_text(config.out, format_markdown(rows, config))
    return rows


def row_to_dict(row: Row) -> dict:
    from dataclasses import asdict

    return {"name": row.name, "setup": {**asdict(row.setup), "train": dict(row.setup.train)}, "better_than_seed_on_val": row.better,
            "decided_by": CAMERA_VAL_SPLIT if row.val_camera else "val", "note": row.note, "val": row.val,
            CAMERA_VAL_SPLIT: row.val_camera or None, "test": row.test, "seconds": row.seconds}


def format_markdown(rows: list[Row], config: AblationConfig) -> str:
    def pct(value: float) -> str:
        return f"{100 * value:.1f}"

    def camera(row: Row) -> str:
        return pct(row.val_camera["official_mAP@10"]) if row.val_camera else "-"

    seed_row = rows[0]
    by_camera = bool(seed_row.val_camera)
    gain_name = "camera val +" if by_camera else "val +"
    decision = ("the camera-domain val split (`val_camera`, in the test's surveillance look), so what is kept is what survives the "
                "domain shift" if by_camera else
                "the clean val split (the dataset has no camera-domain val split, `val_camera/`, which would decide instead)")
    lines = [
        "# Ablation: the seed's recipe, then each departure from it",
        "",
        f"`traffic-retrieval ablate --data {config.data} --out {config.out} --epochs {config.epochs} --seed {config.seed}`"
        f" (preset `{config.preset}`: its model, batch and learning rate; every training {config.epochs} epochs, seed {config.seed}).",
        "",
        f"The first row is the seed's recipe (A3R); every other row changes one thing from it. \"{gain_name}\" is the change in",
        f"official mAP@10 against the seed row on {decision}; it decides whether a departure joins the combined row.",
        "\"val official\" is on the clean val split, \"camera val official\" on the camera-domain one. Scores x100 on the test",
        "split unless marked val.",
        "",
        f"| row | val official | camera val official | {gain_name} | official | strict | R@10 | ped. official | ped. strict | veh. official | "
        "veh. strict | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ped, veh = row.test["per_category"]["pedestrian"], row.test["per_category"]["vehicle"]
        gain = ("" if row is seed_row else
                f"{100 * (deciding_scores(row)['official_mAP@10'] - deciding_scores(seed_row)['official_mAP@10']):+.1f}")
        lines.append(
            f"| {row.name} | {pct(row.val['official_mAP@10'])} | {camera(row)} | {gain} | {pct(row.test['official_mAP@10'])} | "
            f"{pct(row.test['strict_mAP@10'])} | "
            f"{pct(row.test['recall@10'])} | {pct(ped['official_mAP@10'])} | {pct(ped['strict_mAP@10'])} | {pct(veh['official_mAP@10'])} | "
            f"{pct(veh['strict_mAP@10'])} | {row.seconds / 60:.1f} |"
        )
    lines += ["", "What each row changes:", ""]
    lines += [f"- **{row.name}**: {row.note}" for row in rows]
    lines += [""]
    return "\n".join(lines)


def print_result(rows: list[Row], config: AblationConfig) -> None:
    print(Path(config.out).read_text(encoding="utf-8"))
