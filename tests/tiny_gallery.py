"""What the index, serve and browser tests build their index from: a small synthetic
gallery and a randomly initialised TR-Tiny-RN checkpoint (a module, not conftest.py:
tests/robustness has a conftest of its own)."""

from pathlib import Path


def make_tiny_gallery(root: Path, seed: int, test_pedestrians: int, test_vehicles: int, train: int = 2, val: int = 0) -> dict:
    """A synthetic dataset under ``root/data`` and a randomly initialised TR-Tiny-RN checkpoint
    (``root/tiny.pt``, seed 0): what the index, serve and browser tests build their index from."""
    import torch

    from traffic_retrieval.io import atomic_torch_save
    from traffic_retrieval.model.factory import checkpoint_payload, create_model
    from traffic_retrieval.synth import SynthConfig, generate_dataset

    generate_dataset(SynthConfig(out=root / "data", seed=seed, train_pedestrians=train, train_vehicles=train, val_pedestrians=val, val_vehicles=val,
                                 test_pedestrians=test_pedestrians, test_vehicles=test_vehicles, workers=1), progress=False)
    torch.manual_seed(0)
    atomic_torch_save(checkpoint_payload(create_model("TR-Tiny-RN")), root / "tiny.pt")
    return {"root": root, "gallery": root / "data" / "test" / "test_images", "labels": root / "data" / "ground_truth" / "test_label.txt",
            "checkpoint": root / "tiny.pt"}


def build_tiny_index(source: dict, out: Path) -> Path:
    """``traffic-retrieval index`` of ``make_tiny_gallery``'s gallery with its labels (CPU, no workers)."""
    from traffic_retrieval.commands.index import IndexConfig
    from traffic_retrieval.commands.index import run as build_index

    build_index(IndexConfig(images=source["gallery"], checkpoint=source["checkpoint"], out=out, labels=source["labels"], workers=0,
                            progress=False, device="cpu"))
    return out


def predict_tiny(source: dict, out: Path, *flags: str) -> int:
    """``traffic-retrieval predict`` of ``make_tiny_gallery``'s test split on CPU, the whole gallery ranked; the exit status."""
    from traffic_retrieval.cli import main

    return main(["predict", "--data", str(source["root"] / "data"), "--checkpoint", str(source["checkpoint"]), "--out", str(out),
                 "--workers", "0", "--no-progress", "--device", "cpu", "--gallery-scope", "all", *flags])


def index_tiny(source: dict, out: Path, *flags: str, gallery: Path | None = None) -> int:
    """``traffic-retrieval index`` of ``make_tiny_gallery``'s gallery (or ``gallery``) with its labels on CPU; the exit status."""
    from traffic_retrieval.cli import main

    return main(["index", "--images", str(gallery or source["gallery"]), "--checkpoint", str(source["checkpoint"]), "--out", str(out),
                 "--labels", str(source["labels"]), "--workers", "0", "--no-progress", "--device", "cpu", *flags])


def random_images(n: int, seed: int = 0, brightest: int = 255, size: int = 80):
    """``n`` uint8 NCHW noise images (values below ``brightest``), the same for the same seed."""
    import torch

    return (torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * brightest).to(torch.uint8)


def six_car_val_set(loaded, images):
    """A val split of 6 vehicle captions in 3 ATTRs over ``images`` (6 uint8 images), as ``train.validate`` takes it."""
    import torch

    from traffic_retrieval.train.data import TrainingSet

    rows = [{"text": f"A white car {i}.", "category": "vehicle", "attr": str(i % 3), "name": f"{i}.jpg"} for i in range(6)]
    return TrainingSet(rows, images, loaded.tokenizer([r["text"] for r in rows]), torch.tensor([i % 3 for i in range(6)]),
                       torch.ones(6, dtype=torch.long), [])
