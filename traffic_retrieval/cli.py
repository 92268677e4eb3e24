"""The ``traffic-retrieval`` command: a thin map from subcommands to library functions.

Heavy libraries (torch, open_clip) are imported inside the command functions so
``--help`` is instant. A ``TrafficRetrievalError`` becomes ``error: <message>``
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SEED_PROMPT_SUFFIX = " image taken by traffic surveillance cameras"  # = retrieval.queries.SEED_PROMPT_SUFFIX (kept light for --help)


def _synth(args) -> None:
    from .data.synth import SynthConfig, generate_dataset

    sizes = {k: getattr(args, k) for k in ("train_pedestrians", "train_vehicles", "val_pedestrians", "val_vehicles", "test_pedestrians", "test_vehicles") if getattr(args, k) is not None}
    summary = generate_dataset(SynthConfig(out=args.out, seed=args.seed, workers=args.workers, overwrite=args.overwrite, **sizes))
    print(json.dumps(summary, indent=2))


def _prepare(args) -> None:
    from .data.prepare import PrepareConfig, format_report, prepare

    config = PrepareConfig(data=args.data, work=args.work, strict=args.strict)
    if args.vehicle_types:
        config.vehicle_types = [t.strip() for t in args.vehicle_types.split(",") if t.strip()]
    report = prepare(config)
    print(format_report(report))
    print(f"wrote {Path(args.work) / 'manifests'}, {Path(args.work) / 'vehicle_vocabulary.json'}, {Path(args.work) / 'prepare_report.json'}")


TRAIN_FLAGS = {
    # flag: (type, help)
    "work": (Path, "prepare output directory (manifests)"),
    "out": (Path, "run directory for config, log, TensorBoard events and checkpoints"),
    "model": (str, "open_clip architecture name (default TR-Tiny-RN, ours; e.g. ViT-bigG-14)"),
    "pretrained": (str, "open_clip pretrained tag (laion2b_s39b_b160k), hf-hub: id or weights file"),
    "checkpoint": (Path, "start from a traffic-retrieval checkpoint"),
    "train_manifest": (str, "manifest name under WORK/manifests (default train)"),
    "resize_mode": (str, "pad (zero-pad to square, default), squash or crop"),
    "epochs": (int, "number of epochs"),
    "batch_size": (int, "batch size per step"),
    "lr": (float, "peak learning rate"),
    "wd": (float, "weight decay"),
    "warmup": (int, "warmup steps"),
    "seed": (int, "random seed"),
    "loss": (str, "multi-positive (default: equal-ATTR pairs are positives) or clip"),
    "precision": (str, "auto, fp32, bf16 or fp16"),
    "device": (str, "auto, cpu, cuda, cuda:1 ..."),
    "workers": (int, "image decoding processes"),
    "threads": (int, "torch CPU threads (0: all cores)"),
    "grad_accum": (int, "gradient accumulation steps"),
    "keep_checkpoints": (int, "epoch_N.pt files to keep"),
    "lock_image_unlocked_groups": (int, "with --lock-image: last image-tower groups left trainable"),
    "lock_text_unlocked_layers": (int, "with --lock-text: last text-tower layers left trainable"),
    "attribute_heads": (float, "weight of the auxiliary attribute-head loss (0: off)"),
}


def _train(args) -> None:
    from .config import build_config
    from .train.trainer import TrainConfig, train

    overrides = {key: getattr(args, key) for key in TRAIN_FLAGS}
    for flag in ("augment", "validate", "grad_checkpointing", "resume", "lock_image", "lock_text"):
        overrides[flag] = getattr(args, flag)
    overrides["progress"] = False if args.no_progress else None
    config = build_config(TrainConfig, args.config, overrides)
    summary = train(config)
    last = summary["history"][-1] if summary["history"] else {}
    print(f"final checkpoint: {summary['final_checkpoint']}")
    if "val" in last:
        print(f"val official mAP@10 {last['val']['official_mAP@10']:.4f}, strict {last['val']['strict_mAP@10']:.4f}")


def _predict(args) -> None:
    from .retrieval.predict import PredictConfig, predict

    config = PredictConfig(data=args.data, checkpoint=args.checkpoint, out=args.out, top_k=args.top_k, model=args.model,
                           pretrained=args.pretrained, vocabulary=args.vocabulary, queries=args.queries, gallery=args.gallery, index=args.index, contact_sheet=args.contact_sheet,
                           batch_size=args.batch_size, workers=args.workers, device=args.device, progress=not args.no_progress,
                           strip_vehicle_prefix=args.strip_vehicle_prefix, prompt=args.prompt, prompt_suffix=args.prompt_suffix,
                           rerank=args.rerank, rerank_candidates=args.rerank_candidates, rerank_neighbours=args.rerank_neighbours,
                           rerank_adapted_weight=args.rerank_adapted_weight, rerank_reciprocal_weight=args.rerank_reciprocal_weight)
    summary = predict(config)
    print(f"wrote {summary['submission']}: {summary['queries']} queries over {summary['gallery_images']} gallery images "
          f"({', '.join(f'{n} {c}' for c, n in summary['gallery_per_category'].items())})")
    if summary["empty_queries"]:
        print(f"{summary['empty_queries']} queries are empty or whitespace-only (answered like the others)")
    if summary["truncated_queries"]:
        print(f"{summary['truncated_queries']} queries exceed the model's {summary['context_length']}-token text context and were truncated")
    if summary.get("contact_sheet"):
        print(f"wrote {summary['contact_sheet']}")
    for message in summary["unreadable_images"][:10]:
        print(f"skipped unreadable image: {message}")
    if summary["unreadable_images"]:
        print(f"{len(summary['unreadable_images'])} gallery images could not be read and were skipped")


def _evaluate(args) -> None:
    from .evaluation.evaluate import evaluate_files, format_report

    report = evaluate_files(args.submission, args.ground_truth, gallery_dir=args.gallery, top_k=args.top_k)
    print(json.dumps(report.to_json_dict()) if args.json else format_report(report))


def _augment(args) -> None:
    from .train.attribute_augment import AugmentCaptionsConfig, augment_captions, format_report

    report = augment_captions(AugmentCaptionsConfig(work=args.work, checkpoint=args.checkpoint, model=args.model, pretrained=args.pretrained,
                                                    manifest=args.manifest, out_manifest=args.out_manifest, keep_original=args.keep_original,
                                                    batch_size=args.batch_size, workers=args.workers, device=args.device, progress=not args.no_progress))
    print(format_report(report))


def _soup(args) -> None:
    from .model.soup import SoupConfig, format_report, make_soup

    report = make_soup(SoupConfig(checkpoints=args.checkpoints, val=args.val, out=args.out, method=args.method, device=args.device, workers=args.workers))
    print(format_report(report))


def _ablate(args) -> None:
    from .ablation import AblationConfig, run_ablation

    run_ablation(AblationConfig(data=args.data, out=args.out, work=args.work, seed=args.seed, epochs=args.epochs, preset=args.preset))
    print(Path(args.out).read_text(encoding="utf-8"))


def _demo(args) -> None:
    from .demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, seed=args.seed, epochs=args.epochs))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="traffic-retrieval", description="Text-to-image retrieval for traffic scenes (pedestrians and vehicles) with open_clip.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("synth", help="generate a synthetic dataset in the challenge layout")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overwrite", action="store_true", help="replace the split folders of an earlier dataset in --out")
    for split in ("train", "val", "test"):
        for category in ("pedestrians", "vehicles"):
            p.add_argument(f"--{split}-{category}", dest=f"{split}_{category}", type=int, metavar="N")
    p.set_defaults(func=_synth)

    p = commands.add_parser("prepare", help="parse labels, split categories, extract the vehicle vocabulary, write manifests")
    p.add_argument("--data", type=Path, required=True, help="dataset root in the challenge layout")
    p.add_argument("--work", type=Path, required=True, help="output directory")
    p.add_argument("--strict", action="store_true", help="stop at the first bad line instead of skipping and counting")
    p.add_argument("--vehicle-types", help="comma-separated vehicle types (default: the challenge's six)")
    p.set_defaults(func=_prepare)

    p = commands.add_parser("train", help="contrastive training of an open_clip model")
    p.add_argument("--config", default="cpu-tiny", help="YAML config file or preset name: cpu-tiny (default), a3r-vit-bigg")
    for key, (kind, text) in TRAIN_FLAGS.items():
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=kind, help=text)
    for flag, text in (("augment", "surveillance-look training augmentations"), ("validate", "validation each epoch"),
                       ("grad_checkpointing", "gradient checkpointing"), ("resume", "continue RUN_DIR from its last epoch"),
                       ("lock_image", "freeze the image tower (LiT)"), ("lock_text", "freeze the text tower")):
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, action=argparse.BooleanOptionalAction, default=None, help=text)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_train)

    p = commands.add_parser("predict", help="rank the test gallery for every query and write the submission JSON")
    p.add_argument("--data", type=Path, help="dataset root (uses test/test_text.txt and test/test_images/)")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--model", help="zero-shot: open_clip model name instead of a checkpoint")
    p.add_argument("--pretrained", help="zero-shot: open_clip pretrained tag or weights file")
    p.add_argument("--out", type=Path, default=Path("submission.json"))
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--vocabulary", type=Path, help="vehicle_vocabulary.json from prepare, for query routing")
    p.add_argument("--queries", type=Path, help="query file (default DATA/test/test_text.txt)")
    p.add_argument("--gallery", type=Path, help="gallery directory (default DATA/test/test_images)")
    p.add_argument("--index", type=Path, help="a built index of the gallery (traffic-retrieval index): reuse it instead of re-encoding")
    p.add_argument("--contact-sheet", type=Path, metavar="OUT.png", help="also draw the first 20 queries' top results (relevant ones outlined when DATA/ground_truth/test_gt.txt exists)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--strip-vehicle-prefix", action="store_true", help='encode vehicle queries without "A "/"This is a " and the final period')
    p.add_argument("--prompt", action="store_true", help="prompt enhancement: strip vehicle queries and append --prompt-suffix")
    p.add_argument("--prompt-suffix", default=SEED_PROMPT_SUFFIX, help=f"default: {SEED_PROMPT_SUFFIX!r}")
    p.add_argument("--rerank", action="store_true", help="adaption re-ranking of the top candidates")
    p.add_argument("--rerank-candidates", type=int, default=50, help="candidates N re-scored per query (default 50)")
    p.add_argument("--rerank-neighbours", type=int, default=10, help="neighbours k (default 10)")
    p.add_argument("--rerank-adapted-weight", type=float, default=0.5, help="weight of the adapted-query similarity")
    p.add_argument("--rerank-reciprocal-weight", type=float, default=0.5, help="weight of the k-reciprocal evidence")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_predict)

    p = commands.add_parser("evaluate", help="score a submission with the official rule and stricter metrics")
    p.add_argument("--submission", type=Path, required=True)
    p.add_argument("--ground-truth", type=Path, required=True)
    p.add_argument("--gallery", type=Path, help="gallery directory, to reject names not in it (default: names in the ground truth)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_evaluate)

    p = commands.add_parser("augment", help="attribute augmentation: complete vehicle captions with the best-scoring missing fields")
    p.add_argument("--work", type=Path, required=True, help="prepare output directory")
    p.add_argument("--checkpoint", type=Path, help="a traffic-retrieval checkpoint (self-enhancement)")
    p.add_argument("--model", help="zero-shot: open_clip model name")
    p.add_argument("--pretrained", help="zero-shot: open_clip pretrained tag or weights file")
    p.add_argument("--manifest", default="train", help="input manifest name under WORK/manifests (default train)")
    p.add_argument("--out-manifest", default="train_augmented", help="output manifest name (default train_augmented)")
    p.add_argument("--keep-original", action="store_true", help="also keep the original caption as a training pair")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_augment)

    p = commands.add_parser("soup", help="average checkpoints' weights (uniform or greedy on the val split)")
    p.add_argument("--checkpoints", type=Path, nargs="+", required=True)
    p.add_argument("--val", type=Path, help="dataset root whose val split scores the ingredients (needed for greedy)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--method", choices=("greedy", "uniform"), default="greedy")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_soup)

    p = commands.add_parser("ablate", help="train and score the pipeline with each stage of the method added in turn")
    p.add_argument("--data", type=Path, required=True, help="dataset with val labels and ground_truth/test_gt.txt")
    p.add_argument("--out", type=Path, required=True, help="the Markdown report")
    p.add_argument("--work", type=Path, help="working directory (default: next to the report)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20, help="epochs of every training (same budget for every row)")
    p.add_argument("--preset", default="cpu-tiny")
    p.set_defaults(func=_ablate)

    from .index.commands import add_parsers as add_index_parsers

    add_index_parsers(commands)  # index, search
    from .serve.commands import add_parsers as add_serve_parsers

    add_serve_parsers(commands)  # serve

    p = commands.add_parser("demo", help="synth, prepare, train, predict and evaluate end to end on a CPU")
    p.add_argument("--out", type=Path, default=Path("demo_output"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="override the cpu-tiny preset's epochs")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging

    from .errors import TrafficRetrievalError

    args = build_parser().parse_args(argv)
    # open_clip logs a warning for every randomly initialised model; our outputs say what happened.
    logging.basicConfig(level=logging.ERROR)
    try:
        args.func(args)
    except TrafficRetrievalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the file system refused a path the user gave (not a directory, no space, ...)
        path = exc.filename2 or exc.filename  # a failed rename names the destination second
        reason = "exists and is not a directory" if isinstance(exc, FileExistsError) else exc.strerror or exc
        print(f"error: {path}: {reason}" if path else f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return TrafficRetrievalError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())


def console_main() -> None:
    sys.exit(main())
