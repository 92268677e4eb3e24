"""``export-embeddings``: write a built index's image embeddings and their metadata in
clip-retrieval's layout (``OUT/img_emb/img_emb_N.npy``, ``OUT/metadata/metadata_N.parquet``,
rows aligned, ``--part-size`` rows a part), for notebooks, autofaiss or another tool. The
vectors are the ones the index stores (full width, L2-normalised, float16 on disk); no model
is loaded. Written to a temporary folder and renamed into place; an existing ``OUT`` that
is not empty is refused unless ``--overwrite`` (and then only an earlier export is replaced)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import option
from ..errors import TrafficRetrievalError

HELP = "write an index's image embeddings and metadata as .npy + parquet parts (clip-retrieval's layout)"


@dataclass
class ExportEmbeddingsConfig:
    index: Path | None = option(None, help="the index folder (traffic-retrieval index --out)")
    out: Path | None = option(None, help="folder to write: img_emb/img_emb_N.npy, metadata/metadata_N.parquet, export.json")
    part_size: int = option(1_000_000, minimum=1, help="rows per part (img_emb_N.npy and metadata_N.parquet)")
    dtype: Literal["float32", "float16"] = option("float32", help="embedding type written (float16: as the index stores them)")
    overwrite: bool = option(False, help="replace an earlier export in --out (a folder holding anything else is never replaced)")
    json: bool = option(False, help="print export.json's summary as JSON")


Config = ExportEmbeddingsConfig


def run(config: ExportEmbeddingsConfig) -> dict:
    """Export; what ``OUT/export.json`` says (count, dim, dtype, parts and their rows)."""
    from ..config import checked
    from ..index.export import export_embeddings

    config = checked(config)
    for key in ("index", "out"):
        if getattr(config, key) is None:
            raise TrafficRetrievalError(f"export-embeddings needs --{key}")
    return export_embeddings(config.index, config.out, part_size=config.part_size, overwrite=config.overwrite, dtype=config.dtype)


def print_result(summary: dict, config: ExportEmbeddingsConfig) -> None:
    from ..errors import printable

    if config.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    print(f"wrote {summary['count']} embeddings ({summary['dtype']}, dim {summary['dim']}, {summary['model']}) in {len(summary['parts'])} "
          f"part{'s' if len(summary['parts']) != 1 else ''} to {printable(summary['out'])}")
