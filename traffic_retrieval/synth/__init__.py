"""The synthetic benchmark: a deterministic dataset in the exact challenge layout.

- ``generate.py``: ``generate_dataset(SynthConfig(out=..., seed=...))``, the ``synth``
  command: labels, captions and the plan of every image, rendering, the files;
- ``captions.py``: the caption grammar, modelled on the challenge's real texts;
- ``draw.py``: the drawn pedestrian and vehicle crops and the surveillance look of
  the test and camera val (``val_camera``) splits.

It reads the data format from ``traffic_retrieval.data`` and nothing else of the
project's but ``errors``. numpy and PIL are imported only when a name is used.
"""

_EXPORTS = {"SynthConfig": "generate", "generate_dataset": "generate"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
