"""The ``serve`` subcommand. ``cli.py`` registers it with ``add_parsers(commands)``;
FastAPI, uvicorn and torch are imported inside the handler."""

from __future__ import annotations

from pathlib import Path

SERVE_FLAGS = {
    # flag: (type, help); None = not given, so --config YAML values and the defaults apply
    "index": (Path, "the index folder (traffic-retrieval index --out)"),
    "host": (str, "address to listen on (default 127.0.0.1: this machine only)"),
    "port": (int, "port (default 8000; 0: any free port)"),
    "checkpoint": (Path, "the index's checkpoint at another path (must be the same model)"),
    "vocabulary": (Path, "vehicle_vocabulary.json from prepare, for routing queries"),
    "device": (str, "auto, cpu, cuda"),
    "precision": (str, "text encoding: auto (bf16 autocast where supported), fp32, bf16 or fp16"),
    "max_k": (int, "largest k a client may ask for (default 100)"),
    "batch_size": (int, "queries encoded together at most (default 32)"),
    "batch_wait_ms": (float, "how long a query waits for others to share its encoding batch (default 0: only those queued meanwhile)"),
    "thumbnail_size": (int, "thumbnail side in pixels (default 256)"),
    "thumbnail_cache": (int, "thumbnails kept in memory (default 2048)"),
    "log_level": (str, "uvicorn log level: critical, error, warning, info (default), debug"),
}


def _serve(args) -> None:
    from ..config import build_config
    from .app import ServeSettings
    from .server import serve

    overrides = {key: getattr(args, key) for key in SERVE_FLAGS}
    overrides["cors_origin"] = args.cors_origin
    serve(build_config(ServeSettings, args.config, overrides))


def add_parsers(commands) -> None:
    """Register ``serve`` on an argparse subparsers object."""
    p = commands.add_parser("serve", help="search service and web page over an index (FastAPI + uvicorn)")
    p.add_argument("--config", help="YAML file with ServeSettings keys (flags win)")
    for key, (kind, text) in SERVE_FLAGS.items():
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=kind, help=text)
    p.add_argument("--cors-origin", dest="cors_origin", nargs="+", metavar="ORIGIN",
                   help="let pages from these origins call the API (e.g. http://localhost:3000); default: CORS off")
    p.set_defaults(func=_serve)


def build_parser():
    """A parser with only this command (tests)."""
    import argparse

    parser = argparse.ArgumentParser(prog="traffic-retrieval")
    add_parsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser
