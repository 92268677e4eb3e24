"""Atomic file writes and JSON-lines helpers: every output file is written to a
temporary file in the same directory and renamed, so a killed run never leaves
a half-written file behind. ``folder_lock``: one run per output folder."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import TrafficRetrievalError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        # mkstemp makes 0600 files; give outputs the usual permissions (or keep the old file's)
        os.chmod(tmp_path, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    try:
        with Path(path).open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise TrafficRetrievalError(f"{path}:{line_number}: invalid JSON ({exc.msg})") from None
    except FileNotFoundError:
        raise TrafficRetrievalError(f"{path}: file not found") from None
    return rows


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def read_input_bytes(path: str | Path, what: str) -> bytes:
    """A user's input file, whole; a one-line error naming it and ``what`` it should be otherwise."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TrafficRetrievalError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise TrafficRetrievalError(f"{path}: {what} is a directory, expected a file") from None
    except OSError as exc:
        raise TrafficRetrievalError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


class Closeable:
    """A resource used as ``with resource:``, closed on leaving the block."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


LOCK_FILE = ".lock"
_held_locks: dict[tuple[int, int], list[int]] = {}  # (device, inode) of a lock file this process holds -> its descriptors
_held_locks_guard = threading.Lock()


@contextmanager
def folder_lock(folder: str | Path, command: str) -> Iterator[Path]:
    """One run per folder: hold ``FOLDER/.lock`` while ``command`` (``index``, ``train``,
    ``prepare``) writes in ``folder``; a second run on it, here or in another process, is
    a one-line error naming the folder. Yields the folder (created if needed).

    A POSIX record lock (``fcntl.lockf``), not ``flock``: the kernel releases it the moment
    its process dies, and processes forked while it is held (DataLoader workers, which
    outlive a killed parent by seconds) do not hold it, so a killed run can be restarted
    at once. Record locks belong to a process and closing *any* descriptor of the file
    drops them, so a second take in this process is refused here without closing anything.
    """
    import fcntl
    import stat

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    busy = TrafficRetrievalError(f"{folder}: another `{command}` run is using this folder (it holds {LOCK_FILE}); "
                                 "wait for it to finish, or use another folder")
    try:  # no link followed, no FIFO waited on, not inherited by programs this run starts
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        reason = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or exc
        raise TrafficRetrievalError(f"{path}: cannot open the lock file ({reason})") from None
    with _held_locks_guard:
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        if key in _held_locks:  # held by this process: keep this descriptor open until the holder lets go
            _held_locks[key].append(fd)
            raise busy
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise TrafficRetrievalError(f"{path}: the lock file is not a regular file")
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise busy from None
            raise TrafficRetrievalError(f"{path}: cannot lock ({exc.strerror or exc})") from None
        _held_locks[key] = [fd]
    try:
        yield folder
    finally:
        with _held_locks_guard:
            for descriptor in _held_locks.pop(key):
                os.close(descriptor)  # the first close releases the lock


def read_input_text(path: str | Path, what: str) -> str:
    """A user's UTF-8 text file, whole; one-line errors naming it (missing, a folder, unreadable, not UTF-8)."""
    raw = read_input_bytes(path, what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrafficRetrievalError(f"{path}: not UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start})") from None


def read_recorded_safetensors(path: str | Path, sha256: str | None, max_bytes: int, contents: str, built_with: str,
                              framework: str = "numpy") -> dict:
    """The tensors of a safetensors file that an index records with its ``sha256`` (an
    untrusted file: safetensors holds tensors only, so reading it runs no code): at most
    ``max_bytes`` (``contents`` says what it holds, for the message), its sha256 the recorded
    one. Missing (``built_with``: the setting that wrote it), too big, changed or unreadable:
    a one-line ``TrafficRetrievalError`` naming the file."""
    from safetensors import SafetensorError

    from .errors import TrafficRetrievalError

    if framework == "torch":
        from safetensors.torch import load as load_bytes
    else:
        from safetensors.numpy import load as load_bytes
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise TrafficRetrievalError(f"{path}: {size} bytes, more than {contents} take ({max_bytes} at most)")
        data = path.read_bytes()
    except FileNotFoundError:
        raise TrafficRetrievalError(f"{path}: missing (the index was built with {built_with})") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise TrafficRetrievalError(f"{path}: sha256 differs from the one index.json records (a changed or foreign file)")
    try:
        return load_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise TrafficRetrievalError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
