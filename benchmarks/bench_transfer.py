"""Transfer: train on the clean renderer setting, score on the camera-domain splits.

Issue #14. A synthetic dataset is made and prepared; a model is trained with a preset
(default ``cpu-tiny``, its epochs; ``--set KEY=VALUE`` overrides any of its training keys)
through the trainer's public hook, ``commands.train.run(config, callbacks=[...])``,
timing the whole call and each epoch's training steps (``EpochEnd.train_seconds``).
The dataset comes from one of two renderers (``--renderer``):

- ``ours`` (default): the project's own renderer (``traffic_retrieval/synth``), the demo's
  default sizes, with a camera-domain val split (``val_camera``, drawn in the test split's
  surveillance look);
- ``foreign``: an independent second renderer (``benchmarks/foreign_renderer.py``, run as
  a subprocess; sizes ``--foreign-train`` / ``--foreign-val`` / ``--foreign-test``), its
  test gallery in one of three camera looks (``--look``). It has no camera val split. The
  ``dev`` look may be used to choose a recipe; the ``holdout`` and ``holdout2`` looks must
  NEVER be used to choose a recipe, a hyper-parameter or a switch: it is only a check that a recipe chosen
  elsewhere transfers. Made once per renderer, look, seed and sizes in the cache folder
  (e.g. ``foreign-dev-0-4000-400-1200``) and reused.

The final checkpoint is then scored on the splits the dataset has:

- ``val``: the clean val split (the training images' look);
- ``val_camera``: the camera-domain val split (``ours`` only);
- ``test``: the camera-domain test split, with its ground truth;
- ``night``: a night copy of the camera val split (of the clean val split without one),
  written by ``night_split.py`` next to the dataset (``DATA-night``, made once): the day
  splits cannot choose anything that matters at night (``--no-night``: not scored).

Val splits are scored as ``ablate`` scores them (``commands.ablate.write_split_queries``:
every caption is a query, relevance = equal ATTR), then ``predict`` + ``evaluate_files``;
the test split with ``predict --data`` + ``evaluate_files`` against
``ground_truth/test_gt.txt``. The test split is scored under every inference-time variant,
and so are the val splits unless ``--val-variants baseline`` (``--quick``): the camera val
split, not the test, is where a switch should be chosen. One ``predict`` each, the gallery
encoded again every time (``predict --index`` would reuse an encoded gallery, but without
the flipped twins re-ranking uses). Every variant but ``recipe`` sets the gallery
normalisation, the gallery BatchNorm and the image test-time augmentation explicitly (a
checkpoint may record any of them in its query recipe):

- ``recipe``: no flags: the checkpoint's own recorded query recipe, what a user gets;
- ``baseline``: ``--gallery-norm none --gallery-bn none --image-tta none``, the checkpoint's gallery scope (routed);
- ``center``: ``--gallery-norm center`` (the others ``none``, as in every variant below unless named);
- ``adabn``: ``--gallery-bn adapt``;
- ``center+adabn``: ``--gallery-norm center --gallery-bn adapt``;
- ``flip``: ``--image-tta flip`` (each gallery image encoded as the mean of it and its mirror);
- ``center+adabn+flip``: ``--gallery-norm center --gallery-bn adapt --image-tta flip``;
- ``soft``: ``--gallery-scope soft``;
- ``center+adabn+soft``: ``--gallery-norm center --gallery-bn adapt --gallery-scope soft``;
- ``center+adabn+soft+rerank``: the same and ``--rerank``.

Reported: official and strict mAP@10 overall and per category (pedestrian / vehicle)
for every split x variant, the test gallery's routing accuracy (``predict`` reports it
from ``ground_truth/test_label.txt``; the val splits' from the training's last
validation), the ratios camera test / clean val and camera val / clean val (official and
strict, overall and per category; the clean val under the baseline, and under the same
variant where scored; camera val ratios are None without a camera val split), the
training and scoring seconds, and the machine. A Markdown table is printed.

    python benchmarks/bench_transfer.py                 # writes benchmarks/results/bench_transfer.json
    python benchmarks/bench_transfer.py --epochs 10     # shorter training
    python benchmarks/bench_transfer.py --renderer foreign --look dev \\
        --set augment=true --set augment_level=camera   # writes benchmarks/results/bench_transfer_foreign_dev.json
    python benchmarks/bench_transfer.py --quick         # smoke run (tiny data, 2 epochs), temp folder
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

SPLITS = ("val", "val_camera", "test", "night")
SPLIT_TITLES = {"val": "clean val", "val_camera": "camera val", "test": "camera test", "night": "night val"}
NIGHT_SOURCE = ("val_camera", "val")  # the night val split is a night copy (night_split.py) of the first of these the dataset has
CATEGORIES = ("pedestrian", "vehicle")
# name -> (QueryConfig overrides, re-rank); unset values are the checkpoint's recipe. Every variant but "recipe"
# sets gallery_norm, gallery_bn, image_tta and query_bank explicitly: a checkpoint may record any of them in its query recipe.


def _variant(norm: str = "none", bn: str = "none", tta: str = "none", bank: str = "none", rerank: bool = False, **more) -> tuple[dict, bool]:
    return {"gallery_norm": norm, "gallery_bn": bn, "image_tta": tta, "query_bank": bank, **more}, rerank


VARIANTS = {
    "recipe": ({}, False),
    "baseline": _variant(),
    "center": _variant(norm="center"),
    "adabn": _variant(bn="adapt"),
    "center+adabn": _variant(norm="center", bn="adapt"),
    "flip": _variant(tta="flip"),
    "center+adabn+flip": _variant(norm="center", bn="adapt", tta="flip"),
    "bank": _variant(bank="captions"),
    "flip+bank": _variant(tta="flip", bank="captions"),
    "exposure": _variant(tta="exposure"),
    "flip+exposure+bank": _variant(tta="flip+exposure", bank="captions"),
    "soft": _variant(gallery_scope="soft"),
    "center+adabn+soft": _variant(norm="center", bn="adapt", gallery_scope="soft"),
    "center+adabn+soft+rerank": _variant(norm="center", bn="adapt", gallery_scope="soft", rerank=True),
}
REFERENCE_VARIANT = "baseline"  # the clean val under it is the ratios' reference


def variant_flags(overrides: dict, rerank: bool) -> str:
    """The CLI flags a variant means ("" = no flags: the checkpoint's recipe)."""
    flags = [f"--{key.replace('_', '-')} {value}" for key, value in overrides.items()]
    return " ".join(flags + (["--rerank"] if rerank else []))


VARIANT_FLAGS = {name: variant_flags(*spec) for name, spec in VARIANTS.items()}
QUICK_SIZES = {"train_pedestrians": 40, "train_vehicles": 40, "val_pedestrians": 12, "val_vehicles": 12, "test_pedestrians": 12, "test_vehicles": 12}
SIZE_KEYS = tuple(QUICK_SIZES)
RENDERERS = ("ours", "foreign")
LOOKS = ("dev", "holdout", "holdout2")
FOREIGN_SIZES = {"foreign_train": 4000, "foreign_val": 400, "foreign_test": 1200}
FOREIGN_QUICK_SIZES = {"foreign_train": 80, "foreign_val": 24, "foreign_test": 24}
FOREIGN_RENDERER = Path(__file__).resolve().parent / "foreign_renderer.py"
# training keys the benchmark sets itself: --set may not override them
RESERVED_TRAIN_KEYS = {"work": None, "out": None, "progress": None, "seed": "--seed", "epochs": "--epochs"}


def demo_sizes() -> dict:
    """The demo's dataset sizes: ``SynthConfig``'s defaults (``demo`` passes only out and seed)."""
    from traffic_retrieval.synth import SynthConfig

    return {f.name: f.default for f in dataclasses.fields(SynthConfig) if f.name in SIZE_KEYS}


def parse_set(items: list[str], error) -> dict:
    """``KEY=VALUE`` training overrides as a (nested, for dotted keys such as ``query.gallery_bn``) mapping,
    each value read as YAML (``true`` -> True, ``0.5`` -> 0.5, ``camera`` -> "camera")."""
    import yaml

    overrides: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            error(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            error(f"--set {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]})")
        *parents, last = key.split(".")
        if key.split(".")[0] in RESERVED_TRAIN_KEYS:
            flag = RESERVED_TRAIN_KEYS[key.split(".")[0]]
            error(f"--set {key}: " + (f"use {flag}" if flag else "the benchmark sets it itself"))
        node = overrides
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                error(f"--set {item!r}: {part} was given a value and sub-keys")
        node[last] = value
    return overrides


def parse_args(argv=None):
    from traffic_retrieval.errors import TrafficRetrievalError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-tiny", help="training preset (its model, batch, lr, epochs)")
    parser.add_argument("--set", dest="train_set", action="append", default=[], metavar="KEY=VALUE",
                        help="training override on top of the preset, repeatable, the value read as YAML "
                             "(e.g. --set augment=true --set augment_level=camera --set consistency=0.5; dotted keys for nested ones: query.gallery_bn=adapt)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    parser.add_argument("--renderer", choices=RENDERERS, default="ours",
                        help="the dataset's renderer: ours (traffic_retrieval/synth, with a camera val split) or foreign (benchmarks/foreign_renderer.py, val and test only)")
    parser.add_argument("--look", choices=LOOKS, default=None,
                        help="--renderer foreign: the test gallery's camera look (default dev); holdout and holdout2 are checks, never for choosing a recipe")
    for key in SIZE_KEYS:
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=None,
                            help=f"--renderer ours: images (default: the demo's, {demo_sizes()[key]}); the camera val split has as many as val")
    for key, default in FOREIGN_SIZES.items():
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=None,
                            help=f"--renderer foreign: images of the {key.split('_')[1]} split (default {default}, {FOREIGN_QUICK_SIZES[key]} with --quick)")
    parser.add_argument("--foreign-workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="--renderer foreign: processes rendering the dataset (the output does not depend on it)")
    parser.add_argument("--cache-dir", type=Path, default=_common.DEFAULT_CACHE_DIR)
    parser.add_argument("--results-dir", type=Path, default=None, help=_common.RESULTS_DIR_HELP)
    parser.add_argument("--name", default=None, help="result file name (default bench_transfer, or bench_transfer_foreign_LOOK with --renderer foreign; "
                                                     "_quick appended with --quick)")
    parser.add_argument("--val-variants", choices=("all", "baseline"), default="all",
                        help="score the val splits under every variant (default) or only the baseline (--quick); the test split gets every variant")
    parser.add_argument("--wait-quiet", type=float, default=180, help="first wait up to this many seconds for other processes to leave the CPUs (0: do not wait)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny dataset, 2 epochs, result in a temporary folder")
    parser.add_argument("--no-night", dest="night", action="store_false",
                        help="do not score the night val split (a night copy of the camera val split, or of the clean val split without one)")
    args = parser.parse_args(argv)
    foreign = args.renderer == "foreign"
    own_sizes, foreign_sizes = FOREIGN_SIZES if foreign else SIZE_KEYS, SIZE_KEYS if foreign else FOREIGN_SIZES
    given = [key for key in foreign_sizes if getattr(args, key) is not None]
    if given:
        parser.error(f"--{given[0].replace('_', '-')} is for --renderer {'ours' if foreign else 'foreign'}")
    if not foreign and args.look is not None:
        parser.error("--look is for --renderer foreign")
    if foreign:
        args.look = args.look or "dev"
    defaults = (FOREIGN_QUICK_SIZES if args.quick else FOREIGN_SIZES) if foreign else (QUICK_SIZES if args.quick else demo_sizes())
    for key in own_sizes:
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if args.quick:
        args.wait_quiet, args.val_variants = 0, "baseline"
        args.epochs = args.epochs or 2
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if foreign:
        if min(args.foreign_train, args.foreign_val, args.foreign_test) < 1:
            parser.error("the foreign renderer's train, val and test splits need images")
        if args.seed < 0:
            parser.error("--renderer foreign: --seed must be >= 0")
    elif min(args.val_pedestrians + args.val_vehicles, args.test_pedestrians + args.test_vehicles) < 1:
        parser.error("the val and test splits need images")
    args.train_overrides = parse_set(args.train_set, parser.error)
    try:  # the preset and the overrides checked now, with the config's own message, not after the dataset is made
        from traffic_retrieval.commands import command_config

        command_config("train", args.preset, args.train_overrides)
    except TrafficRetrievalError as exc:
        parser.error(str(exc))
    default_name = f"bench_transfer_foreign_{args.look}" if foreign else "bench_transfer"
    args.name = args.name or (f"{default_name}_quick" if args.quick else default_name)
    args.results_dir = _common.results_dir_for(args.results_dir, args.quick)
    return args


def foreign_dataset(cache_dir: Path, look: str, seed: int, sizes: dict, workers: int) -> Path:
    """The foreign renderer's dataset (``benchmarks/foreign_renderer.py`` in a subprocess), made once per look, seed
    and sizes and reused: complete when ``ground_truth/test_gt.txt`` exists. Rendered into a temporary sibling folder
    and renamed into place, so a killed run leaves no half dataset under the final name."""
    cache_dir = Path(cache_dir)
    name = "-".join(str(v) for v in ("foreign", look, seed, sizes["foreign_train"], sizes["foreign_val"], sizes["foreign_test"]))
    out = cache_dir / name
    if (out / "ground_truth" / "test_gt.txt").is_file():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    command = [sys.executable, str(FOREIGN_RENDERER), "--out", str(tmp), "--seed", str(seed), "--look", look,
               "--train", str(sizes["foreign_train"]), "--val", str(sizes["foreign_val"]), "--test", str(sizes["foreign_test"]),
               "--workers", str(max(1, workers))]
    print(f"[bench_transfer] rendering the foreign dataset {out} ...", file=sys.stderr, flush=True)
    try:
        finished = subprocess.run(command, capture_output=True, text=True)
        if finished.returncode != 0 or not (tmp / "ground_truth" / "test_gt.txt").is_file():
            raise SystemExit(f"bench_transfer: the foreign renderer failed (exit {finished.returncode}): {(finished.stdout + finished.stderr)[-2000:]}")
        (tmp / "foreign_summary.json").write_text(finished.stdout)  # the renderer's summary (split sizes, relevant images per query)
        if (out / "ground_truth" / "test_gt.txt").is_file():  # another run made it meanwhile
            return out
        if out.exists():  # an incomplete folder under the final name (not ours: renames are whole)
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def dataset_with_camera_split(cache_dir: Path, sizes: dict, seed: int) -> Path:
    """``_common``'s cached dataset, checked for its camera val split (as many images as val):
    its cache tag has no camera sizes, so a copy cached before the split existed lacks it;
    then a fresh one is made in a sub-folder of the cache."""
    from traffic_retrieval.data.prepare import CAMERA_VAL_SPLIT

    def has_camera_split(data: Path) -> bool:
        recorded = json.loads((data / "synth_config.json").read_text())
        return all(recorded.get(f"{CAMERA_VAL_SPLIT}_{kind}") == sizes[f"val_{kind}"] for kind in ("pedestrians", "vehicles"))

    data = _common.synthetic_dataset(cache_dir, seed=seed, **sizes)
    if not has_camera_split(data):
        data = _common.synthetic_dataset(Path(cache_dir) / "with-camera-val", seed=seed, **sizes)
    return data


def prepared_work(data: Path) -> Path:
    """``_common.prepared_work``, made again when a cached one predates the camera split's manifest."""
    from traffic_retrieval.commands.prepare import PrepareConfig
    from traffic_retrieval.commands.prepare import run as prepare
    from traffic_retrieval.data.prepare import CAMERA_VAL_SPLIT

    work = _common.prepared_work(data)
    if not (work / "manifests" / f"{CAMERA_VAL_SPLIT}.jsonl").is_file():
        prepare(PrepareConfig(data=data, work=work))
    return work


class EpochTimer:
    """The trainer's public hook: each epoch's training-step seconds, samples and val scores."""

    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, event) -> None:
        self.epochs.append({"epoch": event.epoch, "train_seconds": event.train_seconds, "samples": event.samples, "loss": event.record.get("loss")})


def train(args, work: Path, run_dir: Path) -> dict:
    from traffic_retrieval.commands import command_config
    from traffic_retrieval.commands.train import run as train_run

    config = command_config("train", args.preset, {**args.train_overrides, "work": work, "out": run_dir, "seed": args.seed, "epochs": args.epochs, "progress": False})
    timer = EpochTimer()
    with _common.CpuLoad() as load:
        started = time.perf_counter()
        result = train_run(config, callbacks=[timer])
        seconds = time.perf_counter() - started
    last = result["history"][-1] if result["history"] else {}
    return {
        "checkpoint": Path(result["final_checkpoint"]),
        "model": config.model,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "seconds": seconds,
        "train_step_seconds": sum(e["train_seconds"] for e in timer.epochs),
        "per_epoch": timer.epochs,
        "cpu_load": load.result,
        # the final model's scores as the trainer's own last validation measured them: each query searched among the
        # val images of its LABELLED category (predict's rows use the model's vote), so these read higher where routing errs
        "last_validation_note": "the trainer's validation of the last epoch: the gallery searched by its labelled categories, not the model's vote",
        "last_validation": {split: last[split] for split in ("val", "val_camera") if isinstance(last.get(split), dict)},
    }


def dataset_splits(work: Path, night: bool = True) -> tuple:
    """The scored splits the prepared dataset has: ``val`` and ``test`` always, ``val_camera`` where prepared, ``night`` if asked."""
    return tuple(split for split in SPLITS if (split != "val_camera" or (work / "manifests" / f"{split}.jsonl").is_file()) and (split != "night" or night))


def night_source(splits: tuple) -> str:
    return next(split for split in NIGHT_SOURCE if split in splits)


def night_dataset(data: Path, source: str) -> Path:
    """``DATA-night``: ``data`` with ``source``'s images re-exposed at night (``night_split.py``, seed 0), made once."""
    import night_split

    out = data.with_name(f"{data.name}-night")
    images = sorted(path.name for path in (data / source / f"{source}_images").iterdir())
    done = out / source / f"{source}_images"
    if not (done.is_dir() and sorted(path.name for path in done.iterdir()) == images):
        night_split.write_night_copy(data, source, out, seed=0)
    return out


def split_inputs(data: Path, work: Path, run_dir: Path, splits: tuple = SPLITS) -> dict:
    """split -> (predict's data, queries, gallery, ground truth), for each of ``splits``."""
    from traffic_retrieval.commands.ablate import write_split_queries
    from traffic_retrieval.io import read_jsonl

    inputs = {}
    for split in splits:
        if split == "night":
            source = night_source(splits)
            rows = read_jsonl(work / "manifests" / f"{source}.jsonl")
            queries, ground_truth = write_split_queries(rows, run_dir, source)
            inputs[split] = (None, queries, night_dataset(data, source) / source / f"{source}_images", ground_truth)
            continue
        if split == "test":
            inputs["test"] = (data, data / "test" / "test_text.txt", data / "test" / "test_images", data / "ground_truth" / "test_gt.txt")
            continue
        rows = read_jsonl(work / "manifests" / f"{split}.jsonl")
        queries, ground_truth = write_split_queries(rows, run_dir, split)
        inputs[split] = (None, queries, data / split / f"{split}_images", ground_truth)
    return inputs


def score(checkpoint: Path, work: Path, run_dir: Path, split: str, variant: str, inputs: tuple) -> dict:
    from traffic_retrieval.commands.predict import PredictConfig
    from traffic_retrieval.commands.predict import run as predict
    from traffic_retrieval.evaluation.evaluate import evaluate_files
    from traffic_retrieval.retrieval.queries import QueryConfig
    from traffic_retrieval.retrieval.rerank import RerankConfig

    data, queries, gallery, ground_truth = inputs
    overrides, rerank = VARIANTS[variant]
    submission = run_dir / f"{split}-{variant}.json"
    started = time.perf_counter()
    summary = predict(PredictConfig(data=data, checkpoint=checkpoint, queries=queries, gallery=gallery, out=submission,
                                    query=QueryConfig(**overrides), rerank=RerankConfig(enabled=rerank),
                                    vocabulary=work / "vehicle_vocabulary.json", progress=False))
    scores = evaluate_files(submission, ground_truth).to_json_dict()
    seconds = time.perf_counter() - started
    routing = summary.get("gallery_routing")
    return {"scores": scores, "seconds": seconds, "query_recipe": summary["query_recipe"], "rerank": rerank, "queries": summary["queries"],
            "gallery_images": summary["gallery_images"],
            "gallery_routing": routing and {k: routing[k] for k in ("images", "correct", "accuracy", "per_category") if k in routing}}


def metric(scores: dict, name: str, category: str | None = None) -> float:
    return (scores["per_category"].get(category, {}) if category else scores).get(f"{name}_mAP@10")


def ratio(numerator, denominator):
    return numerator / denominator if numerator is not None and denominator else None


def ratios(results: dict) -> dict:
    """variant -> {"CAMERA/val_baseline" and "CAMERA/val_same_variant" for CAMERA in test, val_camera: official and
    strict, overall and per category}: the camera split under the variant over the clean val under the baseline
    and under the same variant (None where a split was not scored under the variant, or the dataset lacks it)."""
    def one(camera: dict | None, clean: dict | None) -> dict | None:
        if camera is None or clean is None:
            return None
        cam, ref = camera["scores"], clean["scores"]
        return {**{m: ratio(metric(cam, m), metric(ref, m)) for m in ("official", "strict")},
                "per_category": {c: {m: ratio(metric(cam, m, c), metric(ref, m, c)) for m in ("official", "strict")} for c in CATEGORIES}}

    clean = results.get("val", {})
    return {variant: {f"{camera}/val_{reference}": one(results.get(camera, {}).get(variant),
                                                       clean.get(REFERENCE_VARIANT if reference == "baseline" else variant))
                      for camera in ("test", "val_camera", "night") for reference in ("baseline", "same_variant")}
            for variant in VARIANTS}


def markdown(results: dict, routing: dict, ratio_table: dict) -> str:
    def pct(value) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    lines = ["| split | variant | official | strict | ped. official | ped. strict | veh. official | veh. strict | gallery routed right | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for split in SPLITS:
        for variant, entry in results.get(split, {}).items():
            scores = entry["scores"]
            accuracy = (entry["gallery_routing"] or routing.get(split) or {}).get("accuracy")
            lines.append(f"| {SPLIT_TITLES[split]} | {variant} | {pct(metric(scores, 'official'))} | {pct(metric(scores, 'strict'))} | "
                         f"{pct(metric(scores, 'official', 'pedestrian'))} | {pct(metric(scores, 'strict', 'pedestrian'))} | "
                         f"{pct(metric(scores, 'official', 'vehicle'))} | {pct(metric(scores, 'strict', 'vehicle'))} | {pct(accuracy)} | {entry['seconds']:.1f} |")
    cameras = [camera for camera in ("test", "val_camera", "night") if camera in results]
    lines += ["", f"Ratios camera / clean val (the clean val under the {REFERENCE_VARIANT}; under the same variant in brackets):", "",
              "| variant | " + " | ".join(f"{SPLIT_TITLES[camera]} / clean val, official | strict" for camera in cameras) + " |",
              "|---|" + "---|---|" * len(cameras)]

    def fmt(variant: str, key: str, name: str) -> str:
        base, same = ratio_table[variant][f"{key}/val_baseline"], ratio_table[variant][f"{key}/val_same_variant"]
        text = "-" if base is None or base[name] is None else f"{base[name]:.2f}"
        if variant != REFERENCE_VARIANT and same is not None and same[name] is not None:
            text += f" ({same[name]:.2f})"
        return text

    for variant in ratio_table:
        lines.append(f"| {variant} | " + " | ".join(f"{fmt(variant, camera, 'official')} | {fmt(variant, camera, 'strict')}" for camera in cameras) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    foreign = args.renderer == "foreign"
    if foreign:
        sizes = {key: getattr(args, key) for key in FOREIGN_SIZES}
        data = foreign_dataset(args.cache_dir, args.look, args.seed, sizes, args.foreign_workers)
        work = _common.prepared_work(data)
    else:
        sizes = {key: getattr(args, key) for key in SIZE_KEYS}
        data = dataset_with_camera_split(args.cache_dir, sizes, args.seed)
        work = prepared_work(data)
    splits = dataset_splits(work, args.night)
    run_dir = Path(args.cache_dir) / f"transfer-run-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    try:
        quiet = _common.wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
        load_before = _common.loadavg()
        trained = train(args, work, run_dir / "run")
        print(f"[bench_transfer] trained {trained['model']} for {trained['epochs']} epochs in {trained['seconds']:.1f} s", file=sys.stderr, flush=True)
        inputs = split_inputs(data, work, run_dir, splits)
        results = {split: {} for split in splits}
        with _common.CpuLoad() as scoring_load:
            for split in splits:
                for variant in (VARIANTS if split == "test" or args.val_variants == "all" else (REFERENCE_VARIANT,)):
                    results[split][variant] = score(trained["checkpoint"], work, run_dir, split, variant, inputs[split])
                    if variant == "recipe" and split == "test":
                        print(f"[bench_transfer] variant recipe (no flags): the checkpoint's query recipe resolved to "
                              f"{json.dumps(results[split][variant]['query_recipe'])}", file=sys.stderr, flush=True)
        load_after = _common.loadavg()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    routing = {split: (trained["last_validation"].get(split) or {}).get("routing") for split in splits if split != "test"}
    routing["test"] = results["test"][REFERENCE_VARIANT]["gallery_routing"]
    ratio_table = ratios(results)
    machine = _common.machine()
    machine["avx512_bf16"] = "avx512_bf16" in machine["cpu_flags"]
    if foreign:
        summary_file = data / "foreign_summary.json"
        rendered = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        dataset = {"renderer": "foreign", "look": args.look, "seed": args.seed, **sizes, "path": str(data),
                   "splits": rendered.get("splits"), "mean_relevant_per_query": rendered.get("mean_relevant_per_query")}
    else:
        recorded = json.loads((data / "synth_config.json").read_text())
        dataset = {"renderer": "ours", **{key: recorded.get(key) for key in (*SIZE_KEYS, "val_camera_pedestrians", "val_camera_vehicles", "seed")}}
    trained_record = {k: v for k, v in trained.items() if k != "checkpoint"}
    trained_on = f"the foreign renderer's clean look (its test gallery in the {args.look} camera look)" if foreign else "the clean renderer setting"
    split_text = "the clean val split and the camera-domain test split" if "val_camera" not in splits else \
        "the clean val split, the camera-domain val split and the camera-domain test split"
    path = _common.write_result(args.name, {
        "measures": f"a model trained on {trained_on}, scored on {split_text} (official / strict mAP@10, overall and per "
                    "category) under each inference-time switch; ratios camera / clean val",
        "machine": machine,
        "parameters": {"preset": args.preset, "epochs": trained["epochs"], "model": trained["model"], "batch_size": trained["batch_size"],
                       "seed": args.seed, "quick": args.quick, "cache_dir": str(args.cache_dir), "variants": VARIANT_FLAGS,
                       "val_variants": args.val_variants, "renderer": args.renderer, "look": args.look,
                       "foreign_sizes": sizes if foreign else None, "train_overrides": args.train_overrides},
        "dataset": dataset,
        "quiet_wait": quiet,
        "training": trained_record,
        "scoring_seconds": sum(entry["seconds"] for split in results.values() for entry in split.values()),
        "scoring_cpu_load": scoring_load.result,
        "results": results,
        "gallery_routing": routing,
        "ratios": ratio_table,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }, args.results_dir)
    print(markdown(results, routing, ratio_table))
    # what a user gets: the checkpoint's own recipe where it was scored, else the baseline
    shown = {split: "recipe" if "recipe" in results[split] else REFERENCE_VARIANT for split in splits}
    summary = (f"{trained['model']} ({args.preset}{', ' + args.renderer + ' renderer, ' + args.look + ' look' if foreign else ''}, "
               f"{trained['epochs']} epochs, trained in {trained['seconds']:.1f} s): official / strict mAP@10 "
               + ", ".join(f"{SPLIT_TITLES[split]} {100 * metric(results[split][shown[split]]['scores'], 'official'):.1f} / "
                           f"{100 * metric(results[split][shown[split]]['scores'], 'strict'):.1f} ({shown[split]})" for split in splits))
    recipe_ratios = ratio_table.get("recipe") or {}
    camera_ratio = (recipe_ratios.get("test/val_same_variant") or recipe_ratios.get("test/val_baseline") or {}).get("official")
    summary += f" (camera test / clean val under the recipe {camera_ratio:.2f})" if camera_ratio is not None else ""
    print(f"bench_transfer: {summary}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
