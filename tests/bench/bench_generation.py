"""Benchmark: generation speed with and without the KV cache (shared.generation, shared.model.KVCache).

The baseline is uncached generation measured in the same run: every step runs the model over the whole sequence
so far (only the last position goes through the output head, as in nanoGPT). Both start from the same one-token
prompt, decode greedily and must produce identical tokens (checked). Goal from the chapter issue: the cache is at
least 3x faster at 1,024 new tokens for the laptop preset on a CPU.

    python tests/bench/bench_generation.py
    python tests/bench/bench_generation.py --device cuda --preset gpt2 --new-tokens 128 512 1023
"""
from __future__ import annotations

import argparse
import time

import torch

from shared.device import pick_device
from shared.generation import generate
from shared.model import GPT, PRESETS, GPTConfig


def timed_generate(model, idx, n, use_cache, device) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = generate(model, idx, n, temperature=0, use_cache=use_cache)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", default="laptop", choices=list(PRESETS))
    p.add_argument("--new-tokens", nargs="+", type=int, default=[128, 512, 1024])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    config = GPTConfig.from_preset(args.preset)
    if max(args.new_tokens) > config.block_size:
        raise SystemExit(f"--new-tokens up to block_size={config.block_size} (1-token prompt + n - 1 model positions)")
    torch.manual_seed(0)
    model = GPT(config).to(device).eval()        # speed does not depend on the weights: random init
    idx = torch.tensor([[50256 % config.vocab_size]], device=device)    # <|endoftext|>
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"bench_generation: preset {args.preset} ({model.num_params() / 1e6:.1f}M parameters, "
          f"block_size {config.block_size}), batch 1, greedy, {device} ({where}), torch {torch.__version__}")
    timed_generate(model, idx, 16, True, device)              # warm-up
    timed_generate(model, idx, 16, False, device)
    header = (f"{'new tokens':>10s} {'cached s':>9s} {'tokens/s':>9s} {'uncached s':>11s} {'tokens/s':>9s} "
              f"{'speed-up':>9s} {'same tokens':>12s}")
    print(header)
    print("-" * len(header))
    for n in args.new_tokens:
        cached, t_cached = timed_generate(model, idx, n, True, device)
        uncached, t_uncached = timed_generate(model, idx, n, False, device)
        print(f"{n:10d} {t_cached:9.2f} {n / t_cached:9.1f} {t_uncached:11.2f} {n / t_uncached:9.1f} "
              f"{t_uncached / t_cached:8.1f}x {str(torch.equal(cached, uncached)):>12s}", flush=True)


if __name__ == "__main__":
    main()
