"""One optimizer step and one epoch.

``train_step`` takes the rows of each micro-batch and does one optimizer step:
augmentation, normalisation, autocast forward, the feature all-gather under DDP,
the loss, gradient accumulation over the micro-batches, the (fp16) scaler.
``train_epoch`` draws the epoch's order and steps through it.

Under torchrun every rank augments the whole global batch with the shared,
epoch-seeded generator (so the random stream is the one of a single process) and
keeps its contiguous slice; features are all-gathered with gradients, so each rank
computes the contrastive loss over the whole global batch, exactly as one process
would, and DDP averages the gradients.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..runtime import DistributedContext
from .augment import AugmentConfig


@dataclass(frozen=True)
class Normalization:
    """The model's mean and std as (1, 3, 1, 1) tensors, made once per run."""

    mean: Any
    std: Any

    @classmethod
    def of(cls, preprocess) -> "Normalization":
        import torch

        return cls(torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1), torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1))

    def __call__(self, images):
        """Float images in [0, 1] -> normalised model input."""
        return (images - self.mean) / self.std


@dataclass
class StepParts:
    """What every step of a run uses and no step changes."""

    forward: Any  # contrastive_module(model, heads), DDP-wrapped under torchrun
    loss_fn: Callable  # (image_features, text_features, logit_scale, attr_ids) -> loss, over the global batch
    training_set: Any  # train.data.TrainingSet
    normalization: Normalization
    device: str = "cpu"
    dtype: Any = None  # autocast dtype; None: fp32
    context: DistributedContext = field(default_factory=DistributedContext)
    augment: AugmentConfig | None = None  # None: no augmentation
    random_resized_crop: bool = False  # the seed's RandomResizedCrop(scale 0.9-1, ratio 3/4-4/3) before any other augmentation
    style_mix: float = 0.0  # share of images whose channel statistics are mixed with another's (MixStyle at the input)
    augment_schedule: str = "constant"  # augment.AUGMENT_SCHEDULES: how the degradations' probabilities grow over the epochs
    consistency: float = 0.0  # weight of 1 - cos(augmented view, clean view) per image (the clean view's embedding without gradient)
    attribute_weight: float = 0.0  # weight of the attribute-head loss
    attribute_targets: dict | None = None  # attribute_heads.attribute_targets of the training rows
    feature_style: Any = None  # feature_style.FeatureStyleMix on the image tower's early stages, or None


@dataclass(frozen=True)
class EpochResult:
    loss: float  # mean over the epoch's steps
    samples: int  # global samples trained on
    seconds: float  # the epoch's steps, from drawing its order to the last optimizer step


@dataclass
class MicroBatch:
    images: Any  # this rank's model input on the device
    tokens: Any  # this rank's tokens on the device
    attr_ids: Any  # the global batch's ATTR ids on the device
    local_index: Any  # this rank's training rows
    clean_images: Any = None  # with ``consistency``: this rank's images before the camera-look degradations


def _micro_batch(parts: StepParts, global_index, generator) -> MicroBatch:
    import torch

    from .augment import augment_batch, mix_style, random_resized_crop

    training_set, context = parts.training_set, parts.context
    images = training_set.images[global_index]
    if parts.random_resized_crop:
        images = (random_resized_crop(images.float(), generator).round_().clamp_(0, 255)).to(torch.uint8)
    clean = images.float() / 255 if parts.consistency > 0 else None
    images = augment_batch(images, parts.augment, generator) if parts.augment is not None else images.float() / 255
    if parts.style_mix > 0:
        images = mix_style(images, generator, parts.style_mix)
    share = len(global_index) // context.world_size
    local = slice(context.rank * share, (context.rank + 1) * share)
    local_index = global_index[local]
    to_input = lambda batch: parts.normalization(batch[local]).to(parts.device).contiguous(memory_format=torch.channels_last)
    return MicroBatch(to_input(images), training_set.tokens[local_index].to(parts.device), training_set.attr_ids[global_index].to(parts.device),
                      local_index, to_input(clean) if clean is not None else None)


def consistency_loss(image_features, clean_features):
    """Mean ``1 - cos`` between each augmented view's embedding and its clean view's (held
    fixed): the camera-look degradations should not move an image in the embedding space."""
    import torch

    return (1 - torch.nn.functional.cosine_similarity(image_features.float(), clean_features.float().detach(), dim=-1)).mean()


def train_step(state, parts: StepParts, micro_batches: list, generator) -> float:
    """One optimizer step over ``micro_batches`` (global row indices each; gradients of
    ``len(micro_batches)`` micro-batches accumulated). Advances ``state.step``; returns
    the mean loss of the micro-batches."""
    import torch

    from ..model.factory import unwrap
    from ..runtime import autocast, gather_features
    from .attribute_heads import attribute_loss

    model = unwrap(state.model)
    state.optimizer.zero_grad(set_to_none=True)
    losses = []
    for global_index in micro_batches:
        batch = _micro_batch(parts, global_index, generator)
        with autocast(parts.device, parts.dtype):
            if batch.clean_images is not None:
                with torch.no_grad():
                    clean_features = model.encode_image(batch.clean_images, normalize=True)
            with parts.feature_style.mixing(generator) if parts.feature_style is not None else nullcontext():
                image_features, text_features, logits = parts.forward(batch.images, batch.tokens)
            loss = parts.loss_fn(gather_features(image_features.float(), parts.context), gather_features(text_features.float(), parts.context),
                                 model.logit_scale.exp(), batch.attr_ids)
            if parts.attribute_targets is not None:
                loss = loss + parts.attribute_weight * attribute_loss(logits, parts.attribute_targets, batch.local_index)
            if batch.clean_images is not None:
                loss = loss + parts.consistency * consistency_loss(image_features, clean_features)
        state.scaler.scale(loss / len(micro_batches)).backward()
        losses.append(loss.detach())
    state.scaler.step(state.optimizer)
    state.scaler.update()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
    state.step += 1
    return float(torch.stack(losses).float().mean())


def epoch_generator(seed: int, epoch: int):
    """The epoch's data order and augmentation generator; the global RNG (dropout, if a
    model has it) is seeded too, so a resumed run repeats an uninterrupted one."""
    import torch

    torch.manual_seed(seed * 100003 + epoch + 50021)
    return torch.Generator().manual_seed(seed * 100003 + epoch)


def train_epoch(state, parts: StepParts, schedule, epoch: int, seed: int, progress: bool = False,
                on_step: Callable[[int, float, float], None] | None = None) -> EpochResult:
    """Epoch ``epoch`` (0-based) of ``schedule``: its order drawn from ``seed`` and the
    epoch number, ``schedule.steps_per_epoch`` calls of ``train_step`` at the scheduled
    learning rate. ``on_step(step, loss, lr)`` after each step."""
    import torch
    from tqdm import tqdm

    from .augment import augment_strength, scheduled

    started = time.perf_counter()
    if parts.augment is not None and parts.augment_schedule != "constant":
        parts = replace(parts, augment=scheduled(parts.augment, augment_strength(parts.augment_schedule, epoch, schedule.epochs)))
    generator = epoch_generator(seed, epoch)
    order = torch.randperm(len(parts.training_set.rows), generator=generator)
    total_loss = 0.0
    bar = tqdm(range(schedule.steps_per_epoch), desc=f"epoch {epoch + 1}/{schedule.epochs}", leave=False, disable=not progress)
    for step_in_epoch in bar:
        lr = schedule.lr(state.step)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        loss = train_step(state, parts, schedule.micro_batches(order, step_in_epoch), generator)
        total_loss += loss
        bar.set_postfix(loss=f"{loss:.3f}")
        if on_step is not None:
            on_step(state.step, loss, lr)
    return EpochResult(total_loss / schedule.steps_per_epoch, schedule.steps_per_epoch * schedule.samples_per_step, time.perf_counter() - started)
