"""Benchmark: full fine-tuning vs LoRA, peak memory and training tokens/s, in one run.

Each configuration runs in a fresh process, so its peak resident memory (ru_maxrss) is its own: weights,
gradients, AdamW moments, activations and the Python/PyTorch baseline every process pays. A third process only
runs forward passes without gradients, for that baseline (its speed is not a training speed: not shown). Tokens/s is the median of `--repeats` timed optimizer
steps after one warm-up step. Numbers vary with the machine and its load; compare the rows of one run.

    python tests/bench/bench_lora.py [--preset laptop] [--batch-size 4] [--block-size 128] [--rank 8] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

MODES = ("inference only", "full fine-tuning", "LoRA")


def run_one(mode: str, args) -> dict:
    """One configuration, in this process: build, warm up, time `repeats` steps, report peak memory."""
    import torch
    from shared.lora import apply_lora, count_parameters
    from shared.model import GPT, GPTConfig
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = GPT(GPTConfig.from_preset(args.preset, block_size=args.block_size)).to(device)
    if mode == "LoRA":
        apply_lora(model, rank=args.rank, alpha=2 * args.rank, targets=tuple(args.targets))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4) if mode != "inference only" else None
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.block_size + 1), device=device)

    def step():
        if optimizer is None:
            with torch.no_grad():
                model(ids[:, :-1], ids[:, 1:])
            return
        _, loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = []
    for i in range(args.repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:                                        # the first step warms up (allocations, kernels)
            times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"mode": mode, "trainable": count_parameters(model)[0], "total": count_parameters(model)[1],
            "peak_bytes": peak, "tokens_per_s": args.batch_size * args.block_size / statistics.median(times)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="laptop")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", nargs="+", default=["attn.c_attn", "attn.c_proj"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child, args)))
        return 0
    rows = []
    for mode in MODES:
        child = subprocess.run([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                                "--child", mode], capture_output=True, text=True, timeout=600)
        if child.returncode != 0:
            print(f"{mode}: failed\n{child.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    memory = "peak GPU memory" if args.device.startswith("cuda") else "peak RSS"
    print(f"{args.preset}, batch {args.batch_size} x {args.block_size} tokens, LoRA rank {args.rank} on "
          f"{' '.join(args.targets)}, {args.device}, {args.threads} thread(s), median of {args.repeats} steps")
    print(f"{'':18s} {'trainable':>11s} {memory + ' MB':>17s} {'over inference MB':>18s} {'tokens/s':>9s}")
    base = rows[0]["peak_bytes"]
    for r in rows:
        print(f"{r['mode']:18s} {r['trainable'] if r['mode'] != 'inference only' else 0:11,d} "
              f"{r['peak_bytes'] / 1e6:17.1f} {(r['peak_bytes'] - base) / 1e6:18.1f} "
              f"{'-' if r['mode'] == 'inference only' else format(r['tokens_per_s'], ',.0f'):>9s}")
    full, lora = rows[1], rows[2]
    print(f"LoRA / full: memory over inference {(lora['peak_bytes'] - base) / max(full['peak_bytes'] - base, 1):.2f}x,"
          f" tokens/s {lora['tokens_per_s'] / full['tokens_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
