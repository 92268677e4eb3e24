"""``train``: contrastive fine-tuning (or training from scratch) of an open_clip model
on a prepare output (WORK/manifests). RUN (--out) gets config.yaml, train.log,
TensorBoard events, training_curves.png and checkpoints/ (epoch_N.pt, best.pt by val
official mAP@10, last.pt for --resume, final.pt). Where the prepare output has a
camera-domain val split (WORK/manifests/val_camera.jsonl), every epoch is scored on it
too, with the same query recipe, and best.pt is chosen by it (``train/state.py``).
Under ``torchrun --nproc_per_node N -m traffic_retrieval train ...`` the global batch
is split across the processes (DDP).

The job is a short orchestration over the ``train`` package (setup, data, schedule,
loop, validate, checkpoints, state); ``run(config, callbacks=...)`` lets code watch
a run (``train/callbacks.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import CheckpointTrust, RuntimeOptions, option
from ..data.prepare import CAMERA_VAL_SPLIT
from ..errors import TrafficRetrievalError
from ..options import AugmentLevel, AugmentSchedule, Loss, ResizeMode, SaveOptimizer
from ..retrieval.queries import QueryConfig

HELP = "contrastive training of an open_clip model"
PRESET = "cpu-tiny"


@dataclass
class TowerLocking:
    """Freezing the towers, LiT-style, with open_clip's ``lock_image_tower``/``lock_text_tower``."""

    lock_image: bool = option(False, help="freeze the image tower (LiT)")
    lock_image_unlocked_groups: int = option(0, minimum=0, help="with --lock-image: last image-tower groups left trainable")
    lock_image_freeze_bn_stats: bool = option(False, help="with --lock-image: freeze its BatchNorm statistics too")
    lock_text: bool = option(False, help="freeze the text tower")
    lock_text_unlocked_layers: int = option(0, minimum=0, help="with --lock-text: last text-tower layers left trainable")


@dataclass
class TrainConfig(RuntimeOptions, TowerLocking, CheckpointTrust):
    work: Path | None = option(None, help="prepare output directory (manifests)")
    out: Path | None = option(None, help="run directory for config, log, TensorBoard events and checkpoints")
    model: str = option("TR-Tiny-RN", help="open_clip architecture name: ours (model/model_configs) or open_clip's, e.g. ViT-bigG-14")
    pretrained: str | None = option(None, help="open_clip pretrained tag (laion2b_s39b_b160k), hf-hub: id or weights file")
    checkpoint: Path | None = option(None, help="start from a traffic-retrieval checkpoint")
    train_manifest: str = option("train", help="manifest name under WORK/manifests")
    resize_mode: ResizeMode | None = option(None, help="how images become squares; unset: a --checkpoint's own, pad for a new model")
    epochs: int = option(30, minimum=1, help="number of epochs to run")
    schedule_epochs: int | None = option(None, minimum=1, help="the cosine schedule's length in epochs (unset: --epochs); the seed ran 5 of 30")
    batch_size: int = option(128, minimum=1, help="batch size per step (global: split across torchrun processes)")
    lr: float = option(1e-3, positive=True, help="peak learning rate")
    wd: float = option(0.1, minimum=0, help="weight decay")
    beta1: float = option(0.9, minimum=0, maximum=0.999999, help="AdamW beta1")
    beta2: float = option(0.98, minimum=0, maximum=0.999999, help="AdamW beta2 (open_clip's CLIP value)")
    eps: float = option(1e-6, positive=True, help="AdamW epsilon (open_clip's CLIP value)")
    warmup: int = option(100, minimum=0, help="warmup steps")
    seed: int = option(0, help="random seed")
    loss: Loss = option("multi-positive", help="multi-positive: equal-ATTR pairs are positives; clip: only the pair itself")
    workers: int = option(2, minimum=0, help="image decoding processes")
    threads: int = option(0, minimum=0, help="torch CPU threads (0: all cores)")
    augment: bool = option(True, help="camera-look training augmentations (--augment-level)")
    augment_level: AugmentLevel = option("surveillance", help="surveillance: the mild set (resolution, blur, exposure, cast, noise); camera: "
                                                             "stronger, plus Gaussian blur, JPEG, gamma, desaturation and border occluders; "
                                                             "camera-wide: camera plus motion blur and night exposures, resolution drawn per image; "
                                                             "camera-night: camera plus night frames as image_tta exposure lifts them")
    augment_schedule: AugmentSchedule = option("constant", help="constant, or ramp: the degradations' probabilities grow linearly to full "
                                                                "strength over the cosine schedule's epochs")
    consistency: float = option(0.0, minimum=0, maximum=10, help="weight of a loss pulling each augmented image's embedding toward its clean "
                                                                 "view's (1 - cosine; needs --augment); 0: off")
    random_resized_crop: bool = option(False, help="the seed's RandomResizedCrop (scale 0.9-1, ratio 3/4-4/3) after squaring")
    style_mix: float = option(0.0, minimum=0, maximum=1, help="share of training images whose style (per-channel mean and std: exposure, "
                                                             "white balance) is mixed with another image's (MixStyle at the input; camera robustness)")
    feature_style_mix: float = option(0.0, minimum=0, maximum=1, help="share of training images whose early feature maps (a ResNet tower's "
                                                                     "layer1 and layer2) take a mix of another image's channel statistics "
                                                                     "(MixStyle inside the tower; camera robustness); 0: off")
    grad_accum: int = option(1, minimum=1, help="gradient accumulation steps")
    grad_checkpointing: bool = option(False, help="gradient checkpointing")
    attribute_heads: float = option(0.0, minimum=0, help="weight of the auxiliary attribute-head loss (0: off)")
    validate: bool = option(True, help="validation each epoch")
    keep_checkpoints: int = option(2, minimum=0, help="epoch_N.pt files to keep (0: all; final.pt, best.pt and --keep-epochs always)")
    keep_epochs: list[int] = option(default_factory=list, help="epochs whose epoch_N.pt is always written and never deleted (the seed's: 5)")
    save_every: int = option(1, minimum=1, help="write epoch_N.pt every K epochs (and the last; last.pt every epoch)")
    save_optimizer: SaveOptimizer = option("last", help="last: last.pt carries the optimizer state (exact --resume); none: no file does")
    resume: bool = option(False, help="continue RUN_DIR from its last epoch")
    progress: bool = option(True, help="progress bars")
    query: QueryConfig = field(default_factory=QueryConfig)


Config = TrainConfig


def _check_config(config: TrainConfig) -> None:
    """What the config layer cannot know: the folders the run reads and writes."""
    if config.work is None or config.out is None:
        raise TrafficRetrievalError("train needs --work (the prepare output) and --out (the run directory)")
    manifest = Path(config.work) / "manifests" / f"{config.train_manifest}.jsonl"
    if not manifest.is_file():
        raise TrafficRetrievalError(f"{manifest}: manifest not found (run `traffic-retrieval prepare` first)")
    if config.checkpoint is not None and not Path(config.checkpoint).is_file():
        raise TrafficRetrievalError(f"{config.checkpoint}: checkpoint not found")


RESUME_NEUTRAL_KEYS = frozenset({"out", "workers", "threads", "device", "precision", "progress", "resume", "keep_checkpoints", "keep_epochs",
                                 "save_every", "save_optimizer", "validate", "query", "epochs", "grad_checkpointing"})
"""Settings a --resume may change: where and how fast it runs, what it keeps and reports, how long it goes on."""
MAX_RUN_CONFIG_BYTES = 1 << 20


def recorded_run_config(run_dir: Path) -> dict | None:
    """RUN/config.yaml as a dict (None when there is none); unreadable or not a mapping: a one-line error."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_RUN_CONFIG_BYTES:
            raise TrafficRetrievalError(f"{path}: larger than a run's settings ({MAX_RUN_CONFIG_BYTES} bytes at most)")
        recorded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TrafficRetrievalError(f"{path}: not readable as the run's settings ({(str(exc).splitlines() or [type(exc).__name__])[0]})") from None
    if not isinstance(recorded, dict):
        raise TrafficRetrievalError(f"{path}: not a mapping of settings")
    return recorded


def training_differences(recorded: dict, config: "TrainConfig") -> list[tuple[str, object, object]]:
    """``(key, recorded value, asked value)`` of every setting that decides the trained weights
    (all but ``RESUME_NEUTRAL_KEYS``) on which a run's recorded settings and ``config`` differ;
    a key a run recorded before it existed counts as its default."""
    from ..config import config_to_dict

    asked, defaults = config_to_dict(config), config_to_dict(TrainConfig())
    return [(key, recorded.get(key, defaults.get(key)), value) for key, value in asked.items()
            if key not in RESUME_NEUTRAL_KEYS and recorded.get(key, defaults.get(key)) != value]


def check_resumable(run_dir: Path, config: "TrainConfig") -> None:
    """``--resume`` continues one training: a RUN whose last.pt was trained with other
    settings (resize mode, loss, augmentation, data, ...) is a one-line error, not a silent
    mix of two runs."""
    if not (Path(run_dir) / "checkpoints" / "last.pt").is_file():
        return
    recorded = recorded_run_config(run_dir)
    if recorded is None:
        return
    differences = training_differences(recorded, config)
    if differences:
        key, was, asked = differences[0]
        more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
        raise TrafficRetrievalError(f"{run_dir}: was trained with {key} {was!r}, this run asks for {asked!r}{more}: --resume continues the "
                                    f"same training; use a new --out, or the run's own settings (RUN/config.yaml)")


def run(config: TrainConfig, callbacks=()) -> dict:
    """Train and return a summary: run folder, final checkpoint, history, best val score.

    ``callbacks``: objects with any of ``on_epoch_start(epoch, epochs)`` and
    ``on_epoch_end(EpochEnd)`` (``train/callbacks.py``), called on every rank.
    """
    import json
    import time
    from contextlib import ExitStack

    import torch
    import yaml

    from ..config import checked, config_to_dict
    from ..io import atomic_write_text, folder_lock
    from ..retrieval.queries import RECIPE_KEY, query_recipe, resolve_query_config
    from ..runtime import autocast_dtype, barrier, cleanup, init_distributed, local_device, resolve_device
    from ..train.callbacks import EpochEnd, notify
    from ..train.checkpoints import OPTIMIZER_RESTART_MESSAGE, Checkpointer, category_texts
    from ..train.data import load_run_data, load_val_set
    from ..train.log import RunLog
    from ..train.loop import train_epoch
    from ..train.schedule import plan_schedule
    from ..train.setup import load_model, lock_towers
    from ..train.state import BEST_METRIC, selection_split
    from ..train.validate import val_queries, validate

    config = checked(config)  # a config made in code gets the checks a YAML one gets
    _check_config(config)
    run_dir, work = Path(config.out), Path(config.work)
    device = resolve_device(config.device)
    context = init_distributed(device)
    held = ExitStack()
    try:
        if context.is_main:
            held.enter_context(folder_lock(run_dir, "train"))  # one run per RUN folder (creates it)
        device = local_device(device, context)
        if config.resume:
            check_resumable(run_dir, config)  # on every rank: all refuse alike, none waits for another
        if context.is_main:
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        dtype = autocast_dtype(config.precision, device)

        loaded = load_model(config.model, config.pretrained, config.checkpoint, config.resize_mode, device, config.grad_checkpointing,
                            trust_checkpoint=config.trust_checkpoint)
        model = loaded.model
        lock_towers(model, loaded.model_name, config.lock_image, config.lock_image_unlocked_groups, config.lock_image_freeze_bn_stats,
                    config.lock_text, config.lock_text_unlocked_layers)
        # the query recipe (text form, router, gallery scope): the flags', else a --checkpoint's, else the default
        recipe = resolve_query_config(config.query, loaded.checkpoint if config.checkpoint else None)
        training_set, val_set = load_run_data(work, config.train_manifest, loaded.preprocess, loaded.tokenizer, config.workers, context, config.validate,
                                              text_form=recipe.text_form)
        routing_texts = category_texts(training_set.rows, seed=config.seed, text_form=recipe.text_form)  # stored in checkpoints; routes galleries
        queries = val_queries(val_set, loaded.tokenizer, recipe, routing_texts) if val_set is not None else None
        # the camera-domain val split (the test's look), scored the same way; it chooses best.pt where present. Its
        # decoding draws from torch's RNG (DataLoader seeds), forked so the split changes nothing that is trained.
        camera_val_set = None
        if config.validate:
            with torch.random.fork_rng(devices=[]):
                camera_val_set = load_val_set(work, CAMERA_VAL_SPLIT, loaded.preprocess, loaded.tokenizer, config.workers, context, recipe.text_form)
        camera_queries = val_queries(camera_val_set, loaded.tokenizer, recipe, routing_texts) if camera_val_set is not None else None
        state, parts = _state_and_step_parts(config, loaded, training_set, device, dtype, context)
        schedule = plan_schedule(len(training_set.rows), config.batch_size, config.grad_accum, config.epochs, config.lr, config.warmup, context.world_size,
                                 schedule_epochs=config.schedule_epochs)
        checkpointer = Checkpointer(run_dir, loaded, {"category_texts": routing_texts,
                                                      "train_config": config_to_dict(config), RECIPE_KEY: query_recipe(recipe)},
                                    config.keep_checkpoints, keep_epochs=tuple(config.keep_epochs), save_every=config.save_every,
                                    save_optimizer=config.save_optimizer)

        log = RunLog(run_dir) if context.is_main else None
        if config.resume and checkpointer.resume(state) and log:
            log.line(f"resumed from {checkpointer.last_path} at epoch {state.epoch}")
            if checkpointer.optimizer_restarted:
                log.line(OPTIMIZER_RESTART_MESSAGE)
        if log:
            log.line(f"training {loaded.model_name} on {len(training_set.rows)} pairs ({len(training_set.unreadable)} unreadable images skipped), "
                     f"{config.epochs} epochs (of a {schedule.schedule_epochs or config.epochs}-epoch cosine) x {schedule.steps_per_epoch} steps "
                     f"of {schedule.batch_size} on {context.world_size} process(es){' (DDP)' if context.enabled else ''}, device {device}, autocast {dtype}, "
                     f"text form {recipe.text_form}, router {recipe.router}, gallery scope {recipe.gallery_scope}")
            for message in training_set.unreadable:
                log.line(f"skipped: {message}")
            if camera_val_set is not None:
                log.line(f"validating on val ({len(val_set.rows) if val_set is not None else 0} images) and {CAMERA_VAL_SPLIT} "
                         f"({len(camera_val_set.rows)} images); best.pt is chosen by {CAMERA_VAL_SPLIT} {BEST_METRIC}")
            bare = _bare_vehicle_captions(training_set.rows) if recipe.text_form == "sentence" else 0
            if bare:
                log.line(f"warning: {bare} vehicle captions are bare phrases (augment --caption-form bare) but the text form is sentence, "
                         "so vehicle queries will be encoded as full sentences: train with --text-form a3r to match them")

        def log_step(step: int, loss: float, lr: float) -> None:
            notify(callbacks, "on_step", step, loss, lr)
            if log and step % 10 == 0:
                log.scalars({"train/loss": loss, "train/lr": lr, "train/logit_scale": model.logit_scale.exp().item()}, step)

        show_progress = config.progress and context.is_main
        model.train()
        started, samples_seen = time.time(), 0
        for epoch in range(state.epoch, config.epochs):
            notify(callbacks, "on_epoch_start", epoch + 1, config.epochs)
            result = train_epoch(state, parts, schedule, epoch, config.seed, show_progress, log_step)
            samples_seen += result.samples
            record = {"epoch": epoch + 1, "step": state.step, "loss": result.loss, "samples_per_second": samples_seen / max(time.time() - started, 1e-9)}
            if val_set is not None:  # rank 0 only
                record["val"] = validate(model, val_set, loaded.preprocess, device, dtype, queries)
                log.scalars({f"val/{k}": v for k, v in record["val"].items() if isinstance(v, float)}, state.step)
            if camera_val_set is not None:  # rank 0 only
                record[CAMERA_VAL_SPLIT] = validate(model, camera_val_set, loaded.preprocess, device, dtype, camera_queries)
                log.scalars({f"{CAMERA_VAL_SPLIT}/{k}": v for k, v in record[CAMERA_VAL_SPLIT].items() if isinstance(v, float)}, state.step)
            deciding_split = selection_split(record)
            if deciding_split:
                record["best_split"] = deciding_split  # the split whose score decides best.pt
            is_best = state.finish_epoch(record)
            written = ()
            if context.is_main:
                log.line(json.dumps(record))
                written = tuple(checkpointer.save_epoch(state, is_best, final_epoch=config.epochs))
            barrier(context)
            if show_progress:
                _print_epoch(record, config.epochs)
            notify(callbacks, "on_epoch_end", EpochEnd(epoch + 1, config.epochs, state.step, record, result.samples, result.seconds, context.rank, written))

        model.eval()
        if context.is_main:
            checkpointer.save_final(state)
            log.line(f"done: {checkpointer.final_path}")
            log.close()
            from ..train.curves import write_training_curves

            write_training_curves(run_dir)  # RUN/training_curves.png beside the TensorBoard events
        barrier(context)
    finally:
        held.close()
        cleanup(context)
    return {"run_dir": str(run_dir), "final_checkpoint": str(checkpointer.final_path), "history": state.history, "best": state.best,
            "best_split": state.best_split, "unreadable_images": len(training_set.unreadable)}


def _bare_vehicle_captions(rows: list[dict]) -> int:
    """Vehicle captions already in the a3r bare form (no sentence frame, no final period)."""
    from ..data.text_forms import bare_vehicle_phrase

    return sum(1 for row in rows if row["category"] == "vehicle" and row["text"].strip() == bare_vehicle_phrase(row["text"]) and "augmented_from" in row)


def _state_and_step_parts(config: TrainConfig, loaded, training_set, device: str, dtype, context):
    """The optimizer over the model (and the attribute heads, when asked) and what every step uses."""
    from ..train.augment import AUGMENT_LEVELS
    from ..train.loop import Normalization, StepParts
    from ..train.losses import LOSSES
    from ..train.setup import contrastive_module, distributed_module, make_optimizer, make_scaler, parameter_groups
    from ..train.state import TrainingState

    model = loaded.model
    heads = targets = None
    groups = parameter_groups(model, config.wd)
    if config.attribute_heads > 0:
        from ..data.prepare import load_vocabulary
        from ..train.attribute_heads import attribute_targets, make_attribute_heads

        vocabulary = load_vocabulary(Path(config.work))
        targets = attribute_targets(training_set.rows, vocabulary)
        heads = make_attribute_heads(int(model.visual.output_dim), vocabulary).to(device)
        groups += parameter_groups(heads, config.wd)
    state = TrainingState(model, make_optimizer(groups, config.lr, (config.beta1, config.beta2), config.eps), make_scaler(device, dtype), heads)
    parts = StepParts(distributed_module(contrastive_module(model, heads), context, device), LOSSES[config.loss], training_set,
                      Normalization.of(loaded.preprocess), device, dtype, context, AUGMENT_LEVELS[config.augment_level] if config.augment else None,
                      config.random_resized_crop, config.style_mix, config.augment_schedule, config.consistency if config.augment else 0.0,
                      config.attribute_heads, targets)
    if config.feature_style_mix > 0:
        from ..train.feature_style import FeatureStyleMix

        parts.feature_style = FeatureStyleMix(model, config.feature_style_mix)
    return state, parts


def _print_epoch(record: dict, epochs: int) -> None:
    from tqdm import tqdm

    val_text = f", val official mAP@10 {record['val']['official_mAP@10']:.3f}" if "val" in record else ""
    if CAMERA_VAL_SPLIT in record:
        val_text += f", {CAMERA_VAL_SPLIT} official mAP@10 {record[CAMERA_VAL_SPLIT]['official_mAP@10']:.3f}"
        routing = record[CAMERA_VAL_SPLIT].get("routing") or {}
        if routing.get("accuracy") is not None:
            val_text += f" (images routed right {routing['accuracy']:.3f})"
    tqdm.write(f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.3f}{val_text}, {record['samples_per_second']:.0f} samples/s")


def print_result(result: dict, config: TrainConfig) -> None:
    last = result["history"][-1] if result["history"] else {}
    print(f"final checkpoint: {result['final_checkpoint']}")
    if "val" in last:
        print(f"val official mAP@10 {last['val']['official_mAP@10']:.4f}, strict {last['val']['strict_mAP@10']:.4f}")
    if CAMERA_VAL_SPLIT in last:
        print(f"{CAMERA_VAL_SPLIT} official mAP@10 {last[CAMERA_VAL_SPLIT]['official_mAP@10']:.4f}, "
              f"strict {last[CAMERA_VAL_SPLIT]['strict_mAP@10']:.4f}")
    if result.get("best_split"):
        print(f"best.pt: epoch {result['best']['epoch']} by {result['best_split']} official mAP@10 {result['best']['official_mAP@10']:.4f}")
