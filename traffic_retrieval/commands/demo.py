"""``demo``: the whole pipeline on a CPU - synth, prepare, train, predict, evaluate -
ending with a results table and the final model's scores on both val splits (the clean
val and the camera-domain val_camera). Each finished stage is kept, so an interrupted
demo re-run continues where it stopped."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import option

HELP = "synth, prepare, train, predict and evaluate end to end on a CPU"


@dataclass
class DemoConfig:
    out: Path = option(Path("demo_output"), help="output folder (an interrupted demo continues in it)")
    seed: int = option(0, help="random seed of the data and the training")
    epochs: int | None = option(None, minimum=1, help="override the preset's epochs")
    preset: str = option("cpu-tiny", help="training preset")


Config = DemoConfig


def run(config: DemoConfig) -> dict:
    from . import command_config
    from ..evaluation.evaluate import evaluate_files
    from ..evaluation.evaluate import format_report as format_scores
    from ..io import atomic_write_json
    from ..synth import SynthConfig, generate_dataset
    from .predict import PredictConfig
    from .predict import run as predict
    from .prepare import PrepareConfig, format_report
    from .prepare import run as prepare
    from .train import run as train

    out = Path(config.out)
    data, work, run = out / "data", out / "work", out / "run"
    timings = {}

    def stage(name: str):
        print(f"\n== {name} ==", flush=True)
        timings[name] = time.time()

    stage("synth")
    marker = data / "synth_summary.json"
    if marker.is_file():
        print(f"reusing {data}")
    else:
        summary = generate_dataset(SynthConfig(out=data, seed=config.seed, overwrite=True))  # redo a half-written one
        atomic_write_json(marker, summary)
        print(json.dumps({k: v for k, v in summary.items() if k != "seconds"}))

    stage("prepare")
    print(format_report(prepare(PrepareConfig(data=data, work=work))))

    stage("train")
    train_config = command_config("train", config.preset, {"work": work, "out": run, "seed": config.seed, "epochs": config.epochs, "resume": True})
    trained = train(train_config)
    checkpoint = run / "checkpoints" / "final.pt"

    stage("predict")
    submission = out / "submission.json"
    predict(PredictConfig(data=data, checkpoint=checkpoint, out=submission, vocabulary=work / "vehicle_vocabulary.json"))

    stage("evaluate")
    report = evaluate_files(submission, data / "ground_truth" / "test_gt.txt")
    scores = report.to_json_dict()
    atomic_write_json(out / "scores.json", scores)
    timings["end"] = time.time()
    names = list(timings)
    durations = {names[i]: timings[names[i + 1]] - timings[names[i]] for i in range(len(names) - 1)}
    print()
    print(format_scores(report))
    last_epoch = trained["history"][-1] if trained["history"] else {}
    val_scores = [f"{split} official mAP@10 {100 * last_epoch[split]['official_mAP@10']:.1f}"
                  for split in ("val", "val_camera") if isinstance(last_epoch.get(split), dict)]
    if val_scores:
        print(f"final model (epoch {last_epoch['epoch']}), x100: " + ", ".join(val_scores))
    print("time: " + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in durations.items()) + f", total {sum(durations.values()) / 60:.1f} min")
    print(f"outputs in {out}: data/, work/, run/ (TensorBoard: tensorboard --logdir {run / 'tensorboard'}), submission.json, scores.json")
    return scores


def print_result(scores: dict, config: DemoConfig) -> None:
    """``run`` prints as it goes (the stages take minutes)."""
