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
import math
import re
import tempfile
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..data.images import PreprocessConfig
from ..errors import TrafficRetrievalError
from ..io import file_sha256

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
CHECKPOINT_FORMAT = "traffic-retrieval-checkpoint/1"
_registered = False

# What a checkpoint may say (it may come from someone else). Its model name is a plain
# identifier (it names a JSON file we register with open_clip, so never a path); its
# architecture uses only open_clip's own keys with plain values, none of the keys that
# make open_clip fetch code, weights or a tokenizer (timm, Hugging Face), and no
# ``hf-hub:``/``local-dir:`` name; its weights fit that architecture exactly. Loading
# with ``trust_architecture=True`` lifts the "from elsewhere" refusals, nothing else.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
REMOTE_SCHEMES = ("hf-hub:", "local-dir:")
REMOTE_ARCHITECTURE_KEYS = frozenset({"timm_model_name", "timm_model_pretrained", "hf_model_name", "hf_model_pretrained", "hf_tokenizer_name",
                                      "tokenizer_mode", "tokenizer_kwargs"})
ARCHITECTURE_KEYS = {"embed_dim": int, "quick_gelu": bool, "init_logit_scale": float, "init_logit_bias": typing.Optional[float],
                     "nonscalar_logit_scale": bool, "custom_text": bool}
ARCHITECTURE_TOWERS = {"vision_cfg": ("open_clip.model", "CLIPVisionCfg"), "text_cfg": ("open_clip.model", "CLIPTextCfg"),
                       "multimodal_cfg": ("open_clip.coca_model", "MultimodalCfg")}
LARGEST_ARCHITECTURE_INT = 1 << 24
LARGEST_IMAGE_SIZE = 4096
# metadata read by the tool (or shown) and the type it must have; other keys are never read
METADATA_TYPES = {"format": str, "tokenizer": dict, "epoch": int, "metrics": dict, "history": list, "train_config": dict, "soup": dict,
                  "attribute_heads": dict}
MAX_CATEGORY_TEXTS = 10_000  # per category (training stores 500); each is encoded when the model loads a gallery
MAX_CATEGORY_TEXT_CHARS = 2_000


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
    """Register an architecture stored in a checkpoint when open_clip does not know the name
    (open_clip registers files: ``NAME.json`` in a temporary folder, so NAME must be plain)."""
    import open_clip

    if not isinstance(model_name, str) or not MODEL_NAME.fullmatch(model_name):
        raise TrafficRetrievalError(f"model_name: {model_name!r} is not a plain model name")
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
    """A checkpoint's payload, loaded as data only (``load_plain``); not yet checked (``check_checkpoint``)."""
    path = Path(path)
    if not path.is_file():
        raise TrafficRetrievalError(f"{path}: checkpoint not found")
    payload = load_plain(path, "cannot read checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise TrafficRetrievalError(f"{path}: not a traffic-retrieval checkpoint (use --model/--pretrained for plain open_clip weights)")
    return payload


def load_plain(path: str | Path, failure: str):
    """``torch.load`` of tensors and plain values only (``weights_only``): a file from
    someone else never runs code. ``failure`` starts the one-line error."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():  # torch refused a global: the file holds objects, not data
            raise TrafficRetrievalError(f"{path}: {failure} (it holds Python objects besides tensors and plain values; "
                                        "such a file could run code, so it is not loaded)") from None
        raise TrafficRetrievalError(f"{path}: {failure} ({(str(exc).splitlines() or [type(exc).__name__])[0][:200]})") from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise TrafficRetrievalError(f"{path}: {failure} ({(str(exc).splitlines() or [type(exc).__name__])[0][:200]})") from None


def load_checkpoint(path: str | Path, device: str = "cpu", trust_architecture: bool = False) -> LoadedModel:
    """Rebuild the model, tokenizer and preprocessing from a traffic-retrieval checkpoint alone.

    The checkpoint is checked whole (``check_checkpoint``) before any model is built.
    ``trust_architecture``: allow an architecture that makes open_clip fetch code, weights,
    configs or a tokenizer from elsewhere (``hf-hub:``/``local-dir:`` names, timm and
    Hugging Face towers and tokenizers); only for checkpoints whose author you trust.
    """
    import open_clip

    payload = read_checkpoint(path)
    preprocess = check_checkpoint(payload, path, trust_architecture)
    model_name = payload["model_name"]
    try:
        if not model_name.startswith(REMOTE_SCHEMES):
            _ensure_config_registered(model_name, payload["architecture"])
        model = open_clip.create_model(model_name, pretrained=None, device="cpu")
        model.load_state_dict(payload["state_dict"], strict=True)
    except TrafficRetrievalError as exc:
        raise TrafficRetrievalError(f"{path}: {exc}") from None
    except (RuntimeError, ValueError, OSError) as exc:  # only a trusted architecture gets here with a mismatch
        raise TrafficRetrievalError(f"{path}: cannot build model {model_name!r} ({(str(exc).splitlines() or [type(exc).__name__])[0][:200]})") from None
    model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(model_name)  # checked: a local tokenizer unless trusted
    metadata = {k: v for k, v in payload.items() if k not in ("state_dict", "optimizer", "scaler", "extra_state")}
    return set_preprocess(LoadedModel(model, tokenizer, model_name, preprocess, file_sha256(path), metadata), preprocess)


def stored_preprocess(payload: dict) -> PreprocessConfig:
    """A checkpoint's preprocessing: open_clip's ``preprocess_cfg``, or the ``preprocess``
    of checkpoints written before (``image_size``, ``resize_mode`` pad or crop)."""
    key = "preprocess_cfg" if "preprocess_cfg" in payload else "preprocess"
    stored = payload.get(key)
    if not isinstance(stored, dict):
        raise TrafficRetrievalError("checkpoint holds no preprocessing (preprocess_cfg)" if stored is None
                                    else f"{key}: must be a dict, got {type(stored).__name__}")
    if not all(isinstance(name, str) for name in stored):
        raise TrafficRetrievalError(f"{key}: keys must be strings")
    size = stored.get("size", stored.get("image_size", 224))
    sizes = size if isinstance(size, (list, tuple)) else [size]
    if not (1 <= len(sizes) <= 2 and all(_is_int(s) and 1 <= s <= LARGEST_IMAGE_SIZE for s in sizes)):
        raise TrafficRetrievalError(f"{key}: size must be an integer from 1 to {LARGEST_IMAGE_SIZE} (or two of them), got {_short(size)}")
    for name in ("mean", "std"):
        values = stored.get(name, (0.5, 0.5, 0.5))
        if not (isinstance(values, (list, tuple)) and len(values) == 3 and all(_is_number(v) and (name == "mean" or v > 0) for v in values)):
            raise TrafficRetrievalError(f"{key}: {name} must be three {'positive ' if name == 'std' else ''}numbers, got {_short(values)}")
    for name in ("mode", "interpolation", "resize_mode"):
        if name in stored and not isinstance(stored[name], str):
            raise TrafficRetrievalError(f"{key}: {name} must be a string, got {_short(stored[name])}")
    try:
        return PreprocessConfig.from_open_clip_preprocess_cfg(stored)
    except TrafficRetrievalError as exc:
        raise TrafficRetrievalError(f"{key}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise TrafficRetrievalError(f"{key}: {str(exc)[:200]}") from None


def check_checkpoint(payload: dict, path: str | Path, trust_architecture: bool = False) -> PreprocessConfig:
    """Check everything a checkpoint says before a model is built from it; return its preprocessing.

    The model name, the architecture (open_clip's keys, plain values, nothing that
    fetches from elsewhere unless ``trust_architecture``), the weights against that
    architecture (key by key, shape by shape, on a model built on the meta device,
    which allocates nothing), the preprocessing against the architecture's image size,
    and the type of every other key the tool reads. One-line error naming the field.
    """
    try:
        return _check_checkpoint(payload, trust_architecture)
    except TrafficRetrievalError as exc:
        raise TrafficRetrievalError(f"{path}: {exc}") from None


def _check_checkpoint(payload: dict, trust_architecture: bool) -> PreprocessConfig:
    model_name = payload.get("model_name")
    if not isinstance(model_name, str):
        raise TrafficRetrievalError(f"model_name: missing or not a string ({_short(model_name)})")
    from_elsewhere = _check_model_name(model_name, trust_architecture)
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict) or not state_dict:
        raise TrafficRetrievalError(f"state_dict: must be a dict of tensors, got {_short(state_dict)}")
    _check_tensors(state_dict, "state_dict")
    architecture = payload.get("architecture")
    if not isinstance(architecture, dict):
        raise TrafficRetrievalError(f"architecture: must be a dict, got {_short(architecture)}")
    if not from_elsewhere:
        from_elsewhere = _check_architecture(architecture, trust_architecture, len(state_dict))
    preprocess = stored_preprocess(payload)
    _check_metadata(payload)
    if not from_elsewhere:  # a trusted architecture from elsewhere is open_clip's to check
        image_size = architecture["vision_cfg"].get("image_size", 224)
        if preprocess.size != (image_size[0] if isinstance(image_size, (list, tuple)) else image_size):
            raise TrafficRetrievalError(f"preprocess_cfg: size {preprocess.size} is not the architecture's image_size {_short(image_size)}")
        _check_weights_fit(model_name, architecture, state_dict)
    return preprocess


def _check_model_name(model_name: str, trust_architecture: bool) -> bool:
    """True when the name makes open_clip read from elsewhere (allowed only when trusted)."""
    if model_name.startswith(REMOTE_SCHEMES):
        if not trust_architecture:
            raise TrafficRetrievalError(f"model_name: {_short(model_name)} loads its architecture from elsewhere (the Hugging Face Hub or a "
                                        "local folder); refused for a checkpoint unless its architecture is trusted")
        return True
    if not MODEL_NAME.fullmatch(model_name):
        raise TrafficRetrievalError(f"model_name: {_short(model_name)} is not a plain model name (letters, digits and _ . + -, "
                                    "at most 100, no path)")
    if "siglip" in model_name.lower():  # open_clip gives such names a SigLIP tokenizer from the Hugging Face Hub
        if not trust_architecture:
            raise TrafficRetrievalError(f"model_name: {model_name!r} selects a tokenizer downloaded from the Hugging Face Hub; "
                                        "refused for a checkpoint unless its architecture is trusted")
        return True
    return False


def _check_architecture(architecture: dict, trust_architecture: bool, weights: int) -> bool:
    """open_clip's keys with values of their types; True when a tower loads from elsewhere (trusted only)."""
    import importlib

    from_elsewhere = False
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in architecture:
            raise TrafficRetrievalError(f"architecture: {key} is missing")
    for key, value in architecture.items():
        if key in ARCHITECTURE_TOWERS:
            module, name = ARCHITECTURE_TOWERS[key]
            fields = typing.get_type_hints(getattr(importlib.import_module(module), name))
            if not isinstance(value, dict):
                raise TrafficRetrievalError(f"architecture: {key} must be a dict, got {_short(value)}")
            for tower_key, tower_value in value.items():
                where = f"architecture: {key}.{tower_key}"
                if tower_key in REMOTE_ARCHITECTURE_KEYS:
                    if not trust_architecture:
                        raise TrafficRetrievalError(f"{where} makes open_clip fetch code, weights or a tokenizer from elsewhere "
                                                    "(timm, Hugging Face); refused for a checkpoint unless its architecture is trusted")
                    from_elsewhere = True
                if tower_key not in fields:
                    raise TrafficRetrievalError(f"{where} is not an open_clip {name} key")
                _check_value(tower_value, fields[tower_key], where)
            layers = value.get("layers", 0)
            if (sum(layers) if isinstance(layers, (list, tuple)) else layers) > weights:  # each layer has weights: bounds the build
                raise TrafficRetrievalError(f"architecture: {key}.layers {_short(layers)} is more than the checkpoint has weights ({weights})")
        elif key in ARCHITECTURE_KEYS:
            _check_value(value, ARCHITECTURE_KEYS[key], f"architecture: {key}")
        else:
            raise TrafficRetrievalError(f"architecture: {key} is not an open_clip architecture key")
    return from_elsewhere


def _check_value(value, annotation, where: str) -> None:
    """``value`` is plain data of open_clip's declared type (ints bounded, floats finite)."""
    if _matches(value, annotation):
        return
    expected = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
    raise TrafficRetrievalError(f"{where} must be {expected}, got {_short(value)}")


def _matches(value, annotation) -> bool:
    if value is None:  # open_clip's own configs write null for "not set" (RN50's patch_size)
        return True
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        return any(_matches(value, argument) for argument in arguments)
    if origin is tuple:
        items = arguments[:1] * len(value) if arguments[-1:] == (Ellipsis,) and isinstance(value, (list, tuple)) else arguments
        return isinstance(value, (list, tuple)) and len(value) == len(items) and all(_matches(v, a) for v, a in zip(value, items))
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return _is_int(value) and 0 <= value <= LARGEST_ARCHITECTURE_INT
    if annotation is float:
        return _is_number(value)
    if annotation is str:
        return isinstance(value, str) and len(value) <= 100
    if annotation is dict or origin is dict:  # act_kwargs, norm_kwargs: keyword arguments of torch layers
        return isinstance(value, dict) and len(value) <= 16 and all(
            isinstance(k, str) and len(k) <= 100 and (value[k] is None or isinstance(value[k], (bool, str)) or _is_number(value[k])) for k in value)
    return False


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_tensors(tensors: dict, where: str) -> None:
    import torch

    for key, value in tensors.items():
        if not isinstance(key, str):
            raise TrafficRetrievalError(f"{where}: keys must be strings, got {_short(key)}")
        if not (isinstance(value, torch.Tensor) and value.layout == torch.strided):
            raise TrafficRetrievalError(f"{where}: {_short(key)} is not a tensor ({_short(value)})")


def _check_metadata(payload: dict) -> None:
    for key, expected in METADATA_TYPES.items():
        if key in payload and not isinstance(payload[key], expected):
            raise TrafficRetrievalError(f"{key}: must be a {expected.__name__}, got {_short(payload[key])}")
    if isinstance(payload.get("attribute_heads"), dict):
        _check_tensors(payload["attribute_heads"], "attribute_heads")
    texts = payload.get("category_texts")
    if texts is None:
        return
    if not (isinstance(texts, dict) and len(texts) <= 16 and all(isinstance(name, str) and len(name) <= 100 for name in texts)):
        raise TrafficRetrievalError(f"category_texts: must be a dict of category name to caption list, got {_short(texts)}")
    for name, captions in texts.items():
        if not (isinstance(captions, list) and len(captions) <= MAX_CATEGORY_TEXTS
                and all(isinstance(c, str) and len(c) <= MAX_CATEGORY_TEXT_CHARS for c in captions)):
            raise TrafficRetrievalError(f"category_texts: {name!r} must be a list of at most {MAX_CATEGORY_TEXTS} captions "
                                        f"(strings of at most {MAX_CATEGORY_TEXT_CHARS} characters), got {_short(captions)}")


def _check_weights_fit(model_name: str, architecture: dict, state_dict: dict) -> None:
    """Every weight is there with the shape the architecture needs, and nothing else: checked
    on the architecture built on the meta device (no memory, no initialisation)."""
    import open_clip
    import torch

    _ensure_config_registered(model_name, architecture)
    try:
        with torch.device("meta"):
            skeleton = open_clip.create_model(model_name, pretrained=None, device="meta")
    except Exception as exc:  # open_clip's constructors fail in many ways on a crafted architecture
        raise TrafficRetrievalError(f"architecture: cannot build {model_name!r} ({(str(exc).splitlines() or [type(exc).__name__])[0][:200]})") from None
    expected = skeleton.state_dict()
    missing, extra = [k for k in expected if k not in state_dict], [k for k in state_dict if k not in expected]
    if missing or extra:
        detail = f"lacks {missing[0]!r}" if missing else f"has {_short(extra[0])}, which the architecture does not"
        raise TrafficRetrievalError(f"state_dict: {detail} ({len(missing)} missing, {len(extra)} unexpected keys for {model_name!r})")
    for key, needed in expected.items():
        value = state_dict[key]
        if tuple(value.shape) != tuple(needed.shape):
            raise TrafficRetrievalError(f"state_dict: {key!r} has shape {list(value.shape)}, the architecture needs {list(needed.shape)}")
        if value.is_floating_point() != needed.is_floating_point() or value.is_complex():
            raise TrafficRetrievalError(f"state_dict: {key!r} is {value.dtype}, the architecture needs {needed.dtype}")


def encode_text(model, tokens, normalize: bool = True, length_multiple: int = 1):
    """``model.encode_text`` that skips the padding after the longest caption in the batch.

    open_clip's text tower is causal and pools at the end-of-text token, so the
    positions after the longest sequence never influence the result; cutting them
    is exact and saves most of the text tower's time on short captions. The cut is
    rounded up to ``length_multiple`` tokens (inference uses 16): every new input shape
    costs the CPU's bf16 kernels a cached primitive, and a server fed random query
    lengths grew by ~750 MB (benchmarks/bench_serve_memory.py); training keeps the exact
    cut (its batches have few lengths, and rounding cost it 6% of its speed).
    """
    import torch.nn.functional as F

    inner = unwrap(model)
    if not (hasattr(inner, "transformer") and hasattr(inner, "token_embedding") and getattr(inner, "text_pool_type", "") == "argmax" and inner.attn_mask is not None):
        return inner.encode_text(tokens, normalize=normalize)
    length = int((tokens != 0).sum(dim=1).max().item()) if tokens.numel() else 1
    length = min(tokens.shape[1], -(-length // length_multiple) * length_multiple)
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
