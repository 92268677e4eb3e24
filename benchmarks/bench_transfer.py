"""Transfer: train on the clean renderer setting, score on the camera-domain splits.

Issue #14. A synthetic dataset (the demo's default sizes, seed 0) is made with a
camera-domain val split (``val_camera``, drawn in the test split's surveillance look)
and prepared; a model is trained with a preset (default ``cpu-tiny``, its epochs)
through the trainer's public hook, ``commands.train.run(config, callbacks=[...])``,
timing the whole call and each epoch's training steps (``EpochEnd.train_seconds``).
The final checkpoint is then scored on three splits:

- ``val``: the clean val split (the training images' look);
- ``val_camera``: the camera-domain val split;
- ``test``: the camera-domain test split, with its ground truth.

Val splits are scored as ``ablate`` scores them (``commands.ablate.write_split_queries``:
every caption is a query, relevance = equal ATTR), then ``predict`` + ``evaluate_files``;
the test split with ``predict --data`` + ``evaluate_files`` against
``ground_truth/test_gt.txt``. The test split is scored under every inference-time switch,
and so are the val splits unless ``--val-variants baseline`` (``--quick``): the camera val
split, not the test, is where a switch should be chosen. One ``predict`` each, the gallery
encoded again every time (``predict --index`` would reuse an encoded gallery, but without
the flipped twins re-ranking uses):

- ``baseline``: ``--gallery-norm none``, the checkpoint's gallery scope (routed);
- ``center``: ``--gallery-norm center``;
- ``soft``: ``--gallery-scope soft``;
- ``center+soft``: both;
- ``center+soft+rerank``: both and ``--rerank``.

Reported: official and strict mAP@10 overall and per category (pedestrian / vehicle)
for every split x variant, the test gallery's routing accuracy (``predict`` reports it
from ``ground_truth/test_label.txt``; the val splits' from the training's last
validation), the ratios camera test / clean val and camera val / clean val (official and
strict, overall and per category; the clean val under the baseline, and under the same
variant where scored), the training and scoring seconds, and the machine. A Markdown
table is printed.

    python benchmarks/bench_transfer.py                 # writes benchmarks/results/bench_transfer.json
    python benchmarks/bench_transfer.py --epochs 10     # shorter training
    python benchmarks/bench_transfer.py --quick         # smoke run (tiny data, 2 epochs), temp folder
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

SPLITS = ("val", "val_camera", "test")
SPLIT_TITLES = {"val": "clean val", "val_camera": "camera val", "test": "camera test"}
CATEGORIES = ("pedestrian", "vehicle")
# name -> (QueryConfig overrides, re-rank); unset values are the checkpoint's recipe
VARIANTS = {
    "baseline": ({"gallery_norm": "none"}, False),
    "center": ({"gallery_norm": "center"}, False),
    "soft": ({"gallery_norm": "none", "gallery_scope": "soft"}, False),
    "center+soft": ({"gallery_norm": "center", "gallery_scope": "soft"}, False),
    "center+soft+rerank": ({"gallery_norm": "center", "gallery_scope": "soft"}, True),
}
VARIANT_FLAGS = {"baseline": "", "center": "--gallery-norm center", "soft": "--gallery-scope soft",
                 "center+soft": "--gallery-norm center --gallery-scope soft",
                 "center+soft+rerank": "--gallery-norm center --gallery-scope soft --rerank"}
QUICK_SIZES = {"train_pedestrians": 40, "train_vehicles": 40, "val_pedestrians": 12, "val_vehicles": 12, "test_pedestrians": 12, "test_vehicles": 12}
SIZE_KEYS = tuple(QUICK_SIZES)


def demo_sizes() -> dict:
    """The demo's dataset sizes: ``SynthConfig``'s defaults (``demo`` passes only out and seed)."""
    from traffic_retrieval.synth import SynthConfig

    return {f.name: f.default for f in dataclasses.fields(SynthConfig) if f.name in SIZE_KEYS}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-tiny", help="training preset (its model, batch, lr, epochs)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    for key in SIZE_KEYS:
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=None,
                            help=f"images (default: the demo's, {demo_sizes()[key]}); the camera val split has as many as val")
    parser.add_argument("--cache-dir", type=Path, default=_common.DEFAULT_CACHE_DIR)
    parser.add_argument("--results-dir", type=Path, default=None, help=_common.RESULTS_DIR_HELP)
    parser.add_argument("--name", default=None, help="result file name (default bench_transfer, bench_transfer_quick with --quick)")
    parser.add_argument("--val-variants", choices=("all", "baseline"), default="all",
                        help="score the val splits under every variant (default) or only the baseline (--quick); the test split gets every variant")
    parser.add_argument("--wait-quiet", type=float, default=180, help="first wait up to this many seconds for other processes to leave the CPUs (0: do not wait)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny dataset, 2 epochs, result in a temporary folder")
    args = parser.parse_args(argv)
    defaults = QUICK_SIZES if args.quick else demo_sizes()
    for key in SIZE_KEYS:
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if args.quick:
        args.wait_quiet, args.val_variants = 0, "baseline"
        args.epochs = args.epochs or 2
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if min(args.val_pedestrians + args.val_vehicles, args.test_pedestrians + args.test_vehicles) < 1:
        parser.error("the val and test splits need images")
    args.name = args.name or ("bench_transfer_quick" if args.quick else "bench_transfer")
    args.results_dir = _common.results_dir_for(args.results_dir, args.quick)
    return args


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

    config = command_config("train", args.preset, {"work": work, "out": run_dir, "seed": args.seed, "epochs": args.epochs, "progress": False})
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


def split_inputs(data: Path, work: Path, run_dir: Path) -> dict:
    """split -> (predict's data, queries, gallery, ground truth)."""
    from traffic_retrieval.commands.ablate import write_split_queries
    from traffic_retrieval.io import read_jsonl

    inputs = {}
    for split in ("val", "val_camera"):
        rows = read_jsonl(work / "manifests" / f"{split}.jsonl")
        queries, ground_truth = write_split_queries(rows, run_dir, split)
        inputs[split] = (None, queries, data / split / f"{split}_images", ground_truth)
    inputs["test"] = (data, data / "test" / "test_text.txt", data / "test" / "test_images", data / "ground_truth" / "test_gt.txt")
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
    and under the same variant (None where a split was not scored under the variant)."""
    def one(camera: dict | None, clean: dict | None) -> dict | None:
        if camera is None or clean is None:
            return None
        cam, ref = camera["scores"], clean["scores"]
        return {**{m: ratio(metric(cam, m), metric(ref, m)) for m in ("official", "strict")},
                "per_category": {c: {m: ratio(metric(cam, m, c), metric(ref, m, c)) for m in ("official", "strict")} for c in CATEGORIES}}

    return {variant: {f"{camera}/val_{reference}": one(results[camera].get(variant), results["val"].get("baseline" if reference == "baseline" else variant))
                      for camera in ("test", "val_camera") for reference in ("baseline", "same_variant")}
            for variant in VARIANTS}


def markdown(results: dict, routing: dict, ratio_table: dict) -> str:
    def pct(value) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    lines = ["| split | variant | official | strict | ped. official | ped. strict | veh. official | veh. strict | gallery routed right | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for split in SPLITS:
        for variant, entry in results[split].items():
            scores = entry["scores"]
            accuracy = (entry["gallery_routing"] or routing.get(split) or {}).get("accuracy")
            lines.append(f"| {SPLIT_TITLES[split]} | {variant} | {pct(metric(scores, 'official'))} | {pct(metric(scores, 'strict'))} | "
                         f"{pct(metric(scores, 'official', 'pedestrian'))} | {pct(metric(scores, 'strict', 'pedestrian'))} | "
                         f"{pct(metric(scores, 'official', 'vehicle'))} | {pct(metric(scores, 'strict', 'vehicle'))} | {pct(accuracy)} | {entry['seconds']:.1f} |")
    lines += ["", "Ratios camera / clean val (the clean val under the baseline; under the same variant in brackets):", "",
              "| variant | camera test / clean val, official | strict | camera val / clean val, official | strict |", "|---|---|---|---|---|"]

    def fmt(variant: str, key: str, name: str) -> str:
        base, same = ratio_table[variant][f"{key}/val_baseline"], ratio_table[variant][f"{key}/val_same_variant"]
        text = "-" if base is None or base[name] is None else f"{base[name]:.2f}"
        if variant != "baseline" and same is not None and same[name] is not None:
            text += f" ({same[name]:.2f})"
        return text

    for variant in ratio_table:
        lines.append(f"| {variant} | {fmt(variant, 'test', 'official')} | {fmt(variant, 'test', 'strict')} | "
                     f"{fmt(variant, 'val_camera', 'official')} | {fmt(variant, 'val_camera', 'strict')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = {key: getattr(args, key) for key in SIZE_KEYS}
    data = dataset_with_camera_split(args.cache_dir, sizes, args.seed)
    work = prepared_work(data)
    run_dir = Path(args.cache_dir) / f"transfer-run-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    try:
        quiet = _common.wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
        load_before = _common.loadavg()
        trained = train(args, work, run_dir / "run")
        print(f"[bench_transfer] trained {trained['model']} for {trained['epochs']} epochs in {trained['seconds']:.1f} s", file=sys.stderr, flush=True)
        inputs = split_inputs(data, work, run_dir)
        results = {split: {} for split in SPLITS}
        with _common.CpuLoad() as scoring_load:
            for split in SPLITS:
                for variant in (VARIANTS if split == "test" or args.val_variants == "all" else ("baseline",)):
                    results[split][variant] = score(trained["checkpoint"], work, run_dir, split, variant, inputs[split])
        load_after = _common.loadavg()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    routing = {split: trained["last_validation"].get(split, {}).get("routing") for split in ("val", "val_camera")}
    routing["test"] = results["test"]["baseline"]["gallery_routing"]
    ratio_table = ratios(results)
    machine = _common.machine()
    machine["avx512_bf16"] = "avx512_bf16" in machine["cpu_flags"]
    recorded = json.loads((data / "synth_config.json").read_text())
    dataset = {key: recorded.get(key) for key in (*SIZE_KEYS, "val_camera_pedestrians", "val_camera_vehicles", "seed")}
    trained_record = {k: v for k, v in trained.items() if k != "checkpoint"}
    path = _common.write_result(args.name, {
        "measures": "a model trained on the clean renderer setting, scored on the clean val split, the camera-domain val split and the "
                    "camera-domain test split (official / strict mAP@10, overall and per category) under each inference-time switch; "
                    "ratios camera / clean val",
        "machine": machine,
        "parameters": {"preset": args.preset, "epochs": trained["epochs"], "model": trained["model"], "batch_size": trained["batch_size"],
                       "seed": args.seed, "quick": args.quick, "cache_dir": str(args.cache_dir), "variants": VARIANT_FLAGS,
                       "val_variants": args.val_variants},
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
    base = ratio_table["baseline"]
    summary = (f"{trained['model']} ({args.preset}, {trained['epochs']} epochs, trained in {trained['seconds']:.1f} s): official mAP@10 "
               f"clean val {100 * metric(results['val']['baseline']['scores'], 'official'):.1f}, "
               f"camera val {100 * metric(results['val_camera']['baseline']['scores'], 'official'):.1f}, "
               f"camera test {100 * metric(results['test']['baseline']['scores'], 'official'):.1f}")
    camera_ratio = base["test/val_baseline"]["official"]
    summary += f" (camera test / clean val {camera_ratio:.2f})" if camera_ratio is not None else ""
    print(f"bench_transfer: {summary}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
