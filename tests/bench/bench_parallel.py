"""Benchmark: DDP, tensor parallelism and FSDP2 on the same model and global batch, on 2 CPU ranks (gloo), against
one process in the same run: tokens/s and bytes communicated per step. Then the memory calculator's per-rank table
for GPT-2 124M to XL under DDP, ZeRO-1/2/3 and tensor parallelism of degree 2, 4 and 8: the table a reader uses to
pick a strategy for their hardware. Not a test: it prints tables.

    .venv/bin/python tests/bench/bench_parallel.py                 # 5 repeats, the medians
    .venv/bin/python tests/bench/bench_parallel.py --repeats 3 --steps 4 --n-embd 256

Each repeat launches ch04_distributed/compare_demo.py under torchrun with 1 process (the baseline: one device)
and with 2 processes, one thread each, as one GPU per rank would be: the ideal speed-up is 2x. (One process with
two threads is no fair baseline on a shared machine: OpenMP threads that wait for a busy core collapse.)
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shared.model import GPTConfig, num_parameters          # noqa: E402
from shared.parallel.runtime import run_torchrun_json       # noqa: E402
from shared.parallel.sharded import memory_per_rank          # noqa: E402

DEMO = ROOT / "ch04_distributed" / "compare_demo.py"


def throughput_table(args) -> str:
    extra = ["--steps", str(args.steps), "--n-embd", str(args.n_embd), "--n-layer", str(args.n_layer),
             "--batch", str(args.batch), "--seq-len", str(args.seq_len)]
    runs = {1: [], 2: []}
    for _ in range(args.repeats):
        for nproc in (1, 2):
            runs[nproc].append(run_torchrun_json(DEMO, *extra, nproc=nproc, timeout=900, cwd=ROOT))
    first = runs[2][0]
    lines = [f"model: {first['num_params']:,} parameters (n_layer={args.n_layer}, n_embd={args.n_embd}), global batch "
             f"{args.batch} x {args.seq_len} tokens; median of {args.repeats} runs of {args.steps} steps",
             f"{'strategy':9s} {'1 process tok/s':>16s} {'2 ranks tok/s':>14s} {'speed-up':>9s} "
             f"{'bytes/step/rank counted':>26s} {'formula':>26s}"]
    for name in first["strategies"]:
        one = statistics.median(r["strategies"][name]["tokens_per_s"] for r in runs[1])
        two = statistics.median(r["strategies"][name]["tokens_per_s"] for r in runs[2])
        s = first["strategies"][name]
        counted = " + ".join(f"{v:,}" for v in s["bytes_per_step"].values())
        formula = " + ".join(f"{v:,}" for v in s["formula"].values())
        lines.append(f"{name:9s} {one:16,.0f} {two:14,.0f} {two / one:8.2f}x {counted:>26s} {formula:>26s}")
    return "\n".join(lines)


def memory_table(micro_batch: int, seq_len: int) -> str:
    columns = [("ddp", 8), ("zero1", 8), ("zero2", 8), ("zero3", 8), ("tp", 2), ("tp", 4), ("tp", 8)]
    lines = [f"GiB per rank, mixed-precision Adam (16 bytes/param), micro-batch {micro_batch} x {seq_len} tokens, "
             f"activation checkpointing; DDP/ZeRO over 8 ranks ('-': the TP degree does not divide the heads)",
             f"{'model':12s} {'params':>7s} " + " ".join(f"{f'{s}-{n}' if s == 'tp' else s:>8s}" for s, n in columns)]
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        config = GPTConfig.from_preset(name)
        cells = []
        for strategy, n in columns:
            try:
                total = memory_per_rank(config, strategy, n, micro_batch=micro_batch, seq_len=seq_len, checkpoint=True)
                cells.append(f"{total['total'] / 2**30:8.2f}")
            except ValueError:
                cells.append(f"{'-':>8s}")
        lines.append(f"{name:12s} {num_parameters(config) / 1e6:6.0f}M " + " ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--memory-only", action="store_true", help="print only the calculator's table")
    args = parser.parse_args()
    if not args.memory_only:
        print(throughput_table(args))
        print()
    for micro_batch in (1, 8):
        print(memory_table(micro_batch, 1024))
        print()


if __name__ == "__main__":
    main()
