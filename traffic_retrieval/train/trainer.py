"""``train``: contrastive fine-tuning (or training from scratch) of an open_clip model.

A short orchestration over focused helpers: data (cached tensors), augment,
losses, schedule; checkpoints are self-describing (``model/factory.py``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import config_to_dict
from ..errors import TrafficRetrievalError
from ..io import atomic_torch_save, atomic_write_text, read_jsonl
from .augment import AugmentConfig


@dataclass
class TrainConfig:
    work: Path | None = None  # the prepare output (manifests)
    out: Path | None = None  # RUN_DIR
    model: str = "TR-Tiny-RN"  # open_clip name, ours (model/model_configs) or hf-hub:...
    pretrained: str | None = None  # open_clip tag (laion2b_s39b_b160k) or weights file
    checkpoint: Path | None = None  # start from a traffic-retrieval checkpoint instead
    train_manifest: str = "train"  # manifest name under WORK/manifests (augment writes others)
    resize_mode: str = "pad"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    wd: float = 0.1
    warmup: int = 100  # steps
    seed: int = 0
    loss: str = "multi-positive"  # or "clip"
    precision: str = "auto"  # auto (bf16 where the CPU has it / amp on CUDA), fp32, bf16, fp16
    device: str = "auto"
    workers: int = 2  # image decoding processes
    threads: int = 0  # torch threads, 0 = all cores
    augment: bool = True
    grad_accum: int = 1
    grad_checkpointing: bool = False
    lock_image: bool = False  # freeze the image tower (LiT), except its last unlocked groups
    lock_image_unlocked_groups: int = 0
    lock_image_freeze_bn_stats: bool = False
    lock_text: bool = False  # freeze the text tower, except its last unlocked layers
    lock_text_unlocked_layers: int = 0
    attribute_heads: float = 0.0  # weight of the auxiliary attribute loss (0: no heads)
    validate: bool = True
    keep_checkpoints: int = 2  # epoch_N.pt files kept (final.pt and best.pt always)
    resume: bool = False
    progress: bool = True


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when available, else cpu; anything else is checked, one-line error if unusable."""
    import re

    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not match:
        raise TrafficRetrievalError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise TrafficRetrievalError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise TrafficRetrievalError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return name


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: str):
    """The autocast dtype for a precision setting, or None for full fp32."""
    import torch

    if precision == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def cosine_lr(step: int, base_lr: float, warmup: int, total_steps: int) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, progress)))


def parameter_groups(model, weight_decay: float):
    """open_clip's rule: no weight decay on gains, biases, embeddings' scale and logit_scale."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        exclude = parameter.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(parameter)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def validate(model, val_set, preprocess, device, dtype) -> dict:
    """Val split as query set and gallery: official/strict mAP@10 and recall, as in evaluate."""
    from ..evaluation.metrics import evaluate_rankings
    from ..retrieval.encode import encode_tokens, encode_uint8_images
    from ..retrieval.rank import topk_by_category

    model.eval()
    image_embeddings = encode_uint8_images(model, val_set.images, preprocess, device, dtype)
    text_embeddings = encode_tokens(model, val_set.tokens, device, dtype)
    categories = [r["category"] for r in val_set.rows]
    ranked = topk_by_category(text_embeddings, categories, image_embeddings, categories, k=10)
    names = [r["name"] for r in val_set.rows]
    by_attr: dict[str, set[str]] = {}
    for row in val_set.rows:
        by_attr.setdefault(row["attr"], set()).add(row["name"])
    report = evaluate_rankings(
        [[names[i] for i, _ in result] for result in ranked], [by_attr[r["attr"]] for r in val_set.rows], categories
    )
    model.train()
    return report.to_json_dict()


def category_texts(rows: list[dict], per_category: int = 500, seed: int = 0) -> dict[str, list[str]]:
    """A sample of distinct training captions per category, stored in the checkpoint so
    inference can tell pedestrian from vehicle gallery images (see ``gallery_categories``)."""
    import random

    sample = {}
    for category in ("pedestrian", "vehicle"):
        texts = sorted({r["text"] for r in rows if r["category"] == category})
        random.Random(seed).shuffle(texts)
        if texts:
            sample[category] = texts[:per_category]
    return sample


class RunLog:
    """Appends to RUN_DIR/train.log and TensorBoard at once."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "train.log"
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def line(self, message: str) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(time.strftime("%Y-%m-%d %H:%M:%S ") + message + "\n")

    def scalars(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self):
        self.writer.close()


def contrastive_module(model, heads=None):
    """An nn.Module whose forward returns normalised image and text features (and the
    attribute heads' logits), so DDP can wrap the whole step: open_clip's encode_*
    methods bypass ``forward``."""
    import torch.nn as nn

    from ..model.factory import encode_text
    from .attribute_heads import head_logits

    class ContrastiveForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.heads = heads

        def forward(self, images, tokens):
            image_features = self.model.encode_image(images, normalize=True)
            logits = head_logits(self.heads, image_features) if self.heads is not None else None
            return image_features, encode_text(self.model, tokens), logits

    return ContrastiveForward()


def lock_towers(model, config: TrainConfig) -> None:
    """Freeze the image and/or text tower with open_clip's own locking (LiT-style)."""
    try:
        if config.lock_image:
            model.lock_image_tower(unlocked_groups=config.lock_image_unlocked_groups, freeze_bn_stats=config.lock_image_freeze_bn_stats)
        if config.lock_text:
            model.lock_text_tower(unlocked_layers=config.lock_text_unlocked_layers)
    except (AssertionError, AttributeError, NotImplementedError) as exc:
        raise TrafficRetrievalError(f"cannot lock towers of {config.model!r} as asked ({exc or 'not supported by this architecture'})") from None


def _check_config(config: TrainConfig) -> None:
    from .losses import LOSSES

    if config.work is None or config.out is None:
        raise TrafficRetrievalError("train needs --work (the prepare output) and --out (the run directory)")
    if not (Path(config.work) / "manifests" / f"{config.train_manifest}.jsonl").is_file():
        raise TrafficRetrievalError(f"{Path(config.work) / 'manifests' / (config.train_manifest + '.jsonl')}: manifest not found (run `traffic-retrieval prepare` first)")
    if config.loss not in LOSSES:
        raise TrafficRetrievalError(f"loss must be one of {', '.join(LOSSES)}, got {config.loss!r}")
    if config.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise TrafficRetrievalError(f"precision must be auto, fp32, bf16 or fp16, got {config.precision!r}")
    for key in ("epochs", "batch_size", "grad_accum"):
        if getattr(config, key) < 1:
            raise TrafficRetrievalError(f"{key} must be at least 1, got {getattr(config, key)}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise TrafficRetrievalError(f"lr must be a positive number, got {config.lr}")
    for key in ("wd", "warmup", "workers", "threads", "attribute_heads", "keep_checkpoints"):
        value = getattr(config, key)
        if not (math.isfinite(value) and value >= 0):
            raise TrafficRetrievalError(f"{key} must be zero or more, got {value}")


def train(config: TrainConfig) -> dict:
    """Train and return a summary (final metrics, paths, samples per second)."""
    import torch
    import yaml
    from tqdm import tqdm

    from ..data.images import PreprocessConfig
    from ..model.factory import checkpoint_payload, create_model, load_checkpoint
    from .attribute_heads import attribute_loss
    from .augment import augment_batch
    from .data import build_training_set
    from .distributed import barrier, cleanup, gather_features, init_distributed, local_device
    from .losses import LOSSES

    _check_config(config)
    run_dir = Path(config.out)
    device = resolve_device(config.device)
    context = init_distributed(device)
    device = local_device(device, context)
    if context.is_main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    dtype = autocast_dtype(config.precision, device)

    if config.checkpoint:
        loaded = load_checkpoint(config.checkpoint, device=device)
        loaded.preprocess.resize_mode = config.resize_mode
    else:
        loaded = create_model(config.model, config.pretrained, None, device, config.grad_checkpointing)
        loaded.preprocess = PreprocessConfig(loaded.preprocess.size, config.resize_mode, loaded.preprocess.mean, loaded.preprocess.std)
    model, preprocess = loaded.model.to(device), loaded.preprocess
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    lock_towers(model, config)
    model.visual.to(memory_format=torch.channels_last)

    work = Path(config.work)
    train_rows = read_jsonl(work / "manifests" / f"{config.train_manifest}.jsonl")
    if context.is_main:  # rank 0 fills the decoded-image cache, the others read it
        training_set = build_training_set(train_rows, preprocess, loaded.tokenizer, work / "cache", config.workers)
    barrier(context)
    if not context.is_main:
        training_set = build_training_set(train_rows, preprocess, loaded.tokenizer, work / "cache", config.workers)
    val_path = work / "manifests" / "val.jsonl"
    val_set = None
    if config.validate and val_path.is_file() and context.is_main:
        val_rows = read_jsonl(val_path)
        if val_rows:
            val_set = build_training_set(val_rows, preprocess, loaded.tokenizer, work / "cache", config.workers)

    texts_by_category = category_texts(training_set.rows, seed=config.seed)
    loss_fn = LOSSES[config.loss]
    heads = targets = None
    groups = parameter_groups(model, config.wd)
    if config.attribute_heads > 0:
        from ..data.prepare import load_vocabulary
        from .attribute_heads import attribute_targets, make_attribute_heads

        vocabulary = load_vocabulary(work)
        targets = attribute_targets(training_set.rows, vocabulary)
        heads = make_attribute_heads(int(model.visual.output_dim), vocabulary).to(device)
        groups += parameter_groups(heads, config.wd)
    forward = contrastive_module(model, heads)
    if context.enabled:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(forward, device_ids=[context.local_rank] if device.startswith("cuda") else None)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and device.startswith("cuda"))
    num_samples = len(training_set.rows)
    batch_size = min(config.batch_size, num_samples)  # the global batch, split across ranks
    if batch_size % context.world_size:
        raise TrafficRetrievalError(f"batch_size {batch_size} must be divisible by the number of processes ({context.world_size})")
    steps_per_epoch = max(1, num_samples // batch_size // config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    augment_config = AugmentConfig()

    log = RunLog(run_dir) if context.is_main else None
    start_epoch, step, best = 0, 0, {"official_mAP@10": -1.0, "epoch": None}
    history = []
    resume_path = run_dir / "checkpoints" / "last.pt"
    if config.resume and resume_path.is_file():
        try:
            state = torch.load(resume_path, map_location="cpu", weights_only=False)
            model.load_state_dict(state["state_dict"])
            if heads is not None and "attribute_heads" in state:
                heads.load_state_dict(state["attribute_heads"])
            optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])  # fp16 loss scale, so a resumed run repeats an uninterrupted one
        except Exception as exc:  # torch raises many types for a damaged or foreign file
            raise TrafficRetrievalError(f"{resume_path}: cannot resume from it ({(str(exc).splitlines() or [type(exc).__name__])[0][:200]}); delete it to start over") from None
        start_epoch, step, best = state["epoch"], state["step"], state["best"]
        history = list(state.get("history", []))  # the epochs before the interruption, for final.pt
        if log:
            log.line(f"resumed from {resume_path} at epoch {start_epoch}")
    if log:
        ddp_note = " (DDP)" if context.enabled else ""
        log.line(f"training {loaded.model_name} on {num_samples} pairs ({len(training_set.unreadable)} unreadable images skipped), "
                 f"{config.epochs} epochs x {steps_per_epoch} steps of {batch_size} on {context.world_size} process(es){ddp_note}, device {device}, autocast {dtype}")
        for message in training_set.unreadable:
            log.line(f"skipped: {message}")

    model.train()
    started = time.time()
    samples_seen = 0
    for epoch in range(start_epoch, config.epochs):
        generator = torch.Generator().manual_seed(config.seed * 100003 + epoch)
        # the global RNG too (dropout, if a model has it), so a resumed run repeats an uninterrupted one
        torch.manual_seed(config.seed * 100003 + epoch + 50021)
        order = torch.randperm(num_samples, generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not (config.progress and context.is_main))
        epoch_loss = 0.0
        for _ in bar:
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, config.lr, config.warmup, total_steps)
            optimizer.zero_grad(set_to_none=True)
            for micro in range(config.grad_accum):
                position = ((step % steps_per_epoch) * config.grad_accum + micro) * batch_size
                global_index = order[position : position + batch_size]
                # every rank augments the whole global batch with the shared generator (so the
                # random stream matches one process) and keeps its own contiguous slice
                images = training_set.images[global_index]
                images = augment_batch(images, augment_config, generator) if config.augment else images.float() / 255
                share = batch_size // context.world_size
                local = slice(context.rank * share, (context.rank + 1) * share)
                batch_index = global_index[local]
                mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
                std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
                images = ((images[local] - mean) / std).to(device).contiguous(memory_format=torch.channels_last)
                tokens = training_set.tokens[batch_index].to(device)
                with torch.autocast(device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None):
                    image_features, text_features, logits = forward(images, tokens)
                    all_image_features = gather_features(image_features.float(), context)
                    all_text_features = gather_features(text_features.float(), context)
                    loss = loss_fn(all_image_features, all_text_features, model.logit_scale.exp(), training_set.attr_ids[global_index].to(device))
                    if heads is not None:
                        loss = loss + config.attribute_heads * attribute_loss(logits, targets, batch_index)
                scaler.scale(loss / config.grad_accum).backward()
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            samples_seen += batch_size * config.grad_accum
            epoch_loss += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if log and step % 10 == 0:
                log.scalars({"train/loss": loss.item(), "train/lr": optimizer.param_groups[0]["lr"], "train/logit_scale": model.logit_scale.exp().item()}, step)
        elapsed = time.time() - started
        record = {"epoch": epoch + 1, "step": step, "loss": epoch_loss / steps_per_epoch, "samples_per_second": samples_seen / max(elapsed, 1e-9)}
        if val_set is not None:
            record["val"] = validate(model, val_set, preprocess, device, dtype)
            log.scalars({f"val/{k}": v for k, v in record["val"].items() if isinstance(v, float)}, step)
        history.append(record)
        if context.is_main:
            log.line(json.dumps(record))
            save_epoch(model, heads, loaded, optimizer, scaler, record, history, best, config, run_dir, epoch + 1, step, texts_by_category)
        barrier(context)
        if config.progress and context.is_main:
            val_text = f", val official mAP@10 {record['val']['official_mAP@10']:.3f}" if "val" in record else ""
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.3f}{val_text}, {record['samples_per_second']:.0f} samples/s")

    model.eval()
    if context.is_main:
        extra = {"attribute_heads": heads.state_dict()} if heads is not None else {}
        final = checkpoint_payload(loaded, {"epoch": config.epochs, "category_texts": texts_by_category, "train_config": config_to_dict(config), "history": history, **extra})
        atomic_torch_save(final, run_dir / "checkpoints" / "final.pt")
        log.line(f"done: {run_dir / 'checkpoints' / 'final.pt'}")
        log.close()
        from .curves import write_training_curves

        write_training_curves(run_dir)  # RUN/training_curves.png beside the TensorBoard events
    barrier(context)
    cleanup(context)
    return {"run_dir": str(run_dir), "final_checkpoint": str(run_dir / "checkpoints" / "final.pt"), "history": history, "best": best,
            "unreadable_images": len(training_set.unreadable)}


def save_epoch(model, heads, loaded, optimizer, scaler, record, history, best, config, run_dir: Path, epoch: int, step: int,
               texts_by_category: dict) -> None:
    """epoch_N.pt (weights), best.pt by val official mAP, and last.pt (with the optimizer, the
    fp16 loss scaler and the history so far, for --resume)."""
    from ..model.factory import checkpoint_payload

    checkpoints = run_dir / "checkpoints"
    extra = {"attribute_heads": heads.state_dict()} if heads is not None else {}
    payload = checkpoint_payload(loaded, {"epoch": epoch, "category_texts": texts_by_category, "train_config": config_to_dict(config), "metrics": record, **extra})
    atomic_torch_save(payload, checkpoints / f"epoch_{epoch}.pt")
    epoch_files = sorted(checkpoints.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    if config.keep_checkpoints > 0:
        for path in epoch_files[: -config.keep_checkpoints]:
            path.unlink(missing_ok=True)
    score = record.get("val", {}).get("official_mAP@10")
    if score is not None and score > best["official_mAP@10"]:
        best.update({"official_mAP@10": score, "epoch": epoch})
        atomic_torch_save(payload, checkpoints / "best.pt")
    atomic_torch_save({"state_dict": payload["state_dict"], "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "history": history,
                       "epoch": epoch, "step": step, "best": best, **extra}, checkpoints / "last.pt")
