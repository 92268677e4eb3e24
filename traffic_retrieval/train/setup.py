"""The model, its trainable parameters and its optimizer, made ready for training.

``load_model`` starts from a traffic-retrieval checkpoint or an open_clip name;
``lock_towers`` freezes what the recipe freezes; ``contrastive_module`` wraps the
model so one ``forward`` (hence one DDP wrapper) covers both towers and the heads.
"""

from __future__ import annotations

from ..errors import TrafficRetrievalError

NEW_MODEL_RESIZE_MODE = "pad"  # the seed's: zero-pad to a square, then resize


def load_model(model_name: str, pretrained: str | None, checkpoint=None, resize_mode: str | None = None, device: str = "cpu",
               grad_checkpointing: bool = False, trust_checkpoint: bool = False):
    """The ``LoadedModel`` to train, on ``device``, image tower channels-last.

    From ``checkpoint`` (a traffic-retrieval checkpoint) when given, else ``model_name``
    with ``pretrained`` weights. ``resize_mode`` None keeps a checkpoint's own resize
    mode (a new model gets ``pad``); any other value replaces it.
    """
    import dataclasses

    import torch

    from ..model.factory import create_model, load_checkpoint

    if checkpoint:
        loaded = load_checkpoint(checkpoint, device=device, trust_architecture=trust_checkpoint)
    else:
        loaded = create_model(model_name, pretrained, None, device, grad_checkpointing)
        resize_mode = resize_mode or NEW_MODEL_RESIZE_MODE
    if resize_mode is not None:
        loaded.preprocess = dataclasses.replace(loaded.preprocess, resize_mode=resize_mode)
    loaded.model.to(device)
    if grad_checkpointing:
        loaded.model.set_grad_checkpointing(True)
    loaded.model.visual.to(memory_format=torch.channels_last)
    return loaded


def lock_towers(model, model_name: str, lock_image: bool = False, image_unlocked_groups: int = 0, freeze_bn_stats: bool = False,
                lock_text: bool = False, text_unlocked_layers: int = 0) -> None:
    """Freeze the image and/or text tower with open_clip's own locking (LiT-style)."""
    try:
        if lock_image:
            model.lock_image_tower(unlocked_groups=image_unlocked_groups, freeze_bn_stats=freeze_bn_stats)
        if lock_text:
            model.lock_text_tower(unlocked_layers=text_unlocked_layers)
    except (AssertionError, AttributeError, NotImplementedError) as exc:
        raise TrafficRetrievalError(f"cannot lock towers of {model_name!r} as asked ({exc or 'not supported by this architecture'})") from None


def parameter_groups(module, weight_decay: float) -> list[dict]:
    """open_clip's rule: no weight decay on gains, biases, norms and logit_scale; frozen parameters left out."""
    decay, no_decay = [], []
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        exclude = parameter.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(parameter)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def make_optimizer(groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6):
    """AdamW; the defaults are open_clip's CLIP betas and eps (the seed's)."""
    import torch

    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def make_scaler(device: str, dtype):
    """A loss scaler, active only where it is needed: fp16 autocast on CUDA."""
    import torch

    return torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and device.startswith("cuda"))


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


def distributed_module(module, context, device: str):
    """``module`` under DistributedDataParallel when this process is in a process group
    (torchrun, one process included), else ``module`` itself."""
    if not context.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[context.local_rank] if device.startswith("cuda") else None)
