"""A run's checkpoints, in RUN/checkpoints/:

- ``epoch_N.pt`` after every epoch (the newest ``keep`` kept; 0 keeps all),
- ``best.pt`` when an epoch beats the best val official mAP@10 so far,
- ``last.pt``: ``TrainingState.state_dict()`` (optimizer, scaler, history), for ``--resume``,
- ``final.pt`` at the end, with the whole history.

Every file but ``last.pt`` is a self-describing model checkpoint (``model/factory.py``)
that ``--checkpoint`` and plain open_clip load.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TrafficRetrievalError


def category_texts(rows: list[dict], per_category: int = 500, seed: int = 0) -> dict[str, list[str]]:
    """A sample of distinct training captions per category, stored in the checkpoint so
    inference can tell pedestrian from vehicle gallery images (see ``gallery_categories``)."""
    import random

    sample = {}
    for category in ("pedestrian", "vehicle"):
        texts = sorted({r["text"] for r in rows if r["category"] == category})
        random.Random(seed).shuffle(texts)
        if texts:
            sample[category] = texts[:per_category]
    return sample


class Checkpointer:
    """Writes (atomically) and reads a run's checkpoints. ``metadata`` goes into every
    model checkpoint (the training captions by category, the run's config)."""

    def __init__(self, run_dir: str | Path, loaded, metadata: dict, keep: int = 2):
        self.directory = Path(run_dir) / "checkpoints"
        self.loaded = loaded  # model/factory.LoadedModel: name, architecture, preprocessing
        self.metadata = metadata
        self.keep = keep

    @property
    def last_path(self) -> Path:
        return self.directory / "last.pt"

    @property
    def final_path(self) -> Path:
        return self.directory / "final.pt"

    def epoch_path(self, epoch: int) -> Path:
        return self.directory / f"epoch_{epoch}.pt"

    def _model_checkpoint(self, state, weights: dict, extra: dict) -> dict:
        from ..model.factory import checkpoint_payload

        heads = {"attribute_heads": state.heads.state_dict()} if state.heads is not None else {}
        return checkpoint_payload(self.loaded, {**self.metadata, **extra, **heads}, model_state=weights)

    def save_epoch(self, state, is_best: bool) -> list[Path]:
        """The files of the epoch ``state`` just finished (its record is ``state.history[-1]``)."""
        from ..io import atomic_torch_save

        self.directory.mkdir(parents=True, exist_ok=True)
        resume_state = state.state_dict()
        payload = self._model_checkpoint(state, resume_state["state_dict"], {"epoch": state.epoch, "metrics": state.history[-1]})
        written = [self.epoch_path(state.epoch)]
        atomic_torch_save(payload, written[0])
        self._drop_old_epochs()
        if is_best:
            atomic_torch_save(payload, self.directory / "best.pt")
            written.append(self.directory / "best.pt")
        atomic_torch_save(resume_state, self.last_path)  # last: a kill before it leaves the previous epoch's
        return written + [self.last_path]

    def _drop_old_epochs(self) -> None:
        if self.keep <= 0:
            return
        epochs = sorted(self.directory.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]) if p.stem.split("_")[1].isdigit() else -1)
        for path in epochs[: -self.keep]:
            path.unlink(missing_ok=True)

    def save_final(self, state) -> Path:
        from ..io import atomic_torch_save

        atomic_torch_save(self._model_checkpoint(state, state.model_weights(), {"epoch": state.epoch, "history": state.history}), self.final_path)
        return self.final_path

    def resume(self, state) -> bool:
        """Load ``last.pt`` into ``state`` when there is one; a damaged or foreign file is a one-line error.

        Loaded as data only (tensors and plain values, ``weights_only``): a run folder from
        someone else cannot run code; ``TrainingState.state_dict`` writes nothing else.
        """
        from ..model.factory import load_plain

        if not self.last_path.is_file():
            return False
        payload = load_plain(self.last_path, "cannot resume from it")
        try:
            state.load_state_dict(payload)
        except TrafficRetrievalError as exc:
            raise TrafficRetrievalError(f"{self.last_path}: cannot resume from it ({exc}); delete it to start over") from None
        except Exception as exc:  # torch raises many types for weights that do not fit
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise TrafficRetrievalError(f"{self.last_path}: cannot resume from it ({reason}); delete it to start over") from None
        return True
