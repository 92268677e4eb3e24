"""Gallery encoding throughput: ``encode_image_files`` vs the seed's plain open_clip loop.

ours:  traffic_retrieval.retrieval.encode.encode_image_files (DataLoader workers
       decode/pad/resize, channels-last input, bf16 autocast where the CPU has it),
       exactly as ``predict`` calls it.
peer:  model, _, preprocess = open_clip.create_model_and_transforms(name); for each
       batch: torch.stack([preprocess(Image.open(p).convert("RGB")) ...]) and
       model.encode_image in fp32 under torch.no_grad, single process.
ours_fp32 (optional): ours with autocast off, to separate the pipeline's gain from bf16's.

Same weights (the peer loads ours' state dict), same images, same torch threads.
Goal documented in benchmarks/README.md: ours >= 1.5x the peer's images/s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

GOAL_SPEEDUP = 1.5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="gallery images for TR-Tiny-RN")
    parser.add_argument("--vit-images", type=int, default=256, help="gallery images for ViT-B-32 (0: skip ViT-B-32)")
    parser.add_argument("--models", default="TR-Tiny-RN,ViT-B-32", help="comma-separated open_clip model names (random init)")
    parser.add_argument("--repetitions", type=int, default=5, help="timed repetitions per side (interleaved), TR-Tiny-RN")
    parser.add_argument("--vit-repetitions", type=int, default=3, help="timed repetitions per side for the other models")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size, both sides (ours' predict default)")
    parser.add_argument("--workers", type=int, default=2, help="ours' DataLoader workers (predict default)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    parser.add_argument("--no-fp32-variant", action="store_true", help="skip the ours-with-fp32 side")
    parser.add_argument("--cache-dir", type=Path, default=_common.DEFAULT_CACHE_DIR)
    parser.add_argument("--results-dir", type=Path, default=None, help=_common.RESULTS_DIR_HELP)
    parser.add_argument("--name", default=None, help="result file name (default bench_encode, bench_encode_quick with --quick)")
    parser.add_argument("--wait-quiet", type=float, default=180, help="first wait up to this many seconds for other processes to leave the CPUs (0: do not wait)")
    parser.add_argument("--quick", action="store_true", help="smoke run (< 60 s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.wait_quiet = 0
        args.images, args.vit_images, args.repetitions, args.vit_repetitions = 48, 16, 1, 1
        args.batch_size = min(args.batch_size, 16)
    args.name = args.name or ("bench_encode_quick" if args.quick else "bench_encode")
    args.results_dir = _common.results_dir_for(args.results_dir, args.quick)
    return args


def gallery_paths(args) -> list[str]:
    total = max(args.images, args.vit_images)
    pedestrians = (total * 2 + 2) // 3
    data = _common.synthetic_dataset(args.cache_dir, train_pedestrians=8, train_vehicles=4, val_pedestrians=0, val_vehicles=0,
                                     test_pedestrians=pedestrians, test_vehicles=total - pedestrians)
    return sorted(str(p) for p in (data / "test" / "test_images").iterdir())


def seed_loop(model, preprocess, paths: list[str], batch_size: int):
    """The seed's gallery encoding: PIL + open_clip preprocess in the main process, fp32."""
    import torch
    from PIL import Image

    outputs = []
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[start : start + batch_size]])
            outputs.append(model.encode_image(batch, normalize=True).float())
    return torch.cat(outputs)


def bench_model(name: str, paths: list[str], args) -> dict:
    import open_clip
    import torch

    from traffic_retrieval.model.factory import create_model
    from traffic_retrieval.retrieval.encode import encode_image_files
    from traffic_retrieval.runtime import autocast_dtype

    torch.manual_seed(0)
    loaded = create_model(name, device="cpu")
    loaded.model.eval()
    peer_model, _, peer_preprocess = open_clip.create_model_and_transforms(name)
    peer_model.load_state_dict(loaded.model.state_dict())
    peer_model.eval()
    dtype = autocast_dtype("auto", "cpu")
    last = {}

    def side(label, run):
        def timed(subset=paths):
            started = _common.timer()
            embeddings = run(subset)
            seconds = _common.timer() - started
            last[label] = embeddings
            return {"seconds": seconds, "images_per_second": len(subset) / seconds}
        return timed

    ours_run = lambda subset, d=dtype: encode_image_files(loaded, subset, "cpu", d, args.batch_size, args.workers, progress=False).embeddings
    sides = {"ours": side("ours", ours_run), "peer": side("peer", lambda subset: seed_loop(peer_model, peer_preprocess, subset, args.batch_size))}
    if not args.no_fp32_variant and dtype is not None:
        sides["ours_fp32"] = side("ours_fp32", lambda subset: ours_run(subset, None))
    warmup_paths = paths[: min(len(paths), args.batch_size)]
    for run in sides.values():  # one-time costs (oneDNN kernels, first fork) are not throughput
        run(warmup_paths)
    load_before = _common.loadavg()
    reps = _common.interleave(sides, args.repetitions if name == "TR-Tiny-RN" else args.vit_repetitions, warmup=0)
    load_after = _common.loadavg()
    medians = {label: _common.median([r["images_per_second"] for r in runs]) for label, runs in reps.items()}
    # sanity: the same weights give close embeddings; preprocessing differs (ours pads to a square,
    # the seed's open_clip transform resizes the short side and center-crops) and ours runs in bf16
    cosine = (last["ours"] * last["peer"]).sum(dim=1)
    result = {
        "images": len(paths),
        "autocast_dtype": str(dtype),
        "repetitions": reps,
        "median_images_per_second": medians,
        "speedup": medians["ours"] / medians["peer"],
        # each ours/peer pair ran back to back under about the same background load
        "speedup_paired_median": _common.paired_speedup(reps["ours"], reps["peer"], "images_per_second"),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "embedding_cosine_ours_vs_peer": {"mean": float(cosine.mean()), "min": float(cosine.min())},
    }
    if "ours_fp32" in medians:
        result["speedup_ours_fp32_vs_peer"] = medians["ours_fp32"] / medians["peer"]
        cosine_fp32 = (last["ours"] * last["ours_fp32"]).sum(dim=1)
        result["embedding_cosine_bf16_vs_fp32"] = {"mean": float(cosine_fp32.mean()), "min": float(cosine_fp32.min())}
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    paths = gallery_paths(args)
    quiet = _common.wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    results = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        count = args.images if name == "TR-Tiny-RN" else args.vit_images
        if count <= 0:
            continue
        results[name] = bench_model(name, paths[:count], args)
        r = results[name]
        print(f"[bench_encode] {name}: ours {r['median_images_per_second']['ours']:.1f} img/s vs peer "
              f"{r['median_images_per_second']['peer']:.1f} img/s = {r['speedup']:.2f}x", file=sys.stderr, flush=True)
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("results_dir",)}
    primary = results.get("TR-Tiny-RN") or next(iter(results.values()))
    path = _common.write_result(args.name, {
        "compares": "traffic_retrieval encode_image_files vs the seed's plain open_clip preprocess + encode_image loop (fp32, single process)",
        "metric": "images per second (higher is better), median of interleaved repetitions",
        "goal": f"ours >= {GOAL_SPEEDUP}x peer",
        "machine": _common.machine(),
        "parameters": params,
        "quiet_wait": quiet,
        "models": results,
        "speedup": primary["speedup"],
        "goal_met": all(r["speedup"] >= GOAL_SPEEDUP for r in results.values()),
    }, args.results_dir)
    summary = ", ".join(f"{n} {r['median_images_per_second']['ours']:.1f} vs {r['median_images_per_second']['peer']:.1f} img/s ({r['speedup']:.2f}x)" for n, r in results.items())
    print(f"bench_encode: ours vs peer: {summary}; goal >= {GOAL_SPEEDUP}x; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
