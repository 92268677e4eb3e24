"""Turning a name, a pretrained tag or a checkpoint into an open_clip model.

Architectures are data: our small CPU models are open_clip JSON configs in
``model_configs/``, registered with open_clip so every open_clip name, pretrained
tag (``laion2b_s39b_b160k``), ``hf-hub:`` id or local file works the same way.

Checkpoints are self-describing: besides ``state_dict`` (the key open_clip reads)
they hold the model name and full architecture config, the preprocessing (in open_clip's
``preprocess_cfg`` keys) and the tokenizer settings, so ``--checkpoint`` alone rebuilds
the model, and plain ``open_clip.create_model_and_transforms(name, pretrained=path)``
loads it too.

Every model we build carries our preprocessing as open_clip's
``model.visual.preprocess_cfg``, so open_clip's own transform for it
(``image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)``)
gives our pixels. open_clip (3.3) reads no preprocessing from a weights file, nor from an
architecture JSON (a ``preprocess_cfg`` key there goes to ``CLIP()``, a TypeError), so
plain open_clip is given it: ``create_model_and_transforms(name, pretrained=path,
image_resize_mode=cfg["resize_mode"], image_mean=cfg["mean"], image_std=cfg["std"],
image_interpolation=cfg["interpolation"])`` with ``cfg = payload["preprocess_cfg"]``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..data.images import PreprocessConfig
from ..errors import TrafficRetrievalError
from ..io import file_sha256

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
CHECKPOINT_FORMAT = "traffic-retrieval-checkpoint/1"
_registered = False


def register_model_configs() -> None:
    """Make our JSON architectures known to open_clip (idempotent)."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def model_config(model_name: str) -> dict:
    import open_clip

    register_model_configs()
    if model_name.startswith(("hf-hub:", "local-dir:")):
        return {}
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise TrafficRetrievalError(f"unknown model {model_name!r}; open_clip knows: {', '.join(open_clip.list_models()[:8])}, ... (see `open_clip.list_models()`)")
    return config


@dataclass
class LoadedModel:
    model: Any  # open_clip CLIP
    tokenizer: Any
    model_name: str
    preprocess: PreprocessConfig  # = model.visual.preprocess_cfg; after changing it, call set_preprocess
    identity: str  # sha256 of the weights file (or name+tag): an index records which model made it
    checkpoint: dict | None = None  # metadata of a traffic-retrieval checkpoint (no tensors)


def _ensure_config_registered(model_name: str, architecture: dict) -> None:
    """Register an architecture stored in a checkpoint when open_clip does not know the name."""
    import open_clip

    register_model_configs()
    if open_clip.get_model_config(model_name) == architecture:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{model_name}.json"
        path.write_text(json.dumps(architecture))
        open_clip.add_model_config(path)


def create_model(
    model_name: str,
    pretrained: str | None = None,
    preprocess: PreprocessConfig | None = None,
    device: str = "cpu",
    gradient_checkpointing: bool = False,
) -> LoadedModel:
    """Build an open_clip model by name, optionally with a pretrained tag, ``hf-hub:`` id or weights file.

    The preprocessing takes size, mean and std from the model and its pretrained tag (as
    open_clip does) and the resize mode, fill colour and interpolation from ``preprocess``
    (default: pad, black, bicubic); the model carries it as ``visual.preprocess_cfg``.
    """
    import open_clip

    architecture = model_config(model_name)
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained or None, device=device)
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        raise TrafficRetrievalError(f"cannot create model {model_name!r} with pretrained={pretrained!r}: {str(exc).splitlines()[0]}") from None
    if gradient_checkpointing:
        model.set_grad_checkpointing(True)
    weights_preprocess = PreprocessConfig.from_open_clip_preprocess_cfg(open_clip.get_model_preprocess_cfg(model))
    chosen = preprocess or PreprocessConfig(weights_preprocess.size)
    if chosen.size != weights_preprocess.size:
        raise TrafficRetrievalError(f"image size {chosen.size} does not match model {model_name!r} ({weights_preprocess.size})")
    preprocess = replace(weights_preprocess, resize_mode=chosen.resize_mode, fill_color=chosen.fill_color, interpolation=chosen.interpolation)
    tokenizer = open_clip.get_tokenizer(model_name)
    identity = f"{model_name}:{pretrained or 'random-init'}"
    if pretrained and Path(pretrained).is_file():
        identity = file_sha256(pretrained)
    return set_preprocess(LoadedModel(model, tokenizer, model_name, preprocess, identity, {"architecture": architecture}), preprocess)


def set_preprocess(loaded: LoadedModel, preprocess: PreprocessConfig) -> LoadedModel:
    """Use ``preprocess`` for this model: ours and the model's open_clip ``preprocess_cfg``
    (what open_clip's transforms are built from) are set together."""
    import open_clip

    loaded.preprocess = preprocess
    open_clip.set_model_preprocess_cfg(unwrap(loaded.model), preprocess.to_open_clip_preprocess_cfg())
    return loaded


def checkpoint_payload(loaded: LoadedModel, extra: dict | None = None, model_state: dict | None = None) -> dict:
    """The self-describing checkpoint dict: open_clip's ``state_dict`` plus metadata."""
    model = loaded.model
    state_dict = model_state if model_state is not None else {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    return {
        "format": CHECKPOINT_FORMAT,
        "model_name": loaded.model_name,
        "architecture": model_config(loaded.model_name) or (loaded.checkpoint or {}).get("architecture", {}),
        "preprocess_cfg": loaded.preprocess.to_open_clip_preprocess_cfg(),
        "tokenizer": {"model_name": loaded.model_name, "context_length": int(getattr(unwrap(model), "context_length", 77))},
        "state_dict": state_dict,
        **(extra or {}),
    }


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def read_checkpoint(path: str | Path) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise TrafficRetrievalError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise TrafficRetrievalError(f"{path}: cannot read checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise TrafficRetrievalError(f"{path}: not a traffic-retrieval checkpoint (use --model/--pretrained for plain open_clip weights)")
    return payload


def load_checkpoint(path: str | Path, device: str = "cpu") -> LoadedModel:
    """Rebuild the model, tokenizer and preprocessing from a traffic-retrieval checkpoint alone."""
    import open_clip

    payload = read_checkpoint(path)
    model_name = payload["model_name"]
    _ensure_config_registered(model_name, payload["architecture"])
    model = open_clip.create_model(model_name, pretrained=None, device="cpu")
    unexpected = model.load_state_dict(payload["state_dict"], strict=True)
    del unexpected
    model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    metadata = {k: v for k, v in payload.items() if k not in ("state_dict", "optimizer", "scaler", "extra_state")}
    try:
        preprocess = stored_preprocess(payload)
    except TrafficRetrievalError as exc:
        raise TrafficRetrievalError(f"{path}: {exc}") from None
    return set_preprocess(LoadedModel(model, tokenizer, model_name, preprocess, file_sha256(path), metadata), preprocess)


def stored_preprocess(payload: dict) -> PreprocessConfig:
    """A checkpoint's preprocessing: open_clip's ``preprocess_cfg``, or the ``preprocess``
    of checkpoints written before (``image_size``, ``resize_mode`` pad or crop)."""
    stored = payload.get("preprocess_cfg", payload.get("preprocess"))
    if not isinstance(stored, dict):
        raise TrafficRetrievalError("checkpoint holds no preprocessing (preprocess_cfg)")
    return PreprocessConfig.from_open_clip_preprocess_cfg(stored)


def encode_text(model, tokens, normalize: bool = True):
    """``model.encode_text`` that skips the padding after the longest caption in the batch.

    open_clip's text tower is causal and pools at the end-of-text token, so the
    positions after the longest sequence never influence the result; cutting them
    is exact and saves most of the text tower's time on short captions.
    """
    import torch.nn.functional as F

    inner = unwrap(model)
    if not (hasattr(inner, "transformer") and hasattr(inner, "token_embedding") and getattr(inner, "text_pool_type", "") == "argmax" and inner.attn_mask is not None):
        return inner.encode_text(tokens, normalize=normalize)
    length = int((tokens != 0).sum(dim=1).max().item()) if tokens.numel() else 1
    length = max(1, min(length, tokens.shape[1]))
    tokens = tokens[:, :length]
    cast_dtype = inner.transformer.get_cast_dtype()
    x = inner.token_embedding(tokens).to(cast_dtype)
    x = x + inner.positional_embedding[:length].to(cast_dtype)
    x = inner.transformer(x, attn_mask=inner.attn_mask[:length, :length])
    x = inner.ln_final(x)
    x = x[tokens.new_tensor(range(x.shape[0])), tokens.argmax(dim=-1)]
    if inner.text_projection is not None:
        x = inner.text_projection(x) if hasattr(inner.text_projection, "weight") else x @ inner.text_projection
    return F.normalize(x, dim=-1) if normalize else x
