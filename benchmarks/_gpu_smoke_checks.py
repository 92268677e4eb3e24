"""Helpers of ``gpu_smoke.sh``: each subcommand checks one thing and prints one
line (its detail for the summary); a non-zero exit marks the check failed.

    env      --device cuda|cpu                 torch, CUDA and bf16 availability
    train-summary RUN [--expect-ddp]           samples/s, loss and val score from RUN/train.log (and that it ran under DDP)
    encode   --checkpoint CKPT --gallery DIR --device D   gallery encoding throughput
    evaluation EVALUATION_JSON                 the scores of ``evaluate --json``
    report   --results JSONL --out JSON [--copy-to DIR]   the result file
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def check_env(args) -> int:
    import open_clip
    import torch

    cuda = torch.cuda.is_available()
    detail = f"torch {torch.__version__}, open_clip {open_clip.__version__}, cuda {'yes' if cuda else 'no'}"
    if cuda:
        detail += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
    print(detail)
    if args.device.startswith("cuda") and not (cuda and torch.cuda.is_bf16_supported()):
        return 1
    return 0


def train_summary(args) -> int:
    records = []
    log_text = (Path(args.run) / "train.log").read_text(encoding="utf-8")
    if args.expect_ddp and "(DDP)" not in log_text:
        print("train.log shows no DDP process group (expected under torchrun)")
        return 1
    for line in log_text.splitlines():
        text = line.split(" ", 2)[-1] if line[:2].isdigit() else line  # "YYYY-mm-dd HH:MM:SS {json}"
        if text.startswith("{"):
            records.append(json.loads(text))
    if not records:
        print("no epoch record in train.log")
        return 1
    last = records[-1]
    val = last.get("val", {}).get("official_mAP@10")
    print(f"{len(records)} epoch(s), {last['step']} steps, loss {last['loss']:.3f}, {last['samples_per_second']:.1f} samples/s"
          + (f", val official mAP@10 {val:.3f}" if val is not None else ""))
    return 0 if math.isfinite(last["loss"]) and (Path(args.run) / "checkpoints" / "final.pt").is_file() else 1


def encode(args) -> int:
    import torch

    from traffic_retrieval.model.factory import load_checkpoint
    from traffic_retrieval.retrieval.encode import encode_image_files
    from traffic_retrieval.runtime import autocast_dtype

    loaded = load_checkpoint(args.checkpoint, device=args.device)
    dtype = autocast_dtype("auto", args.device)
    paths = sorted(str(p) for p in Path(args.gallery).iterdir())
    encode_image_files(loaded, paths[: args.batch_size], args.device, dtype, args.batch_size, args.workers, progress=False)  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    rates = []
    for _ in range(args.repetitions):
        started = time.perf_counter()
        result = encode_image_files(loaded, paths, args.device, dtype, args.batch_size, args.workers, progress=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        rates.append(len(paths) / (time.perf_counter() - started))
    norms = result.embeddings.norm(dim=1)
    ok = len(result.readable) == len(paths) and bool(torch.isfinite(result.embeddings).all()) and bool(((norms - 1).abs() < 1e-2).all())
    print(f"{len(paths)} images, {_common.median(rates):.1f} img/s median of {len(rates)} (autocast {dtype}, batch {args.batch_size}, {args.workers} workers)"
          + ("" if ok else ", BAD EMBEDDINGS"))
    return 0 if ok else 1


def evaluation(args) -> int:
    scores = json.loads(Path(args.evaluation).read_text())
    print(f"{scores['num_queries']} queries, official mAP@10 {scores['official_mAP@10']:.3f}, strict {scores['strict_mAP@10']:.3f}, recall@10 {scores['recall@10']:.3f}")
    return 0


def report(args) -> int:
    checks = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
    from traffic_retrieval.io import atomic_write_json

    payload = {
        "benchmark": "gpu_smoke",
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": args.mode,
        "machine": _common.machine(),
        "checks": checks,
        "passed": all(c["status"] == "PASS" for c in checks),
    }
    atomic_write_json(args.out, payload)
    if args.copy_to:
        Path(args.copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(args.out, Path(args.copy_to) / Path(args.out).name)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("env")
    p.add_argument("--device", default="cuda")
    p = sub.add_parser("train-summary")
    p.add_argument("run")
    p.add_argument("--expect-ddp", action="store_true", help="fail unless the run trained inside a DDP process group")
    p = sub.add_parser("encode")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--gallery", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--repetitions", type=int, default=3)
    p = sub.add_parser("evaluation")
    p.add_argument("evaluation")
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", default="gpu")
    p.add_argument("--copy-to")
    args = parser.parse_args(argv)
    return {"env": check_env, "train-summary": train_summary, "encode": encode, "evaluation": evaluation, "report": report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
