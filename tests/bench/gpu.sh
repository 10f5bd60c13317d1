#!/usr/bin/env bash
# Every GPU measurement the book reports, in one call of under 8 minutes, written to one results file.
#
#   bash tests/bench/gpu.sh [OUT_DIR]        # default OUT_DIR: $OUT (the device tool's folder) or runs/gpu
#
# 1. chapter 3's memory/time table on CUDA (GPT-2 124M shapes, batch 8), ratios against naive attention;
# 2. GPT-2 124M training throughput: tokens/s and MFU with bf16 autocast, fused attention (SDPA) and torch.compile,
#    the bare step beside the book's training loop (shared.training) in the same run;
# 3. evaluation throughput (chapter 5);
# 4. full fine-tuning vs LoRA: peak GPU memory and tokens/s (chapter 5's notebook 06), GPT-2 124M shapes.
# Each step has its own time limit, so one slow step cannot eat the others' time. Uses the machine's python3 (a GPU
# box's own PyTorch) with the repo on PYTHONPATH; set PYTHON to use another interpreter.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${1:-${OUT:-runs/gpu}}
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/gpu_results.md"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 LLM_BOOK_OFFLINE=1

step() {   # step SECONDS TITLE COMMAND...: run one measurement, append its output (or its failure) to the results
    local limit=$1 title=$2; shift 2
    echo "## $title" >> "$RESULTS"; echo '```' >> "$RESULTS"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$RESULTS"
    local rc=${PIPESTATUS[0]}
    echo '```' >> "$RESULTS"
    echo "(exit $rc, $((SECONDS - start)) s)" >> "$RESULTS"; echo >> "$RESULTS"
}

{
    echo "# GPU results ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "nvidia-smi: not available"
    "$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '| device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
    echo '```'; echo
} > "$RESULTS"

step 100 "Chapter 3: activation memory and time per forward configuration (GPT-2 124M, batch 8)" \
    "$PY" tests/bench/bench_memory.py --device cuda --preset gpt2 --vocab-size 50257 --batch 8 \
    --seq-lens 256 512 1024 --repeats 5
step 240 "Chapter 4: GPT-2 124M training throughput and MFU (bf16, SDPA, torch.compile)" \
    "$PY" tests/bench/bench_train_throughput.py --device cuda --preset gpt2 --vocab-size 50304 --micro-batch 16 --seq-len 1024 \
    --steps 60 --warmup-steps 15 --compile --variants bare loop
if [ -f tests/bench/bench_eval_throughput.py ]; then
    step 80 "Chapter 5: evaluation throughput" "$PY" tests/bench/bench_eval_throughput.py --device cuda
else
    echo "## Chapter 5: evaluation throughput"$'\n'"not measured: tests/bench/bench_eval_throughput.py does not exist yet"$'\n' >> "$RESULTS"
fi
step 50 "Chapter 5: full fine-tuning vs LoRA (GPT-2 124M shapes, rank 8)" \
    "$PY" tests/bench/bench_lora.py --device cuda --preset gpt2 --batch-size 8 --block-size 1024
echo "results: $RESULTS"
