"""Shared helpers for the robustness corpus: run the real CLI and check its error
contract, build challenge-layout datasets from raw label bytes, make odd images,
and a tiny random-weight checkpoint for predict (no training needed)."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from traffic_retrieval.cli import main

# 21 flags: a pedestrian ATTR; vehicle ATTRs are "<color> <Brand>." or a type
FLAGS = ",".join(["1", "0", "1"] + ["0"] * 18)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


class Cli:
    """``traffic_retrieval.cli.main`` in process, with its output captured."""

    def __init__(self, capsys):
        self.capsys = capsys

    def run(self, *argv) -> CliResult:
        self.capsys.readouterr()
        code = main([str(arg) for arg in argv])
        captured = self.capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    def ok(self, *argv) -> CliResult:
        result = self.run(*argv)
        assert result.code == 0, result.err
        assert "Traceback" not in result.err
        return result

    def error(self, argv, *fragments: str) -> str:
        """Run, expect exit 2 and exactly one line ``error: ...`` containing every fragment."""
        result = self.run(*argv)
        assert result.code == 2, (result.code, result.err)
        # stderr may also hold progress bars (``\r``-overwritten); the error is its one last line
        line = result.err.rstrip("\n").split("\n")[-1].split("\r")[-1]
        assert line.startswith("error: ") and result.err.count("error: ") == 1 and result.err.endswith(line + "\n"), result.err
        assert "Traceback" not in result.err, result.err
        for fragment in fragments:
            assert str(fragment) in line, (fragment, line)
        return line


@pytest.fixture
def cli(capsys) -> Cli:
    return Cli(capsys)


def jpeg_bytes(size=(8, 8), color=(200, 30, 30), mode="RGB", **save_options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "JPEG", **save_options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in a few dozen bytes (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def unreadable_images(directory: Path) -> dict[str, Path]:
    """Files named like images that no decoder can use, and a directory named like one."""
    directory.mkdir(parents=True, exist_ok=True)
    whole = jpeg_bytes((64, 64))
    files = {
        "zero_bytes.jpg": b"",
        "truncated.jpg": whole[: len(whole) // 2],
        "bomb.png": png_header_only(100_000, 100_000),
        "not_an_image.jpg": b"this is text, not a JPEG\n" * 4,
    }
    paths = {}
    for name, data in files.items():
        (directory / name).write_bytes(data)
        paths[name] = directory / name
    (directory / "folder.jpg").mkdir(exist_ok=True)
    paths["folder.jpg"] = directory / "folder.jpg"
    return paths


@pytest.fixture
def label_data(tmp_path):
    """``build(train_lines, images=..., val_lines=None)`` -> a DATA dir in the challenge layout.

    Lines are str (written as UTF-8) or raw bytes, each ending with ``\\n``
    unless it already ends with a line break; ``raw=`` writes the file verbatim.
    """

    def build(train_lines=(), images=(), val_lines=None, raw: bytes | None = None, name: str = "data") -> Path:
        data = tmp_path / name
        for split in ("train", "val"):
            (data / split / f"{split}_images").mkdir(parents=True, exist_ok=True)
        picture = jpeg_bytes()
        for image in images:
            (data / "train" / "train_images" / image).write_bytes(picture)
        (data / "train" / "train_label.txt").write_bytes(raw if raw is not None else encode_lines(train_lines))
        if val_lines is not None:
            (data / "val" / "val_label.txt").write_bytes(encode_lines(val_lines))
        return data

    return build


def encode_lines(lines) -> bytes:
    out = b""
    for line in lines:
        data = line if isinstance(line, bytes) else line.encode("utf-8")
        out += data if data.endswith((b"\n", b"\r")) else data + b"\n"
    return out


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (train, val, test with ground truth) in the challenge layout."""
    from traffic_retrieval.synth import SynthConfig, generate_dataset

    out = tmp_path_factory.mktemp("robust-synth") / "data"
    generate_dataset(SynthConfig(out=out, seed=5, train_pedestrians=12, train_vehicles=8, val_pedestrians=4, val_vehicles=4,
                                 test_pedestrians=12, test_vehicles=8, workers=1), progress=False)
    return out


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """A self-describing TR-Tiny-RN checkpoint with random weights: enough to exercise predict."""
    import torch

    from traffic_retrieval.io import atomic_torch_save
    from traffic_retrieval.model.factory import checkpoint_payload, create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("robust-ckpt") / "random.pt"
    atomic_torch_save(checkpoint_payload(create_model("TR-Tiny-RN")), path)
    return path


@pytest.fixture(scope="session")
def make():
    """The image makers above, for test modules (``from conftest import`` is ambiguous with two conftest.py)."""
    from types import SimpleNamespace

    return SimpleNamespace(jpeg_bytes=jpeg_bytes, png_header_only=png_header_only, unreadable_images=unreadable_images)
