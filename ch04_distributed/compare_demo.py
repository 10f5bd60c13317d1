"""DDP, tensor parallelism and FSDP side by side on the same model and global batch, on real ranks: bytes
communicated per step (counted on the run, next to the formula), each rank's memory for weights, gradients and
Adam (measured, next to the calculator), tokens/s, and the loss against single-process training
(chapter 4, notebook 07; tests/bench/bench_parallel.py).

    python -m torch.distributed.run --nproc-per-node 2 ch04_distributed/compare_demo.py --steps 8

DDP and FSDP give each rank 1/N of the global batch; tensor parallelism gives every rank all of it and splits the
layers. With one process (--nproc-per-node 1) every strategy degenerates to plain training: the baseline.
Rank 0 prints (or writes with --out) the results as JSON. On CPU it uses gloo.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel

from shared.model import GPT, GPTConfig, num_parameters
from shared.parallel import sharded, tensor
from shared.parallel.comm import CollectiveCounter
from shared.parallel.data import count_ddp_all_reduces
from shared.parallel.runtime import (add_model_arguments, add_out_argument, distributed, model_config_from_args,
                                     require_torchrun, write_result)

STRATEGIES = ("ddp", "tp", "fsdp")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--steps", type=int, default=8, help="timed AdamW steps per strategy (after 2 warm-up steps)")
    add_model_arguments(parser, batch=8, seq_len=64, n_layer=4, n_head=4, n_embd=128, vocab=2048)
    add_out_argument(parser)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be positive")
    args.config = model_config_from_args(parser, args)
    return args


def check(args, world_size: int) -> None:
    """Everything that can be impossible, before any process starts work: one line, then exit."""
    if args.batch % world_size:
        raise SystemExit(f"compare_demo.py: --batch {args.batch} does not split across {world_size} ranks")
    if "tp" in args.strategies:
        try:
            tensor.check_tensor_parallel_degree(args.config, world_size)
        except ValueError as e:
            raise SystemExit(f"compare_demo.py: {e}") from None


def build(strategy: str, config: GPTConfig, ctx):
    """The model wrapped for `strategy`, its optimizer, and a function returning the bytes counted so far."""
    torch.manual_seed(0)
    model = GPT(config)
    if strategy == "ddp":
        model = DistributedDataParallel(model, process_group=ctx.group)
        stats = count_ddp_all_reduces(model, ctx.group)     # a comm hook: DDP's all-reduces happen in C++
        counted = lambda counter: {"all_reduce": stats.bytes}
    elif strategy == "tp":
        model = tensor.apply_tensor_parallel(model, ctx.group)
        counted = lambda counter: dict(counter.bytes)
    else:
        model = sharded.shard_fsdp(model)
        counted = lambda counter: dict(counter.bytes)
    return model, torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1), counted


def formula(strategy: str, config: GPTConfig, args, world_size: int) -> dict:
    if world_size == 1 and strategy != "ddp":   # nothing to exchange (DDP still all-reduces, with itself)
        return {}
    if strategy == "ddp":                 # every gradient, once, in fp32
        return {"all_reduce": num_parameters(config) * 4}
    if strategy == "tp":
        return {"all_reduce": tensor.tensor_parallel_bytes_per_step(config, args.batch, args.seq_len)["bytes_step"]}
    return sharded.fsdp_bytes_per_step(config, world_size)


def run_strategy(strategy: str, config: GPTConfig, args, ctx, x, y) -> dict:
    model, opt, counted = build(strategy, config, ctx)
    if strategy != "tp":                  # data parallel: this rank's slice of the global batch
        b = args.batch // ctx.world_size
        x, y = x[ctx.rank * b:(ctx.rank + 1) * b], y[ctx.rank * b:(ctx.rank + 1) * b]
    losses, seconds, step_bytes = [], [], None
    for step in range(2 + args.steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with CollectiveCounter() as counter:
            _, loss = model(x, y)
            loss.backward()
        opt.step()
        if step >= 2:
            seconds.append(time.perf_counter() - start)
        if step == 0:
            step_bytes = {k: v for k, v in counted(counter).items() if v}
        mean = loss.detach().clone()
        dist.all_reduce(mean, group=ctx.group)
        losses.append(mean.item() / ctx.world_size)
    memory = sharded.local_state_bytes(model, opt)
    calc_name = {"ddp": "ddp", "tp": "tp", "fsdp": "zero3"}[strategy]
    result = {"losses": losses, "bytes_per_step": step_bytes, "formula": formula(strategy, config, args, ctx.world_size),
              "memory": memory, "calculator": sharded.model_state_bytes(config, calc_name, ctx.world_size, "fp32"),
              "seconds_per_step": statistics.median(seconds),
              "tokens_per_s": args.batch * args.seq_len / statistics.median(seconds)}
    del model, opt
    return result


@record
def main(argv=None) -> None:
    args = parse_args(argv)
    require_torchrun("ch04_distributed/compare_demo.py")
    check(args, int(os.environ["WORLD_SIZE"]))
    with distributed("cpu", timeout_s=120) as ctx:
        config = args.config
        batch = torch.randint(args.vocab, (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(1))
        x, y = batch[:, :-1], batch[:, 1:]
        results = {"world_size": ctx.world_size, "num_params": num_parameters(config), "batch": args.batch,
                   "seq_len": args.seq_len, "threads": torch.get_num_threads(), "strategies": {}}
        for strategy in args.strategies:
            results["strategies"][strategy] = run_strategy(strategy, config, args, ctx, x, y)
        if ctx.is_main:
            write_result(results, args.out)


if __name__ == "__main__":
    main()
