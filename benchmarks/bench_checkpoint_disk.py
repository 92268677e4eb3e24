"""Checkpoint disk use: what a run's checkpoints write and hold, for ViT-bigG-14 and the seed's recipe.

estimate: ``traffic_retrieval.train.checkpoints.checkpoint_disk_estimate`` from ViT-bigG-14's
          parameter counts (the model built on the meta device from open_clip's config: no
          memory, no weights), for the seed's run (a 30-epoch cosine, 5 epochs run,
          save_every 1, keep 2, keep_epochs [5]) with save_optimizer last and none, and a
          few other policies for comparison.
check:    the formula against real files: a randomly initialised ViT-B-32 on the CPU (with
          --quick the tiny TR-Tiny-RN), one AdamW step so the optimizer holds its moments,
          then one epoch saved through the ``Checkpointer`` (epoch_1.pt, best.pt linked,
          last.pt) with save_optimizer last and none; file sizes against the estimate.
Goal: each real file within 5 % + 1 MB of the estimate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

SEED_RUN = {"epochs": 5, "schedule_epochs": 30, "save_every": 1, "keep": 2, "keep_epochs": [5]}
BIG_MODEL = "ViT-bigG-14"
TOLERANCE, SLACK_BYTES = 0.05, 1_000_000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-model", default="ViT-B-32", help="model whose real checkpoint files check the formula (random weights, CPU)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results-dir", type=Path, default=None, help=_common.RESULTS_DIR_HELP)
    parser.add_argument("--name", default=None, help="result file name (default checkpoint_disk, checkpoint_disk_quick with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run (< 30 s): TR-Tiny-RN for the check; ViT-bigG-14 only if its meta build is quick")
    args = parser.parse_args(argv)
    if args.quick:
        args.check_model = "TR-Tiny-RN"
    args.name = args.name or ("checkpoint_disk_quick" if args.quick else "checkpoint_disk")
    args.results_dir = _common.results_dir_for(args.results_dir, args.quick)
    return args


def meta_counts(model_name: str, allow_slow: bool) -> dict:
    """(numbers in the state_dict, trainable parameters) of ``model_name``, built on the meta
    device from open_clip's config (well under a second); else, unless ``--quick``,
    ``open_clip.create_model(device='meta')``, which first builds the model on the CPU."""
    import open_clip
    import torch

    from traffic_retrieval.train.checkpoints import parameter_counts

    started = time.perf_counter()
    config = open_clip.get_model_config(model_name)
    try:
        if config is None:
            raise ValueError(f"open_clip has no config for {model_name}")
        custom_text = config.pop("custom_text", False) or "hf_model_name" in config.get("text_cfg", {})
        with torch.device("meta"):
            model = (open_clip.CustomTextCLIP if custom_text else open_clip.CLIP)(**config)
        how = "open_clip config, built under torch.device('meta')"
    except Exception as exc:  # noqa: BLE001 - any failure falls back to open_clip's own factory
        if not allow_slow:
            return {"skipped": f"meta build failed ({type(exc).__name__}: {exc}); the fallback is slow, skipped in --quick"}
        model = open_clip.create_model(model_name, device="meta")
        how = "open_clip.create_model(device='meta')"
    stored, trainable = parameter_counts(model)
    towers = {name: sum(v.numel() for v in getattr(model, name).state_dict().values()) for name in ("visual", "transformer") if hasattr(model, name)}
    return {"model": model_name, "how": how, "seconds": round(time.perf_counter() - started, 2), "parameter_count": stored,
            "trainable_count": trainable, "state_dict_tensors": len(model.state_dict()), "image_tower": towers.get("visual"),
            "text_transformer": towers.get("transformer")}


def policy_estimates(counts: dict) -> dict:
    from traffic_retrieval.train.checkpoints import checkpoint_disk_estimate

    policy = {k: v for k, v in SEED_RUN.items() if k != "schedule_epochs"}
    runs = {
        "seed_save_optimizer_last": dict(policy, save_optimizer="last"),
        "seed_save_optimizer_none": dict(policy, save_optimizer="none"),
        "full_cosine_30_epochs_defaults": {"epochs": 30, "save_every": 1, "keep": 2, "keep_epochs": [5], "save_optimizer": "last"},
        "full_cosine_30_epochs_keep_all": {"epochs": 30, "save_every": 1, "keep": 0, "keep_epochs": [], "save_optimizer": "last"},
        "full_cosine_30_epochs_save_every_5_none": {"epochs": 30, "save_every": 5, "keep": 2, "keep_epochs": [5], "save_optimizer": "none"},
    }
    return {name: checkpoint_disk_estimate(counts["parameter_count"], counts["trainable_count"], **settings) for name, settings in runs.items()}


def real_files_check(model_name: str, workdir: Path) -> dict:
    """One epoch through the Checkpointer with each save_optimizer; real sizes against the estimate."""
    import torch

    from traffic_retrieval.model.factory import create_model
    from traffic_retrieval.train.checkpoints import Checkpointer, checkpoint_disk_estimate, parameter_counts
    from traffic_retrieval.train.setup import make_optimizer, make_scaler, parameter_groups
    from traffic_retrieval.train.state import TrainingState

    torch.manual_seed(0)
    started = time.perf_counter()
    loaded = create_model(model_name)
    state = TrainingState(loaded.model, make_optimizer(parameter_groups(loaded.model, 0.1), 1e-3), make_scaler("cpu", None))
    for parameter in loaded.model.parameters():  # one AdamW step: the optimizer's moments exist, as after any real step
        parameter.grad = torch.full_like(parameter, 1e-4)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.finish_epoch({"epoch": 1, "loss": 1.0, "val": {"official_mAP@10": 0.5}})
    build_seconds = time.perf_counter() - started
    stored, trainable = parameter_counts(loaded.model)
    metadata = {"train_config": {"model": model_name, "epochs": 1}}
    result = {"model": model_name, "parameter_count": stored, "trainable_count": trainable, "build_seconds": round(build_seconds, 1), "runs": {}}
    for save_optimizer in ("last", "none"):
        run_dir = workdir / save_optimizer
        checkpointer = Checkpointer(run_dir, loaded, metadata, save_optimizer=save_optimizer)
        started = time.perf_counter()
        checkpointer.save_epoch(state, True, final_epoch=1)
        seconds = time.perf_counter() - started
        estimate = checkpoint_disk_estimate(stored, trainable, epochs=1, save_every=1, keep=2, keep_epochs=(), save_optimizer=save_optimizer)
        files = {}
        for path, expected in ((checkpointer.epoch_path(1), estimate["model_checkpoint_bytes"]), (checkpointer.last_path, estimate["last_bytes"])):
            actual = path.stat().st_size
            files[path.name] = {"bytes": actual, "estimate_bytes": expected, "difference_bytes": actual - expected,
                                "relative_difference": round((actual - expected) / expected, 6),
                                "within_goal": abs(actual - expected) <= TOLERANCE * expected + SLACK_BYTES}
        best, epoch_file = os.stat(checkpointer.best_path), os.stat(checkpointer.epoch_path(1))
        actual_written = sum(p.stat().st_size for p in (checkpointer.epoch_path(1), checkpointer.last_path))
        result["runs"][save_optimizer] = {
            "files": files,
            "best_is_hard_link": best.st_ino == epoch_file.st_ino and best.st_nlink == 2,
            "epoch_bytes_written": actual_written, "epoch_bytes_written_estimate": estimate["bytes_written_per_epoch"][0],
            "save_epoch_seconds": round(seconds, 2),
        }
        shutil.rmtree(run_dir)
    result["within_goal"] = all(f["within_goal"] for run in result["runs"].values() for f in run["files"].values()) and all(
        run["best_is_hard_link"] for run in result["runs"].values())
    return result


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    _common.DEFAULT_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="checkpoint-disk-", dir=_common.DEFAULT_CACHE_DIR))
    try:
        big = meta_counts(BIG_MODEL, allow_slow=not args.quick)
        estimates = policy_estimates(big) if "skipped" not in big else {}
        check = real_files_check(args.check_model, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    payload = {
        "machine": _common.machine(),
        "parameters": {"quick": args.quick, "big_model": BIG_MODEL, "seed_run": SEED_RUN, "check_model": args.check_model,
                       "goal": f"each real file within {TOLERANCE:.0%} + {SLACK_BYTES / 1e6:.0f} MB of the estimate; best.pt a hard link"},
        "big_model_counts": big,
        "estimates": estimates,
        "check": check,
        "goal_met": check["within_goal"],
    }
    path = _common.write_result(args.name, payload, args.results_dir)
    seed = estimates.get("seed_save_optimizer_last")
    line = f"[checkpoint_disk] {BIG_MODEL}: {seed['summary']}" if seed else f"[checkpoint_disk] {BIG_MODEL}: {big.get('skipped')}"
    print(line)
    if seed:
        print(f"[checkpoint_disk] save_optimizer none: {estimates['seed_save_optimizer_none']['summary']}")
    worst = max(abs(f["relative_difference"]) for run in check["runs"].values() for f in run["files"].values())
    print(f"[checkpoint_disk] check on {check['model']} ({check['parameter_count']:,} numbers): largest file/estimate difference "
          f"{worst:.4%}, goal met: {check['within_goal']}")
    print(f"wrote {path}")
    return 0 if check["within_goal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
