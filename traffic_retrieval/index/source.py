"""The model of an index: what encodes its gallery, and so must encode its queries.

Either a traffic-retrieval checkpoint (``--checkpoint``) or, zero-shot, an open_clip model
with pretrained weights (``--model NAME --pretrained TAG|FILE``, or ``--model hf-hub:ORG/REPO``
whose weights come with it). index.json records it as its ``source``:

```
{"kind": "checkpoint", "path": "/abs/model.pt", "sha256": "<64 hex>"}
{"kind": "pretrained", "model": "ViT-B-32", "weights": "file", "pretrained": "/abs/weights.pt", "sha256": "<64 hex>"}
{"kind": "pretrained", "model": "ViT-B-32", "weights": "tag", "pretrained": "laion2b_s34b_b79k", "sha256": null}
{"kind": "pretrained", "model": "hf-hub:org/repo", "weights": "model", "pretrained": null, "sha256": null}
```

Two sources are the same model when their kinds agree and: checkpoints or weights files
have the same sha256 (a file may move), and an open_clip model has the same name (the same
weights file under another architecture, ``ViT-B-32-quickgelu``, encodes differently) and
the same tag. A build that would add to an index with another model, and a ``Retriever``
given another model, are refused.

An index may come from someone else, so the model it records is loaded only when that
loads nothing from elsewhere beyond open_clip's own pinned weights for a tag: a plain
open_clip name whose architecture fetches no tower or tokenizer (the rule a checkpoint's
name follows, ``model.factory``), with a known tag of it or a weights file. ``hf-hub:`` and
``local-dir:`` models, and architectures with Hugging Face towers or tokenizers, load from
an index only with ``trust_checkpoint`` or when the caller names the model itself.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TrafficRetrievalError
from .info import HF_REPO, shown

CHECKPOINT = "checkpoint"
PRETRAINED = "pretrained"
SCHEMES = ("hf-hub:", "local-dir:")  # = model.factory.REMOTE_SCHEMES (not imported: this module loads without torch)
FETCHING_KEYS = ("hf_tokenizer_name", "hf_model_name")  # an open_clip architecture with these downloads from the Hugging Face Hub
FETCHING_FLAGS = ("hf_model_pretrained", "timm_model_pretrained")  # ... and with these set


def requested_source(checkpoint=None, model: str | None = None, pretrained: str | None = None) -> dict | None:
    """What a caller asked for, checked, without loading anything: ``{"kind": "checkpoint",
    "path"}`` or ``{"kind": "pretrained", "model", "weights", "pretrained"}`` (paths absolute);
    None when nothing was given."""
    if checkpoint is not None and (model or pretrained):
        raise TrafficRetrievalError("give --checkpoint (a trained model) or --model/--pretrained (an open_clip model, zero-shot), not both")
    if checkpoint is not None:
        return {"kind": CHECKPOINT, "path": str(Path(checkpoint).expanduser().resolve())}
    if pretrained and not model:
        raise TrafficRetrievalError(f"--pretrained {shown(pretrained)} needs --model (the open_clip architecture the weights are for)")
    if not model:
        return None
    weights, value = _weights(model, pretrained)
    if model.startswith("local-dir:"):
        model = "local-dir:" + str(Path(model[len("local-dir:"):]).expanduser().resolve())
    return {"kind": PRETRAINED, "model": model, "weights": weights, "pretrained": value}


def _weights(model: str, pretrained: str | None) -> tuple[str, str | None]:
    """``(weights kind, pretrained)`` of an open_clip model: ``model`` (hf-hub:/local-dir: names
    carry their weights), ``tag`` or ``file`` (absolute)."""
    if model.startswith(SCHEMES):
        if model.startswith("hf-hub:") and not HF_REPO.fullmatch(model):
            raise TrafficRetrievalError(f"--model {shown(model)}: not a Hugging Face Hub id (hf-hub:ORG/REPO)")
        if pretrained:
            raise TrafficRetrievalError(f"--model {shown(model)} loads its weights from there (open_clip ignores --pretrained for hf-hub: and "
                                        "local-dir: models): drop --pretrained")
        return "model", None
    from ..model.factory import model_config

    model_config(model)  # an unknown name: one line listing some known ones
    if not pretrained:
        raise TrafficRetrievalError(f"--model {shown(model)} needs --pretrained (an open_clip pretrained tag or a weights file): a randomly "
                                    "initialised model would encode a gallery no later run can encode queries for")
    if pretrained.startswith(SCHEMES):
        raise TrafficRetrievalError(f"--pretrained {shown(pretrained)}: open_clip takes Hugging Face Hub and local-folder models as the model "
                                    f"name: give --model {shown(pretrained)} and no --pretrained")
    if _known_tag(model, pretrained):
        return "tag", pretrained
    path = Path(pretrained).expanduser()
    if path.is_file():
        return "file", str(path.resolve())
    tags = _tags(model)
    raise TrafficRetrievalError(f"--pretrained {shown(pretrained)}: neither a weights file nor a pretrained tag of {model}"
                                + (f" ({', '.join(tags[:5])}{', ...' if len(tags) > 5 else ''})" if tags else " (open_clip has none for it)"))


def _tags(model: str) -> list[str]:
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(model))


def _known_tag(model: str, tag: str) -> bool:
    import open_clip

    return bool(open_clip.get_pretrained_cfg(model, tag))


def load_source(source: dict, device: str, trust: bool = False):
    """The ``LoadedModel`` of a requested or recorded source (``trust``: a checkpoint's
    architecture may load from elsewhere, ``model.factory.load_checkpoint``)."""
    from ..model.factory import create_model, load_checkpoint

    if source["kind"] == CHECKPOINT:
        return load_checkpoint(source["path"], device=device, trust_architecture=trust)
    loaded = create_model(source["model"], source["pretrained"], None, device)
    loaded.model.eval()
    return loaded


def loaded_source(source: dict, loaded) -> dict:
    """The full record of a requested source once loaded: its checkpoint's or weights file's sha256."""
    if source["kind"] == CHECKPOINT:
        return {**source, "sha256": loaded.identity}
    return {**source, "sha256": loaded.identity if source["weights"] == "file" else None}


def same_model(a: dict, b: dict) -> bool:
    """Whether two sources (recorded or requested) encode alike; a malformed one never does."""
    if not (isinstance(a, dict) and isinstance(b, dict)) or a.get("kind") != b.get("kind"):
        return False
    if a["kind"] == CHECKPOINT:
        return isinstance(a.get("sha256"), str) and a.get("sha256") == b.get("sha256")
    if a.get("model") != b.get("model") or a.get("weights") != b.get("weights"):
        return False
    if a["weights"] == "file":
        return isinstance(a.get("sha256"), str) and a.get("sha256") == b.get("sha256")
    return a.get("pretrained") == b.get("pretrained")


def describe(source) -> str:
    """A source in a few words, for messages (any value: stored ones may be malformed)."""
    if not isinstance(source, dict):
        return f"an unknown model ({shown(source)})"
    sha = source.get("sha256")
    digest = f" (sha256 {sha[:12]})" if isinstance(sha, str) else ""
    if source.get("kind") == CHECKPOINT:
        return f"checkpoint {shown(source.get('path'), 200)}{digest}"
    if source.get("kind") == PRETRAINED:
        model = shown(source.get("model"), 200).strip("'")
        if source.get("weights") == "file":
            return f"open_clip {model} with weights file {shown(source.get('pretrained'), 200)}{digest}"
        if source.get("weights") == "tag":
            return f"open_clip {model} pretrained {shown(source.get('pretrained'))}"
        return f"open_clip {model}"
    return f"an unknown model ({shown(source)})"


def _check_recorded_loadable(source: dict, where) -> None:
    """An open_clip model named by an index (someone else's, maybe) loads nothing from
    elsewhere but open_clip's pinned weights of a tag: refused otherwise (one line)."""
    from ..model.factory import model_config

    model = source["model"]
    hint = "pass --trust-checkpoint (trust_checkpoint=True) if you trust the index's author, or name the model yourself with --model/--pretrained"
    if model.startswith(SCHEMES):
        raise TrafficRetrievalError(f"{where}: built with {describe(source)}, which loads from the Hugging Face Hub or a local folder: {hint}")
    if "siglip" in model.lower():
        raise TrafficRetrievalError(f"{where}: built with {describe(source)}, whose tokenizer is downloaded from the Hugging Face Hub: {hint}")
    architecture = model_config(model)
    for tower in ("vision_cfg", "text_cfg"):
        cfg = architecture.get(tower) or {}
        if any(cfg.get(key) for key in FETCHING_KEYS) or any(cfg.get(key) is True for key in FETCHING_FLAGS):
            raise TrafficRetrievalError(f"{where}: built with {describe(source)}, whose {tower} loads from the Hugging Face Hub or timm: {hint}")
    if source["weights"] == "tag" and not _known_tag(model, source["pretrained"]):
        raise TrafficRetrievalError(f"{where}: built with {describe(source)}, not a pretrained tag open_clip knows for {model}")


def load_index_model(root: Path, recorded: dict, device: str, checkpoint=None, model: str | None = None, pretrained: str | None = None,
                     trust: bool = False):
    """The ``LoadedModel`` that encodes queries for the index at ``root`` whose index.json
    records ``recorded``: that model, or the one given (``checkpoint``, or ``model`` and/or
    ``pretrained``: the same model at another path, or named by the caller), refused with
    one line unless it is the index's."""
    if checkpoint is not None and (model or pretrained):
        requested_source(checkpoint, model, pretrained)  # refused: both
    if recorded["kind"] == CHECKPOINT and (model or pretrained):
        raise TrafficRetrievalError(f"{root}: built with {describe(recorded)}: give that checkpoint (checkpoint=... / --checkpoint) or nothing, "
                                    "not --model/--pretrained")
    if recorded["kind"] == PRETRAINED and checkpoint is not None:
        raise TrafficRetrievalError(f"{root}: built with {describe(recorded)}, not a checkpoint: give that model (model=/pretrained=, "
                                    "--model/--pretrained) or nothing")
    if recorded["kind"] == PRETRAINED and (model or pretrained):
        model = model or recorded["model"]  # pretrained alone: the index's architecture
        if not pretrained and model == recorded["model"]:
            pretrained = recorded["pretrained"]  # model alone: the index's weights
    given = requested_source(checkpoint, model, pretrained)
    if recorded["kind"] == CHECKPOINT:
        path = Path(given["path"] if given else recorded["path"])
        if not path.is_file():
            raise TrafficRetrievalError(f"{path}: checkpoint of index {root} not found (give checkpoint=... / --checkpoint with the same model)")
        loaded = load_source({"kind": CHECKPOINT, "path": str(path)}, device, trust)  # its identity is the file's sha256
        if loaded.identity != recorded["sha256"]:
            raise TrafficRetrievalError(f"{path}: not the checkpoint index {root} was built with (sha256 {recorded['sha256'][:12]}): "
                                        "queries must be encoded by the model that encoded the gallery")
        return loaded
    if given is None:
        if not trust:
            _check_recorded_loadable(recorded, root)
        given = {key: recorded[key] for key in ("kind", "model", "weights", "pretrained")}
        if given["weights"] == "file" and not Path(given["pretrained"]).is_file():
            raise TrafficRetrievalError(f"{given['pretrained']}: weights file of index {root} not found "
                                        "(give pretrained=... / --pretrained with the same weights at another path)")
    elif given["model"] != recorded["model"] or given["weights"] != recorded["weights"] or (given["weights"] == "tag" and given["pretrained"] != recorded["pretrained"]):
        raise TrafficRetrievalError(f"{root}: built with {describe(recorded)}, not {describe(given)}: "
                                    "queries must be encoded by the model that encoded the gallery")
    loaded = load_source(given, device, trust)
    found = loaded_source(given, loaded)
    if not same_model(recorded, found):
        raise TrafficRetrievalError(f"{given['pretrained']}: not the weights index {root} was built with ({describe(recorded)}; this file: sha256 "
                                    f"{str(found.get('sha256'))[:12]}): queries must be encoded by the model that encoded the gallery")
    return loaded
