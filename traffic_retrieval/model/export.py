"""A traffic-retrieval checkpoint as a folder plain open_clip loads: open_clip's own
``local-dir:`` layout, so ``open_clip.create_model_and_transforms("local-dir:DIR")`` and
``open_clip.get_tokenizer("local-dir:DIR")`` give our model, our preprocessing and our
tokenizer with nothing of ours installed.

The folder (what open_clip 3.3 reads, ``open_clip/factory.py``):

- ``open_clip_config.json``: ``model_cfg``, the full architecture from the checkpoint
  (our ``TR-*`` architectures included: open_clip needs no registered name), with
  ``text_cfg.context_length`` written out (``get_tokenizer`` reads it there, default 77);
  ``preprocess_cfg`` in open_clip's keys (``size``, ``mode``, ``mean``, ``std``,
  ``interpolation``, ``resize_mode``, ``fill_color``). ``resize_mode`` must be written:
  open_clip's default is ``shortest`` (a centre crop), not our ``longest`` (pad).
- ``open_clip_model.safetensors``: the weights (open_clip prefers this name over any
  other ``*.safetensors``/``*.bin``/``*.pth`` in the folder, and loads it strictly).
- tokenizer files, only when ``text_cfg`` names a Hugging Face tokenizer
  (``hf_tokenizer_name``, trusted checkpoints only): for a ``local-dir:`` model open_clip
  loads such a tokenizer from the folder itself, never from the name.
- ``traffic_retrieval.json``: what open_clip ignores (query recipe, category texts,
  train config, epoch, metrics, source checkpoint sha256), keyed as in the checkpoint;
  ``attribute_heads.safetensors``: the auxiliary training heads, when the checkpoint has them.
- ``README.md``: the model, its source, how to load it and how to query it.

The folder is written beside ``DIR`` under a temporary name and renamed into place, so a
failed or killed export leaves no half-written ``DIR``; ``overwrite`` replaces an earlier
export in one step where Linux can swap two paths (``renameat2(RENAME_EXCHANGE)``), else
with two renames.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from copy import deepcopy
from pathlib import Path

from ..errors import TrafficRetrievalError, printable
from .factory import LoadedModel, load_checkpoint, unwrap

EXPORT_FORMAT = "traffic-retrieval-export/1"
CONFIG_FILE = "open_clip_config.json"  # open_clip's name (factory.create_model, local-dir)
WEIGHTS_FILE = "open_clip_model.safetensors"  # first in open_clip's preferred order (factory._find_checkpoint_in_dir)
METADATA_FILE = "traffic_retrieval.json"
README_FILE = "README.md"
ATTRIBUTE_HEADS_FILE = "attribute_heads.safetensors"  # open_clip picks WEIGHTS_FILE over it by name
# checkpoint keys stored elsewhere in the folder than traffic_retrieval.json
KEYS_IN_OTHER_FILES = ("architecture", "preprocess_cfg", "attribute_heads", "format", "model_name")
TOKENIZER_PROBES = ("a white sedan", "A woman in a red coat, carrying a black bag.", "This is a Volkswagen Passat SUV.")
LARGEST_JSON_TENSOR = 1024  # a tensor among the metadata is written as a list up to this many values
RESIZE_DESCRIPTIONS = {
    "longest": "the longer side scaled to {size} and the image centred on a square of {size} x {size} pixels of grey level {fill} (padded, never cropped)",
    "squash": "stretched to {size} x {size} (the aspect ratio is not kept)",
    "shortest": "the shorter side scaled to {size} and the centre cropped to {size} x {size}",
}
EXPOSURE_CARD = ("every gallery image (and image query) whose mean luminance in linear light (sRGB decoded, Rec. 709 weights) is under "
                 "middle grey (0.18) is first multiplied in linear light by the gain that brings it there (at most 8), clipped and "
                 "encoded back to sRGB")
RECIPE_DESCRIPTIONS = {
    ("text_form", "sentence"): "queries are encoded as written",
    ("text_form", "a3r"): "each query loses its last character (normally the final period); a vehicle query also loses a leading "
                          "\"This is an \", \"This is a \", \"An \" or \"A \" (case-sensitive)",
    ("router", "vocabulary"): "a query goes to the pedestrian or the vehicle gallery by whole words of the published vocabulary",
    ("router", "a3r"): "a query goes to the pedestrian or the vehicle gallery by case-sensitive substrings (the seed's)",
    ("gallery_scope", "routed"): "a query is ranked against the gallery images of its category only (an image's category: the "
                                 "closest of `category_texts` in traffic_retrieval.json, by vote)",
    ("gallery_scope", "all"): "a query is ranked against the whole gallery",
    ("gallery_scope", "soft"): "a query is ranked against the whole gallery, images outside its category scored `routing_penalty` lower",
    ("gallery_norm", "none"): "gallery embeddings are ranked as encoded",
    ("gallery_norm", "center"): "the gallery's mean embedding is subtracted from every gallery embedding, which is then re-normalised",
    ("gallery_bn", "adapt"): "the image tower's BatchNorm statistics are re-estimated on the gallery (AdaBN) before it is encoded; "
                             "encode image queries with the same statistics",
    ("image_tta", "flip"): "every gallery image (and image query) is encoded as the mean of its and its mirror image's unit embeddings, "
                           "re-normalised",
    ("image_tta", "exposure"): EXPOSURE_CARD,
    ("image_tta", "flip+exposure"): EXPOSURE_CARD + "; then encoded as the mean of its and its mirror image's unit embeddings, re-normalised",
    ("query_bank", "captions"): "text queries are ranked by cosine minus each gallery image's offset, (logsumexp over the captions of "
                                "`category_texts` in traffic_retrieval.json of `query_bank_beta` x cosine - log of their number) / "
                                "`query_bank_beta` (querybank normalisation, an inverted softmax)",
}


def export_open_clip_dir(checkpoint_path: str | Path, out_dir: str | Path, *, trust_checkpoint: bool = False, overwrite: bool = False) -> dict:
    """Write ``checkpoint_path`` as an open_clip ``local-dir:`` folder at ``out_dir``; return what was written.

    The checkpoint is read and checked as every command reads one (``load_checkpoint``:
    data only, architecture and weights checked; ``trust_checkpoint`` as ``--trust-checkpoint``).
    An existing non-empty ``out_dir`` is refused unless ``overwrite``, and even then only an
    earlier export (a folder with ``open_clip_config.json``) is replaced.
    """
    checkpoint_path = Path(checkpoint_path)
    out_dir = Path(os.path.abspath(out_dir))
    _check_destination(out_dir, checkpoint_path, overwrite)  # before reading a large checkpoint
    loaded = load_checkpoint(checkpoint_path, device="cpu", trust_architecture=trust_checkpoint)
    config = open_clip_config(loaded)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".export-tmp", dir=out_dir.parent))
    try:
        written = _write_folder(staging, loaded, config, checkpoint_path)
        _check_tokenizer_survives(staging, loaded)
        for path in staging.iterdir():  # the usual permissions (safetensors writes 0600 files)
            if path.is_file():
                os.chmod(path, 0o644)
        os.chmod(staging, 0o755)  # mkdtemp makes 0700 folders
        replaced = _move_into_place(staging, out_dir, checkpoint_path, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return {
        "out": str(out_dir),
        "model_name": loaded.model_name,
        "source_checkpoint": str(checkpoint_path),
        "source_sha256": loaded.identity,
        "files": sorted(written),
        "weights": written[WEIGHTS_FILE],
        "preprocess_cfg": config["preprocess_cfg"],
        "context_length": config["model_cfg"]["text_cfg"]["context_length"],
        "tokenizer": "Hugging Face (files in the folder)" if _hf_tokenizer_name(config) else "open_clip BPE (SimpleTokenizer)",
        "query_recipe": _json_safe((loaded.checkpoint or {}).get("query_recipe")),
        "replaced": replaced,
    }


def open_clip_config(loaded: LoadedModel) -> dict:
    """The ``open_clip_config.json`` of a loaded checkpoint: ``model_cfg`` and ``preprocess_cfg``."""
    import open_clip

    metadata = loaded.checkpoint or {}
    architecture = deepcopy(metadata.get("architecture") or {})
    if not architecture:  # a trusted checkpoint whose model_name is hf-hub:/local-dir: stores none
        try:
            architecture = open_clip.get_model_config(loaded.model_name) or {}
        except Exception as exc:  # noqa: BLE001 - a download or a file read, whatever it raised
            raise TrafficRetrievalError(f"model {loaded.model_name!r}: cannot read its architecture ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from None
    if not isinstance(architecture.get("text_cfg"), dict) or not isinstance(architecture.get("vision_cfg"), dict):
        raise TrafficRetrievalError(f"model {loaded.model_name!r}: the checkpoint holds no architecture to export (model_cfg needs text_cfg and vision_cfg)")
    context_length = int(getattr(unwrap(loaded.model), "context_length", None) or architecture["text_cfg"].get("context_length", 77))
    recorded = (metadata.get("tokenizer") or {}).get("context_length")
    if recorded is not None and recorded != context_length:
        raise TrafficRetrievalError(f"tokenizer: context_length {recorded!r} is not the model's ({context_length})")
    architecture["text_cfg"]["context_length"] = context_length  # get_tokenizer("local-dir:") reads it here
    return {"model_cfg": architecture, "preprocess_cfg": loaded.preprocess.to_open_clip_preprocess_cfg()}


def _hf_tokenizer_name(config: dict) -> str:
    return config["model_cfg"]["text_cfg"].get("hf_tokenizer_name") or ""


def _check_destination(out_dir: Path, checkpoint_path: Path, overwrite: bool) -> None:
    """Refuse what the export must not write over (one-line errors)."""
    if out_dir == out_dir.parent:
        raise TrafficRetrievalError(f"{out_dir}: cannot export into the file system's root")
    if out_dir.is_symlink():
        raise TrafficRetrievalError(f"{out_dir}: is a symbolic link; give the folder itself")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise TrafficRetrievalError(f"{out_dir}: exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise TrafficRetrievalError(f"{out_dir}: folder exists and is not empty (give --overwrite to replace an earlier export)")
    if not (out_dir / CONFIG_FILE).is_file():
        raise TrafficRetrievalError(f"{out_dir}: not an export folder (no {CONFIG_FILE}); --overwrite replaces only an earlier export, "
                                    "so give an empty or new folder")
    if Path(os.path.realpath(checkpoint_path)).is_relative_to(os.path.realpath(out_dir)):
        raise TrafficRetrievalError(f"{checkpoint_path}: the checkpoint is inside {out_dir}, which --overwrite would replace")


def _write_folder(folder: Path, loaded: LoadedModel, config: dict, checkpoint_path: Path) -> dict:
    """Every file of the export in ``folder``; returns file name -> what it holds (tensor count or bytes)."""
    from safetensors.torch import save_file

    written: dict = {}
    state_dict = _plain_tensors(unwrap(loaded.model).state_dict())
    save_file(state_dict, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "source_sha256": loaded.identity})
    written[WEIGHTS_FILE] = len(state_dict)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    written[CONFIG_FILE] = "model_cfg, preprocess_cfg"
    heads = (loaded.checkpoint or {}).get("attribute_heads")
    if heads:
        save_file(_plain_tensors(heads), str(folder / ATTRIBUTE_HEADS_FILE), metadata={"format": "pt"})
        written[ATTRIBUTE_HEADS_FILE] = len(heads)
    if _hf_tokenizer_name(config):  # open_clip reads a local-dir model's HF tokenizer from the folder
        if not hasattr(loaded.tokenizer, "save_pretrained"):
            raise TrafficRetrievalError(f"model {loaded.model_name!r}: its tokenizer cannot be saved into the folder")
        before = set(os.listdir(folder))
        loaded.tokenizer.save_pretrained(str(folder))
        written.update({name: "tokenizer" for name in set(os.listdir(folder)) - before})
    metadata = export_metadata(loaded, checkpoint_path, ATTRIBUTE_HEADS_FILE if heads else None)
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    written[METADATA_FILE] = sorted(key for key in metadata if key not in ("format", "model_name"))
    (folder / README_FILE).write_text(readme_text(loaded, config, metadata, written), encoding="utf-8")
    written[README_FILE] = "how to load and query"
    return written


def _plain_tensors(tensors: dict) -> dict:
    """Tensors safetensors will write: contiguous, on the CPU, none sharing memory with another."""
    seen, plain = set(), {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().cpu()
        storage = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if storage in seen or not tensor.is_contiguous():
            tensor = tensor.contiguous().clone()
        seen.add((tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()))
        plain[key] = tensor
    return plain


def export_metadata(loaded: LoadedModel, checkpoint_path: Path, attribute_heads_file: str | None) -> dict:
    """``traffic_retrieval.json``: the checkpoint's metadata that open_clip ignores, keyed as
    in the checkpoint (``query_recipe``, ``category_texts``, ``train_config``, ...), and the source."""
    metadata = loaded.checkpoint or {}
    return {
        "format": EXPORT_FORMAT,
        "model_name": loaded.model_name,
        "source_checkpoint": {"file": checkpoint_path.name, "sha256": loaded.identity, "format": metadata.get("format")},
        "open_clip_files": {"config": CONFIG_FILE, "weights": WEIGHTS_FILE},
        **({"attribute_heads_file": attribute_heads_file} if attribute_heads_file else {}),
        **{str(key): _json_safe(value) for key, value in metadata.items() if key not in KEYS_IN_OTHER_FILES},
    }


def _json_safe(value):
    """Plain JSON: tuples as lists, non-finite floats as null, small tensors as lists, keys as strings."""
    import torch

    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, torch.Tensor):
        return _json_safe(value.tolist()) if value.numel() <= LARGEST_JSON_TENSOR else f"<tensor {list(value.shape)} {value.dtype}, not exported>"
    return str(value)


def readme_text(loaded: LoadedModel, config: dict, metadata: dict, written: dict) -> str:
    """The folder's README: the model, its source, how to load it and how to query it."""
    preprocess = config["preprocess_cfg"]
    name = printable(loaded.model_name)
    size = preprocess["size"]
    tokenizer = "the Hugging Face tokenizer whose files are in this folder" if _hf_tokenizer_name(config) else "open_clip's BPE tokenizer"
    resize = RESIZE_DESCRIPTIONS.get(preprocess["resize_mode"], preprocess["resize_mode"]).format(size=size, fill=preprocess["fill_color"])
    lines = [
        f"# {name} (open_clip local-dir export)",
        "",
        f"Exported by traffic-retrieval from `{printable(metadata['source_checkpoint']['file'])}`, "
        f"sha256 `{metadata['source_checkpoint']['sha256']}`.",
        "",
        "## Load with plain open_clip",
        "",
        "Nothing of traffic-retrieval is needed: the architecture, the preprocessing and the tokenizer settings are in "
        f"`{CONFIG_FILE}`, the weights in `{WEIGHTS_FILE}`. Give the path of this folder after `local-dir:`:",
        "",
        "```python",
        "import open_clip",
        "",
        'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:path/to/this/folder")',
        'tokenizer = open_clip.get_tokenizer("local-dir:path/to/this/folder")',
        "model.eval()",
        "image_features = model.encode_image(preprocess(image).unsqueeze(0), normalize=True)",
        'text_features = model.encode_text(tokenizer(["a white sedan"]), normalize=True)',
        "```",
        "",
        f"`preprocess` is the inference transform the model was trained with: RGB, {resize}, "
        f"{preprocess['interpolation']} interpolation, then normalised with mean {_numbers(preprocess['mean'])} "
        f"and std {_numbers(preprocess['std'])}.",
        f"The tokenizer is {tokenizer}, "
        f"{config['model_cfg']['text_cfg']['context_length']} tokens.",
        "",
    ]
    recipe = metadata.get("query_recipe")
    if isinstance(recipe, dict) and recipe:
        lines += ["## Queries", "", "The model was trained and validated with this query recipe; query it the same way:", ""]
        for key in ("text_form", "router", "gallery_scope", "gallery_norm", "gallery_bn", "image_tta", "query_bank", "query_bank_beta", "routing_penalty"):
            if key in recipe:
                value = recipe[key]
                description = RECIPE_DESCRIPTIONS.get((key, value), "") if isinstance(value, str) else ""
                lines.append(f"- `{key}`: `{printable(value, 40)}`" + (f": {description}." if description else ""))
        lines.append("")
    lines += ["## Files", ""]
    described = {CONFIG_FILE: "open_clip's `model_cfg` (full architecture) and `preprocess_cfg`",
                 WEIGHTS_FILE: "the model's weights (safetensors)",
                 METADATA_FILE: "what open_clip ignores, keyed as in the source checkpoint: " + ", ".join(f"`{k}`" for k in written.get(METADATA_FILE, [])),
                 ATTRIBUTE_HEADS_FILE: "the auxiliary attribute heads used in training (not part of the open_clip model)",
                 README_FILE: "this file"}
    for file_name in sorted({*written, README_FILE}):
        lines.append(f"- `{file_name}`: {described.get(file_name, 'tokenizer file')}")
    return "\n".join(lines) + "\n"


def _numbers(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _check_tokenizer_survives(folder: Path, loaded: LoadedModel) -> None:
    """open_clip's tokenizer for the folder gives the tokens of the checkpoint's own tokenizer
    (a tokenizer open_clip picks by model name, such as SigLIP's, would not survive)."""
    import open_clip
    import torch

    try:
        exported = open_clip.get_tokenizer(f"local-dir:{folder}")
        same = torch.equal(exported(list(TOKENIZER_PROBES)), loaded.tokenizer(list(TOKENIZER_PROBES)))
    except Exception as exc:  # noqa: BLE001 - whatever the tokenizer library raised
        raise TrafficRetrievalError(f"model {loaded.model_name!r}: open_clip cannot load the exported tokenizer "
                                    f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from None
    if not same:
        raise TrafficRetrievalError(f"model {loaded.model_name!r}: open_clip's tokenizer for the exported folder does not give the "
                                    "checkpoint's tokens (a tokenizer chosen by model name cannot be described in a local-dir folder)")


def _move_into_place(staging: Path, out_dir: Path, checkpoint_path: Path, overwrite: bool) -> bool:
    """Rename the finished ``staging`` folder to ``out_dir``; True when an earlier export was replaced."""
    try:
        os.rename(staging, out_dir)  # also replaces an empty folder
        return False
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise TrafficRetrievalError(f"{out_dir}: cannot create the folder ({exc.strerror or exc})") from None
    _check_destination(out_dir, checkpoint_path, overwrite)  # it filled up meanwhile: the same rules
    if _exchange_paths(staging, out_dir):  # one step: DIR is always a whole export
        shutil.rmtree(staging, ignore_errors=True)  # now the earlier export
        return True
    previous = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".replaced", dir=out_dir.parent))
    try:
        os.rename(out_dir, previous)  # replaces the empty folder mkdtemp made
        try:
            os.rename(staging, out_dir)
        except OSError as exc:
            os.rename(previous, out_dir)
            raise TrafficRetrievalError(f"{out_dir}: cannot replace the folder ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(previous, ignore_errors=True)
    return True


def _exchange_paths(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where
    the system or the file system cannot, and nothing was changed."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc before 2.28, musl
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    renameat2.restype = ctypes.c_int
    return renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0
