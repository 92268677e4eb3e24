"""An index's image embeddings, read back with their metadata: ``iter_embeddings`` (behind
``Retriever.embeddings``, for notebooks) and ``export_embeddings`` (the ``export-embeddings``
command), which writes clip-retrieval's layout:

```
OUT/
  img_emb/img_emb_0.npy          float32 (or float16) [rows, dim], L2-normalised, one row per indexed image
  metadata/metadata_0.parquet    id, path, name, category, label, caption: row i describes row i of img_emb_0.npy
  img_emb/img_emb_1.npy ...      the next --part-size rows (images in id order)
  export.json                    what was exported: index, model, dim, dtype, count, the parts and their rows
```

The vectors are the ones the index stores in its shards (``store.py``): the model's
full-width embeddings, L2-normalised, stored as float16 (exact up to float16 rounding,
about 1e-3 in a cosine), not what FAISS holds (an HNSW graph may be built on PCA-reduced
vectors, an IVF-PQ index on compressed codes); ``--dtype float16`` writes them as stored.

The export streams: a part's ``.npy`` is written a block of rows at a time after its header,
its parquet a row group at a time, so memory holds one block whatever the index's size.
Everything is written to a temporary folder beside ``OUT``, renamed into place at the end: a
failed or killed export leaves no partial ``OUT``. An existing ``OUT`` that is not empty is
replaced only with ``overwrite`` and only when it holds nothing but an export's files.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import TrafficRetrievalError

EXPORT_FORMAT = "traffic-retrieval-embeddings/1"
EXPORT_ENTRIES = ("img_emb", "metadata", "export.json")  # all that an export folder holds
EXPORT_DTYPES = ("float32", "float16")
DEFAULT_PART_SIZE = 1_000_000  # clip-retrieval's rows per file
BLOCK_ROWS = 65_536  # rows read and written at a time
METADATA_COLUMNS = ("id", "path", "name", "category", "label", "caption")


@dataclass(frozen=True)
class EmbeddingBatch:
    """Consecutive indexed images (in id order) and their embeddings, row for row."""

    ids: object  # numpy int64 [n]: the index's image ids (Retriever.record(id))
    names: list[str]  # file names
    paths: list[str]  # absolute paths (under the gallery root the index records)
    categories: list[str | None]  # pedestrian / vehicle: the label's when the index had labels, else the model's vote
    labels: list[str | None]  # ATTR from the labels file, when the index was given one
    captions: list[str | None]  # TEXT from the labels file
    embeddings: object  # numpy float32 [n, dim], L2-normalised (stored as float16)

    def __len__(self) -> int:
        return len(self.names)


def check_rows(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TrafficRetrievalError(f"{name} must be a positive integer, got {value!r}")
    return value


def iter_embeddings(layout, info: dict, store, batch_rows: int = BLOCK_ROWS, after_id: int = -1, limit: int | None = None) -> Iterator[EmbeddingBatch]:
    """Indexed images with ids above ``after_id`` (at most ``limit`` of them), in id order,
    ``batch_rows`` at a time, with their stored embeddings (``layout``: ``IndexLayout``,
    ``info``: its checked index.json, ``store``: its ``IndexStore``)."""
    import numpy as np

    from .info import check_relative_path, shown
    from .store import ShardReader

    check_rows(batch_rows, "batch_rows")
    reader = ShardReader(layout, info["dim"])
    root = info["images"]
    remaining = limit
    while remaining is None or remaining > 0:
        page = store.indexed_page(after_id, batch_rows if remaining is None else min(batch_rows, remaining))
        if not page:
            return
        for image in page:  # a row naming anything but a file under the gallery root is a tampered index
            problem = check_relative_path(image.path)
            if problem:
                raise TrafficRetrievalError(f"{layout.meta_db}: image {image.id}: recorded path {shown(image.path)} {problem}")
        embeddings = reader.gather([(image.shard, image.row) for image in page])
        yield EmbeddingBatch(np.fromiter((image.id for image in page), dtype=np.int64, count=len(page)), [image.name for image in page],
                             [os.path.join(root, image.path) for image in page], [image.category for image in page],
                             [image.label for image in page], [image.caption for image in page], embeddings)
        after_id = page[-1].id
        if remaining is not None:
            remaining -= len(page)


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise TrafficRetrievalError("export-embeddings writes parquet with pyarrow, which is not installed: "
                                    "pip install 'traffic-retrieval[export]' (or pip install pyarrow)") from None
    return pyarrow, pyarrow.parquet


def _check_out(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` is an existing folder to replace; refuses what may not be written."""
    try:
        mode = os.lstat(out).st_mode
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise TrafficRetrievalError(f"{out}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISLNK(mode) or not stat.S_ISDIR(mode):
        raise TrafficRetrievalError(f"{out}: exists and is not a folder{' (a symbolic link)' if stat.S_ISLNK(mode) else ''}: choose another --out")
    entries = sorted(os.listdir(out))
    if not entries:
        return True
    if not overwrite:
        raise TrafficRetrievalError(f"{out}: not empty (--overwrite replaces an earlier export there)")
    foreign = [name for name in entries if name not in EXPORT_ENTRIES]
    if foreign:
        raise TrafficRetrievalError(f"{out}: holds {foreign[0]!r}{f' and {len(foreign) - 1} more entries' if len(foreign) > 1 else ''}, which an export "
                                    "does not write: not replaced (choose another --out)")
    return True


def _write_npy_header(handle, rows: int, dim: int, dtype) -> None:
    import numpy as np

    np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (rows, dim)})


def export_embeddings(index: str | Path, out: str | Path, part_size: int = DEFAULT_PART_SIZE, overwrite: bool = False, dtype: str = "float32") -> dict:
    """Write the embeddings of ``index`` to ``out`` in clip-retrieval's layout, ``part_size``
    rows a part (see the module's docstring); returns what ``export.json`` says."""
    import numpy as np

    from .store import IndexLayout, IndexStore

    check_rows(part_size, "part_size")
    if dtype not in EXPORT_DTYPES:
        raise TrafficRetrievalError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    pa, pq = _pyarrow()
    out = Path(out).expanduser().absolute()
    layout = IndexLayout(index)
    info = layout.read_index_json()
    if os.path.realpath(out) == os.path.realpath(layout.root) or Path(os.path.realpath(out)).is_relative_to(os.path.realpath(layout.root)):
        raise TrafficRetrievalError(f"{out}: inside the index {layout.root}: choose an --out outside it")
    _check_out(out, overwrite)
    dim = info["dim"]
    schema = pa.schema([("id", pa.int64())] + [(name, pa.string()) for name in METADATA_COLUMNS[1:]])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise TrafficRetrievalError(f"{exc.filename or out.parent}: cannot write ({exc.strerror or exc})") from None
    try:
        parts = []
        with IndexStore(layout.meta_db, readonly=True) as store:
            (tmp / "img_emb").mkdir()
            (tmp / "metadata").mkdir()
            after_id, count = -1, 0
            while True:
                rows = store.count_indexed_after(after_id, part_size)
                if rows == 0 and parts:
                    break
                number = len(parts)
                emb_name, meta_name = f"img_emb/img_emb_{number}.npy", f"metadata/metadata_{number}.parquet"
                written = 0
                with (tmp / emb_name).open("wb") as emb, pq.ParquetWriter(tmp / meta_name, schema) as meta:
                    _write_npy_header(emb, rows, dim, dtype)
                    for batch in iter_embeddings(layout, info, store, BLOCK_ROWS, after_id, rows):
                        emb.write(np.ascontiguousarray(batch.embeddings, dtype=dtype).tobytes())
                        meta.write_table(pa.table({"id": pa.array(batch.ids, pa.int64()), "path": batch.paths, "name": batch.names,
                                                   "category": batch.categories, "label": batch.labels, "caption": batch.captions}, schema=schema))
                        written += len(batch)
                        after_id = int(batch.ids[-1])
                    if written == 0:  # an empty index: one empty part, so readers still find the schema and dim
                        meta.write_table(schema.empty_table())
                if written != rows:
                    raise TrafficRetrievalError(f"{layout.root}: the index changed during the export (a build removed images): export again")
                parts.append({"img_emb": emb_name, "metadata": meta_name, "rows": rows})
                count += rows
                if rows < part_size:
                    break
        summary = {"format": EXPORT_FORMAT, "index": str(layout.root.absolute()), "out": str(out), "model": info["model"], "source": info["source"],
                   "identity": info["identity"], "dim": dim, "dtype": dtype, "stored_dtype": info.get("embedding_dtype", "float16"), "normalized": True,
                   "count": count, "part_size": part_size, "parts": parts}
        (tmp / "export.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _move_into_place(tmp, out, overwrite)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TrafficRetrievalError(f"{exc.filename or out}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished export to ``out`` (checked again: it may have appeared meanwhile);
    an earlier export there is renamed aside first and deleted once the new one is in place."""
    for fsync_dir in (tmp / "img_emb", tmp / "metadata", tmp):
        for path in fsync_dir.iterdir():
            if path.is_file():
                with path.open("rb") as handle:
                    os.fsync(handle.fileno())
    replace = _check_out(out, overwrite)
    if replace and os.listdir(out):
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.rename(out, aside / "export")
        try:
            os.rename(tmp, out)
        except OSError:
            os.rename(aside / "export", out)  # put the earlier export back
            raise
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(tmp, out)  # onto nothing, or onto an empty folder
