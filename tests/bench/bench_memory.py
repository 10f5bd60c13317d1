"""Benchmark: activation memory and forward+backward time of the GPT per configuration and sequence length.

Configurations (shared.memory.FORWARD_CONFIGS): naive attention, fused SDPA, SDPA under bf16 autocast, SDPA with
activation checkpointing, and both. The baseline is the `naive` configuration, measured in the same run; every row
shows its ratio to naive at the same sequence length. Memory: the bytes autograd saves for backward (exact, any
device) and, on CUDA, the allocator's peak above the weights (torch.cuda.max_memory_allocated). Time: median of
--repeats steps after a warm-up (torch.cuda.synchronize around each step on CUDA).

    python tests/bench/bench_memory.py --threads 1                     # CPU: laptop blocks, vocabulary 256
    python tests/bench/bench_memory.py --device cuda --preset gpt2 --vocab-size 50257 --batch 8
"""
from __future__ import annotations

import argparse
import time

import torch

from shared.device import pick_device
from shared.memory import FORWARD_CONFIGS, measure_forward_backward
from shared.model import PRESETS, GPTConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", default="laptop", choices=list(PRESETS))
    p.add_argument("--vocab-size", type=int, default=256,
                   help="256 keeps the output head small so that the blocks dominate; 50257 for GPT-2's")
    p.add_argument("--seq-lens", nargs="+", type=int, default=[128, 256, 512, 1024])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--configs", nargs="+", default=list(FORWARD_CONFIGS), choices=list(FORWARD_CONFIGS))
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads on CPU (1 gives stable timings on a busy machine)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if "naive" not in args.configs:
        args.configs = ["naive"] + args.configs          # the baseline
    device = pick_device(args.device)
    config = GPTConfig.from_preset(args.preset, vocab_size=args.vocab_size,
                                   block_size=max(max(args.seq_lens), PRESETS[args.preset].block_size))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"bench_memory: preset {args.preset} (n_layer={config.n_layer}, n_head={config.n_head}, "
          f"n_embd={config.n_embd}), vocab {config.vocab_size}, batch {args.batch}, {device} ({where}), "
          f"torch {torch.__version__}, median of {args.repeats}")
    start = time.perf_counter()
    results = {(c, s): measure_forward_backward(config, c, s, args.batch, device, args.repeats)
               for s in args.seq_lens for c in args.configs}
    cuda = device.type == "cuda"
    header = f"{'configuration':22s} {'seq':>5s} {'saved MiB':>10s} {'x naive':>8s}"
    header += f" {'peak MiB':>9s} {'x naive':>8s}" if cuda else ""
    header += f" {'fwd+bwd ms':>11s} {'x naive':>8s} {'tokens/s':>9s}"
    print(header)
    print("-" * len(header))
    for s in args.seq_lens:
        base = results[("naive", s)]
        for c in args.configs:
            r = results[(c, s)]
            line = f"{c:22s} {s:5d} {r['saved_bytes'] / 2**20:10.2f} {r['saved_bytes'] / base['saved_bytes']:8.2f}"
            if cuda:
                line += f" {r['peak_bytes'] / 2**20:9.1f} {r['peak_bytes'] / base['peak_bytes']:8.2f}"
            line += (f" {r['seconds'] * 1e3:11.1f} {r['seconds'] / base['seconds']:8.2f}"
                     f" {args.batch * s / r['seconds']:9.0f}")
            print(line)
    print(f"(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
