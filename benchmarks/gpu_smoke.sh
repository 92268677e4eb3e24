#!/usr/bin/env bash
# GPU smoke check for a lent CUDA machine (at most ~5 minutes), run from anywhere:
#
#   bash benchmarks/gpu_smoke.sh            # on the GPU machine
#   bash benchmarks/gpu_smoke.sh --dry-run  # the same steps on this CPU, tiny sizes, no CUDA, precision auto (bf16 only where the CPU has it)
#
# Checks, one summary line each, exit status 1 if any failed:
#   env       torch sees CUDA and bf16
#   synth     a small synthetic dataset (traffic-retrieval synth) and prepare
#   train     traffic-retrieval train --model ViT-B-32 (random init) --device cuda --precision bf16, 1 epoch, batch 128
#   encode    gallery encoding throughput on CUDA (encode_image_files, bf16 autocast)
#   predict   predict + evaluate end to end on CUDA
#   torchrun  python -m torch.distributed.run --standalone --nproc_per_node N -m traffic_retrieval train ... --device cuda
#             (N=1 on the GPU machine, N=2 on CPU/gloo for the dry run; under torchrun the trainer always
#              joins a process group and wraps the model in DDP, and the check fails if train.log says otherwise)
# Results: benchmarks/results/gpu_smoke.json (gpu_smoke_dry_run.json for --dry-run), copied into $OUT when set.
# Environment: GPU_SMOKE_MODEL (default ViT-B-32), GPU_SMOKE_WORK (scratch folder, default a new temp dir),
#              GPU_SMOKE_BUDGET (seconds for all checks, default 285, 900 for --dry-run; each step also has its own limit).
set -uo pipefail

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "error: unknown argument $arg (use --dry-run or nothing)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${GPU_SMOKE_MODEL:-ViT-B-32}"
WORK="${GPU_SMOKE_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-smoke.XXXXXX")}"
mkdir -p "$WORK" benchmarks/results
RESULTS="$WORK/checks.jsonl"
: > "$RESULTS"

if [[ $DRY_RUN == 1 ]]; then
    MODE=dry-run DEVICE=cpu PRECISION=auto BATCH=16 NPROC=2 ENCODE_BATCH=32 WORKERS=2 STEP_TIMEOUT=300
    SIZES=(--train-pedestrians 32 --train-vehicles 16 --val-pedestrians 8 --val-vehicles 4 --test-pedestrians 32 --test-vehicles 16)
    OUT_JSON=benchmarks/results/gpu_smoke_dry_run.json
else
    MODE=gpu DEVICE=cuda PRECISION=bf16 BATCH=128 NPROC=1 ENCODE_BATCH=256 WORKERS=8 STEP_TIMEOUT=150
    SIZES=(--train-pedestrians 1024 --train-vehicles 512 --val-pedestrians 64 --val-vehicles 32 --test-pedestrians 1024 --test-vehicles 512)
    OUT_JSON=benchmarks/results/gpu_smoke.json
fi

# --- python: the project's .venv, else a fresh venv over the machine's own python (its torch) ---
if [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch, open_clip, traffic_retrieval" 2>/dev/null; then
    PY="$ROOT/.venv/bin/python"
else
    VENV="$WORK/venv"
    python3 -m venv --system-site-packages "$VENV"
    # GPU machines may be offline: first use what the machine's python has (its CUDA torch),
    # then pip without dependency resolution, then plain pip (a machine with a registry)
    PIP=(timeout 240 "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    if "${PIP[@]}" --no-index --no-build-isolation -e . >"$WORK/pip.log" 2>&1 \
        || "${PIP[@]}" --no-index --no-build-isolation --no-deps -e . >>"$WORK/pip.log" 2>&1 \
        || "${PIP[@]}" -e . >>"$WORK/pip.log" 2>&1; then
        PY="$VENV/bin/python"
    else  # the package is pure python: run it from the source tree with the machine's python
        echo "note: pip install -e . failed ($(tail -1 "$WORK/pip.log")); using python3 with PYTHONPATH=$ROOT"
        PY="$(command -v python3)"
        export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
export PYTHONUNBUFFERED=1

FAILED=0
TOTAL_BUDGET="${GPU_SMOKE_BUDGET:-$([[ $DRY_RUN == 1 ]] && echo 900 || echo 285)}"  # seconds for all checks together (the install above not counted)
DEADLINE=$(( SECONDS + TOTAL_BUDGET ))
# check NAME DETAIL_SOURCE COMMAND...: run COMMAND with a timeout, log it, record and print one line.
# DETAIL_SOURCE "last" takes the command's last output line as the detail, anything else is literal.
check() {
    local name="$1" detail_source="$2"; shift 2
    local log="$WORK/$name.log" started ended rc detail status
    local limit=$(( DEADLINE - SECONDS < STEP_TIMEOUT ? DEADLINE - SECONDS : STEP_TIMEOUT ))
    started=$(date +%s.%N)
    if (( limit >= 5 )); then timeout "$limit" "$@" >"$log" 2>&1; rc=$?; else echo "the ${TOTAL_BUDGET}s budget is spent" >"$log"; rc=124; fi
    ended=$(date +%s.%N)
    if [[ $detail_source == last ]]; then detail="$(grep -v '^\s*$' "$log" | tail -1)"; else detail="$detail_source"; fi
    if [[ $rc == 0 ]]; then status=PASS; else
        status=FAIL; FAILED=1
        [[ $rc == 124 ]] && detail="timed out after ${limit}s (step limit ${STEP_TIMEOUT}s, total ${TOTAL_BUDGET}s)" || detail="exit $rc: $( { grep -m1 -E '^(error|[A-Za-z.]*Error):' "$log" || grep -v '^\s*$' "$log" | tail -1; } | cut -c1-300)"
    fi
    local seconds; seconds=$(awk -v a="$started" -v b="$ended" 'BEGIN{printf "%.1f", b-a}')
    printf '%-5s %-13s %6ss  %s\n' "$status" "$name" "$seconds" "$detail"
    "$PY" -c 'import json,sys; print(json.dumps(dict(zip(["name","status","seconds","detail","log"], [sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]]))))' \
        "$name" "$status" "$seconds" "$detail" "$log" >>"$RESULTS"
    return $rc
}

echo "gpu_smoke ($MODE): model $MODEL, device $DEVICE, work $WORK"
check env last "$PY" benchmarks/_gpu_smoke_checks.py env --device "$DEVICE"
DATA="$WORK/data" PREP="$WORK/work"
check synth "synth + prepare: ${SIZES[*]}" bash -c '"$0" -m traffic_retrieval synth --out "$1" --seed 0 --workers 4 "${@:3}" && "$0" -m traffic_retrieval prepare --data "$1" --work "$2"' \
    "$PY" "$DATA" "$PREP" "${SIZES[@]}"
TRAIN_FLAGS=(--work "$PREP" --model "$MODEL" --device "$DEVICE" --precision "$PRECISION" --epochs 1 --batch-size "$BATCH" --warmup 2 --workers "$WORKERS" --no-progress)
if check train-run "trained" "$PY" -m traffic_retrieval train --out "$WORK/run" "${TRAIN_FLAGS[@]}"; then
    check train last "$PY" benchmarks/_gpu_smoke_checks.py train-summary "$WORK/run"
    check encode last "$PY" benchmarks/_gpu_smoke_checks.py encode --checkpoint "$WORK/run/checkpoints/final.pt" --gallery "$DATA/test/test_images" \
        --device "$DEVICE" --batch-size "$ENCODE_BATCH" --workers "$WORKERS"
    check predict last bash -c '"$0" -m traffic_retrieval predict --data "$1" --checkpoint "$2" --out "$3/submission.json" --device "$4" --no-progress >/dev/null && "$0" -m traffic_retrieval evaluate --submission "$3/submission.json" --ground-truth "$1/ground_truth/test_gt.txt" --json >"$3/evaluation.json" && "$0" benchmarks/_gpu_smoke_checks.py evaluation "$3/evaluation.json"' \
        "$PY" "$DATA" "$WORK/run/checkpoints/final.pt" "$WORK" "$DEVICE"
fi
if check torchrun-run "launched" "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m traffic_retrieval train --out "$WORK/run-torchrun" "${TRAIN_FLAGS[@]}"; then
    check torchrun last "$PY" benchmarks/_gpu_smoke_checks.py train-summary --expect-ddp "$WORK/run-torchrun"
fi

"$PY" benchmarks/_gpu_smoke_checks.py report --results "$RESULTS" --out "$OUT_JSON" --mode "$MODE" ${OUT:+--copy-to "$OUT"}
[[ -n "${OUT:-}" ]] && cp "$WORK"/*.log "$OUT/" 2>/dev/null
if [[ $FAILED == 0 ]]; then echo "gpu_smoke ($MODE): all checks passed; wrote $OUT_JSON"; else echo "gpu_smoke ($MODE): FAILED (logs in $WORK); wrote $OUT_JSON"; fi
exit $FAILED
