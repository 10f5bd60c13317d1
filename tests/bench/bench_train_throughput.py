"""Benchmark: training tokens/s and MFU — a bare forward/backward/step loop beside the book's training loop.

Both variants train the same GPT on the same random tokens with the same optimizer (shared.training.make_optimizer:
AdamW, decay/no-decay groups, fused on CUDA), gradient clipping, bf16 autocast where asked and optional
torch.compile. `bare` is the least a training step can do; `loop` is shared.training.train (schedule, logging,
accumulation bookkeeping, progress bar off). The table gives each variant's median tokens/s over the timed steps
(after warm-up steps, which include compilation), MFU where the GPU's peak is known, and the loop's overhead against
bare measured in the same run. The baseline is `bare`.

    python tests/bench/bench_train_throughput.py --threads 2 --vocab-size 256     # CPU: tiny preset, small head
    python tests/bench/bench_train_throughput.py --device cuda --preset gpt2 --micro-batch 16 --seq-len 1024 --compile
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from shared.device import pick_device
from shared.model import GPT, PRESETS, GPTConfig
from shared.training import (TrainConfig, autocast_for, flops_per_token, make_optimizer, mfu, peak_flops, train)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare(config: TrainConfig, gpt_config: GPTConfig, tokens: np.ndarray, device: torch.device) -> list[float]:
    """Seconds per optimizer step of the plainest loop: forward, backward, clip, AdamW step."""
    torch.manual_seed(config.seed)
    model = GPT(gpt_config).to(device)
    optimizer = make_optimizer(model, config, device)
    step_model = torch.compile(model) if config.compile else model
    autocast = autocast_for(device, config.dtype)
    B, T = config.micro_batch_size, gpt_config.block_size
    data = torch.from_numpy(tokens.astype(np.int64))
    times = []
    for step in range(config.steps):
        start = time.perf_counter()
        offset = (step * B * T) % (len(data) - B * T - 1)
        chunk = data[offset:offset + B * T + 1]
        x, y = chunk[:-1].view(B, T).to(device), chunk[1:].view(B, T).to(device)
        with autocast():
            _, loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()                                  # the loop reads its loss every step too
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def loop(config: TrainConfig, tokens: np.ndarray) -> list[float]:
    run = train(config, train_tokens=[tokens])
    return [r["seconds"] for r in run.history if r["kind"] == "train"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS))
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=None, help="default: the preset's block size")
    p.add_argument("--vocab-size", type=int, default=50257,
                   help="V (50257: GPT-2; 50304 = 50257 padded to a multiple of 64, faster on GPUs)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first (compilation, allocator)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--variants", nargs="+", default=["bare", "loop"], choices=["bare", "loop"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    T = args.seq_len or PRESETS[args.preset].block_size
    total = args.warmup_steps + args.steps
    config = TrainConfig(model=args.preset, block_size=T, vocab_size=args.vocab_size, batch_size=args.micro_batch,
                         micro_batch_size=args.micro_batch, steps=total, warmup_steps=min(10, total),
                         dtype=args.dtype, compile=args.compile, device=str(device), eval_every=0, progress=False)
    gpt_config = GPTConfig.from_preset(args.preset, block_size=T, vocab_size=args.vocab_size)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, args.vocab_size, size=(total + 2) * args.micro_batch * (T + 1), dtype=np.int64)
    peak = peak_flops(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"bench_train_throughput: preset {args.preset}, N = "
          f"{GPT(gpt_config).num_params():,} parameters, {flops_per_token(gpt_config) / 1e9:.3f} GFLOP/token, "
          f"B={args.micro_batch} T={T} V={args.vocab_size}, dtype {args.dtype}, compile {args.compile}, {where}, "
          f"torch {torch.__version__}; median of {args.steps} steps after {args.warmup_steps} warm-up steps")
    rows = {}
    for variant in args.variants:
        seconds = bare(config, gpt_config, tokens, device) if variant == "bare" else loop(config, tokens)
        median = statistics.median(seconds[args.warmup_steps:])
        rows[variant] = (median, args.micro_batch * T / median)
    base = rows.get("bare", next(iter(rows.values())))[1]
    print(f"\n| variant | ms/step | tokens/s | MFU | × bare tokens/s |\n|---|---:|---:|---:|---:|")
    for variant, (median, tps) in rows.items():
        utilisation = mfu(tps, gpt_config, peak)
        print(f"| {variant} | {median * 1e3:.1f} | {tps:,.0f} | "
              f"{'n/a' if utilisation is None else f'{utilisation:.1%}'} | {tps / base:.3f} |")
    if peak is None:
        print("\nMFU: n/a (no peak FLOP/s for this device: CPU, or a GPU not in shared.training.PEAK_BF16_FLOPS)")


if __name__ == "__main__":
    main()
