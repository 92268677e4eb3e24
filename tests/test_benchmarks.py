"""The benchmark scripts' own logic, on tiny sizes (the benchmarks themselves run on demand)."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_search  # noqa: E402


def test_random_vectors_are_normalised_and_clip_like_ones_have_few_directions():
    clip_like = bench_search.random_vectors(4000, 64, "clip-like", seed=0, chunk=1500)
    isotropic = bench_search.random_vectors(4000, 64, "isotropic", seed=0)
    for vectors in (clip_like, isotropic):
        assert vectors.shape == (4000, 64) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert bench_search.participation_ratio(clip_like) < 20 < 55 < bench_search.participation_ratio(isotropic)
    # chunked generation is one random stream: the same seed gives the same vectors whatever the chunk (up to matmul rounding)
    np.testing.assert_allclose(bench_search.random_vectors(4000, 64, "clip-like", seed=0), clip_like, atol=1e-5)


def test_measure_reports_the_tuned_setting_and_its_neighbours():
    row = bench_search.measure(3000, 64, "clip-like", queries=100, kind="hnsw", seed=0, reduce_dim=16, progress=False)
    assert row["size"] == 3000 and row["queries"] == 100 and row["index"].startswith("HNSW32 on 16 principal directions")
    assert row["recall@10"] >= 0.9 and 0 < row["p50_ms"] <= row["p99_ms"]
    assert row["search_param"] in [entry["search_param"] for entry in row["sweep"]] and len(row["sweep"]) >= 2


def test_gpu_smoke_train_summary_requires_ddp_when_asked(tmp_path, capsys):
    import argparse

    import _gpu_smoke_checks

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "final.pt").write_bytes(b"weights")
    record = '{"epoch": 1, "step": 12, "loss": 2.5, "samples_per_second": 900.0}'
    for header, expect_ddp, status in (("on 1 process(es), device cuda", False, 0), ("on 1 process(es), device cuda", True, 1),
                                       ("on 1 process(es) (DDP), device cuda", True, 0)):
        (run / "train.log").write_text(f"2026-12-03 08:00:00 training TR on 96 pairs, {header}\n2026-12-03 08:00:09 {record}\n")
        assert _gpu_smoke_checks.train_summary(argparse.Namespace(run=str(run), expect_ddp=expect_ddp)) == status
    assert "1 epoch(s), 12 steps, loss 2.500" in capsys.readouterr().out
