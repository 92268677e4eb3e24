"""``export``: write a checkpoint as a folder that plain open_clip loads
(``open_clip.create_model_and_transforms("local-dir:DIR")``, ``open_clip.get_tokenizer("local-dir:DIR")``):
``open_clip_config.json`` (the full architecture and the preprocessing),
``open_clip_model.safetensors`` (the weights), ``traffic_retrieval.json`` (query recipe,
category texts, train config, source sha256: what open_clip ignores) and a README.
The folder is written under a temporary name beside DIR and renamed into place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import CheckpointTrust, option
from ..errors import TrafficRetrievalError

HELP = "write a checkpoint as an open_clip local-dir folder (loads in plain open_clip)"


@dataclass
class ExportConfig(CheckpointTrust):
    checkpoint: Path | None = option(None, help="the traffic-retrieval checkpoint to export")
    out: Path | None = option(None, metavar="DIR", help="the folder to write (open_clip's local-dir layout)")
    overwrite: bool = option(False, help="replace DIR when it holds an earlier export")


Config = ExportConfig


def run(config: ExportConfig) -> dict:
    """Export ``config.checkpoint`` into ``config.out``; return what was written (``export_open_clip_dir``)."""
    from ..model.export import export_open_clip_dir

    if config.checkpoint is None:
        raise TrafficRetrievalError("export needs --checkpoint CKPT")
    if config.out is None:
        raise TrafficRetrievalError("export needs --out DIR")
    return export_open_clip_dir(config.checkpoint, config.out, trust_checkpoint=config.trust_checkpoint, overwrite=config.overwrite)


def print_result(result: dict, config: ExportConfig) -> None:
    from ..errors import printable

    out = printable(result["out"])
    print(f"{'replaced' if result['replaced'] else 'wrote'} {out}: {printable(result['model_name'])} from {printable(result['source_checkpoint'])} "
          f"(sha256 {result['source_sha256'][:12]}), {result['weights']} weight tensors")
    preprocess = result["preprocess_cfg"]
    print(f"preprocessing: {preprocess['resize_mode']} to {preprocess['size']}, {preprocess['interpolation']}; "
          f"tokenizer: {result['tokenizer']}, {result['context_length']} tokens")
    recipe = result.get("query_recipe")
    if isinstance(recipe, dict) and recipe:
        print("query recipe: " + ", ".join(f"{printable(key)} {printable(value, 40)}" for key, value in recipe.items()))
    print(f"files: {', '.join(result['files'])}")
    print(f'load: open_clip.create_model_and_transforms("local-dir:{out}")')
