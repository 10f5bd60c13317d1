"""Sharded data parallelism on real ranks: our GPT under FSDP2 (`fully_shard`, ZeRO-3) or notebook 06's ZeRO-1
from scratch (--strategy zero1), checked against single-process training, with its memory per rank and its collectives measured, and a DCP checkpoint
(chapter 4, notebook 06).

    python -m torch.distributed.run --nproc-per-node 2 ch04_distributed/fsdp_demo.py --steps 5
    python -m torch.distributed.run --nproc-per-node 2 ch04_distributed/fsdp_demo.py --steps 3 --save runs/dcp
    python -m torch.distributed.run --nproc-per-node 2 ch04_distributed/fsdp_demo.py --steps 2 --resume runs/dcp

Every rank builds the same GPT (same seed), shards it with shared.parallel.sharded.shard_fsdp and trains it on the
same global batch as a single-process copy (each rank takes its slice of the batch). --save writes model and
optimizer as a torch.distributed.checkpoint (DCP) folder, each rank its own shards; --resume loads one and continues.
Rank 0 prints (or writes with --out) the results as JSON; --full-state writes the final unsharded weights
(torch.save) for comparison. On CPU it uses gloo.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from shared.files import atomic_write
from shared.model import GPT
from shared.parallel import sharded
from shared.parallel.comm import CollectiveCounter
from shared.parallel.runtime import (add_model_arguments, add_out_argument, distributed, model_config_from_args,
                                     require_torchrun, write_result)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", choices=("fsdp", "zero1"), default="fsdp",
                        help="fsdp: FSDP2 (ZeRO-3); zero1: notebook 06's ZeRO1AdamW from scratch")
    parser.add_argument("--steps", type=int, default=5, help="AdamW steps")
    add_model_arguments(parser, batch=8, seq_len=32, n_layer=2, n_head=4, n_embd=64, vocab=512,
                        batch_help="global batch (split across the ranks)")
    parser.add_argument("--save", type=Path, help="write a DCP checkpoint (model + optimizer) here at the end")
    parser.add_argument("--resume", type=Path, help="load this DCP checkpoint before training")
    parser.add_argument("--full-state", type=Path, help="rank 0 writes the final unsharded weights here")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be positive")
    args.config = model_config_from_args(parser, args)
    if args.strategy == "zero1" and (args.save or args.resume):
        parser.error("DCP checkpoints (--save, --resume) are for --strategy fsdp")
    return args


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@record
def main(argv=None) -> None:
    args = parse_args(argv)
    require_torchrun("ch04_distributed/fsdp_demo.py")
    with distributed("cpu", timeout_s=120) as ctx:
        if args.batch % ctx.world_size:
            raise SystemExit(f"--batch {args.batch} does not split evenly across {ctx.world_size} ranks")
        result = run(args, ctx)
        if ctx.is_main:
            write_result(result, args.out)


def run(args, ctx) -> dict:
    config = args.config
    torch.manual_seed(0)
    reference = GPT(config)                                   # single-process training, on every rank
    opt_ref = torch.optim.AdamW(reference.parameters(), lr=3e-3, weight_decay=0.1)
    zero1 = args.strategy == "zero1"
    if zero1:       # the whole model on every rank; the optimizer shards its state and does the communication
        model = copy.deepcopy(reference)
        opt = sharded.ZeRO1AdamW(model.parameters(), ctx.group, max_grad_norm=0.5, lr=3e-3, weight_decay=0.1)
    else:
        model = sharded.shard_fsdp(copy.deepcopy(reference))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    if args.resume:
        sharded.load_sharded_checkpoint(args.resume, model, opt)
    # one global batch of random tokens, trained on repeatedly; rank r takes rows r*b .. (r+1)*b - 1
    batch = torch.randint(args.vocab, (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(1))
    x, y = batch[:, :-1], batch[:, 1:]
    b = args.batch // ctx.world_size
    x_local, y_local = x[ctx.rank * b:(ctx.rank + 1) * b], y[ctx.rank * b:(ctx.rank + 1) * b]

    losses, ref_losses, seconds, comm = [], [], [], None
    for step in range(args.steps):
        if not args.resume:
            opt_ref.zero_grad(set_to_none=True)
            _, loss = reference(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
            opt_ref.step()
            ref_losses.append(loss.item())
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with CollectiveCounter() as counter:
            _, loss = model(x_local, y_local)
            loss.backward()                   # FSDP: reduce-scatter averages the gradients over the ranks
            if zero1:
                opt.step()                    # reduce-scatter, clip, update the shard, all-gather
        comm = comm or {"calls": dict(counter.calls), "bytes": dict(counter.bytes)}
        if not zero1:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)     # DTensor gradients: the global norm
            opt.step()
        seconds.append(time.perf_counter() - start)
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss, group=ctx.group)
        losses.append(mean_loss.item() / ctx.world_size)

    measured = sharded.local_state_bytes(model, opt)
    per_rank = [None] * ctx.world_size
    dist.all_gather_object(per_rank, measured, group=ctx.group)
    full = {k: v.detach().clone() for k, v in model.state_dict().items()} if zero1 else \
        sharded.full_model_state_dict(model)
    result = {"strategy": args.strategy, "master_shard_bytes": opt.shard_bytes() if zero1 else None,
              "world_size": ctx.world_size, "steps": args.steps, "losses": losses, "resumed": bool(args.resume),
              "num_params": sum(p.numel() for p in reference.parameters()), "memory_per_rank": per_rank,
              "comm_per_step": comm, "formula": None if zero1 else sharded.fsdp_bytes_per_step(config, ctx.world_size),
              "seconds_per_step": statistics.median(seconds)}
    if not args.resume:
        result.update(reference_losses=ref_losses, trained_diff=max_diff(full, reference.state_dict()))
    if args.save:
        sharded.save_sharded_checkpoint(args.save, model, opt)
    if args.full_state and ctx.is_main:
        atomic_write(args.full_state, lambda tmp: torch.save(full, tmp))
    return result


if __name__ == "__main__":
    main()
