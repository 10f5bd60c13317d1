"""Data parallelism on real ranks: our GPT trained by a torchrun job with each wrapper, checked against
single-process training on the same global batch (chapter 4, notebooks 02 and 03; tests/bench/bench_ddp.py).

    python -m torch.distributed.run --nproc-per-node 2 ch04_distributed/ddp_demo.py --impl bucketed
    python -m torch.distributed.run --nproc-per-node 2 ch04_distributed/ddp_demo.py --impl torch --accum 4
    python ch04_distributed/ddp_demo.py --impl none --no-reference          # one process, for a speed baseline

Every rank builds its own randomly initialised GPT (a different seed per rank) and wraps it: --impl naive
(NaiveDataParallel), bucketed (BucketedDataParallel) or torch (torch.nn.parallel.DistributedDataParallel); the
wrapper's start-up broadcast makes every replica rank 0's model. Each optimizer step takes a global batch of
--batch sequences; rank r trains on its contiguous 1/p of the rows, split into --accum micro-batches (no_sync on all
but the last unless --sync-every-micro-batch). With --reference (default) every rank also trains the same model in
one process on the whole global batch, and rank 0 reports the largest differences in gradients, weights and AdamW
state, the all-reduces counted per step, and the time per step, as JSON (--out FILE or stdout).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from shared.model import GPT, GPTConfig
from shared.parallel.data import (BucketedDataParallel, CommStats, NaiveDataParallel, bucket_layout,
                                  count_ddp_all_reduces)
from shared.parallel.runtime import (add_model_arguments, add_out_argument, distributed, model_config_from_args,
                                     run_torchrun_json, write_result)

IMPLS = ("none", "naive", "bucketed", "torch")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", choices=IMPLS, default="bucketed", help="none: the bare model, one process only")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps")
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of the timing")
    parser.add_argument("--accum", type=int, default=1, help="micro-batches per rank per optimizer step")
    parser.add_argument("--sync-every-micro-batch", action="store_true",
                        help="all-reduce after every micro-batch (no no_sync): the wasteful way, for comparison")
    parser.add_argument("--preset", help="a GPTConfig preset (e.g. laptop); else the small shape below")
    add_model_arguments(parser, batch=8, seq_len=16, n_layer=2, n_head=4, n_embd=32, vocab=64,
                        batch_help="global batch: sequences per optimizer step, all ranks")
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--clip", type=float, default=0.5, help="gradient-norm clipping (below the norm: it clips)")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip the single-process reference (for timing)")
    parser.add_argument("--trace", action="store_true", help="bucketed: record one step's bucket timeline")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    for name in ("steps", "accum", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if not 0 <= args.warmup < args.steps:
        parser.error("--warmup must be at least 0 and less than --steps")
    if args.bucket_cap_mb <= 0:
        parser.error("--bucket-cap-mb must be positive")
    args.config = model_config_from_args(parser, args)
    if args.preset:
        try:
            args.config = GPTConfig.from_preset(args.preset, block_size=args.seq_len)
        except ValueError as e:
            parser.error(str(e))
    return args


def wrap(model, args, ctx):
    """The model with the chosen data-parallel wrapper, and the counter of its gradient all-reduces."""
    if args.impl == "none":
        return model, CommStats()
    if args.impl == "naive":
        wrapped = NaiveDataParallel(model, ctx.group)
    elif args.impl == "bucketed":
        wrapped = BucketedDataParallel(model, ctx.group, bucket_cap_mb=args.bucket_cap_mb, trace=args.trace)
    else:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, process_group=ctx.group,
                                                            bucket_cap_mb=args.bucket_cap_mb)
        return wrapped, count_ddp_all_reduces(wrapped, ctx.group)
    return wrapped, wrapped.stats


def global_batch(step: int, args, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same global batch on every rank (and for the reference): seeded by the step."""
    data = torch.randint(vocab, (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(1000 + step))
    return data[:, :-1], data[:, 1:]


def accumulate(model, micro_batches, args) -> float:
    """Forward, loss and backward per micro-batch, no_sync on all but the last. Returns the step's mean loss."""
    total = 0.0
    for i, (x, y) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        quiet = last or args.sync_every_micro_batch or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if quiet else model.no_sync():
            _, loss = model(x, y)
            (loss / len(micro_batches)).backward()    # equal micro-batches: the mean of means is the mean
        total += loss.item() / len(micro_batches)
    return total


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x.detach() - y.detach()).abs().max().item() for x, y in zip(a, b, strict=True))


def adam_state(model, optimizer) -> list[torch.Tensor]:
    return [optimizer.state[p][k] for p in model.parameters() for k in ("exp_avg", "exp_avg_sq")]


def replicas_identical(model, ctx) -> bool:
    if not ctx.distributed:
        return True
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    copies = [torch.empty_like(flat) for _ in range(ctx.world_size)]
    dist.all_gather(copies, flat, group=ctx.group)
    return all(torch.equal(c, flat) for c in copies)


def run(args, ctx) -> dict:
    torch.set_num_threads(args.threads)
    config = args.config
    p, rank = ctx.world_size, ctx.rank
    if args.batch % (p * args.accum):
        raise ValueError(f"--batch {args.batch} must be a multiple of ranks x --accum = {p} x {args.accum}")
    torch.manual_seed(0)
    reference = GPT(config)                                 # what rank 0 starts from
    torch.manual_seed(0 if rank == 0 else 100 + rank)      # the other ranks start from other weights...
    model, stats = wrap(GPT(config), args, ctx)             # ...until the wrapper broadcasts rank 0's
    started_equal = max_diff(list(model.parameters()), list(reference.parameters())) == 0.0
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    opt_ref = torch.optim.AdamW(reference.parameters(), lr=args.lr, weight_decay=0.1)
    rows = args.batch // p
    result = {"impl": args.impl, "world_size": p, "accum": args.accum, "steps": args.steps,
              "no_sync": not args.sync_every_micro_batch, "started_equal": started_equal,
              "params": sum(q.numel() for q in model.parameters()),
              "tokens_per_step": args.batch * args.seq_len, "calls": [], "bytes": [], "seconds": [],
              "grad_diff": 0.0, "losses": [], "reference_losses": []}
    if hasattr(model, "buckets"):
        result["buckets"] = bucket_layout(model)
    for step in range(args.steps):
        x, y = global_batch(step, args, config.vocab_size)
        mine = x[rank * rows:(rank + 1) * rows], y[rank * rows:(rank + 1) * rows]
        micro = list(zip(mine[0].chunk(args.accum), mine[1].chunk(args.accum)))
        stats.reset()
        if ctx.distributed:
            dist.barrier(group=ctx.group)                   # time the step, not the wait for a slow peer
        start = time.perf_counter()
        if args.trace and step == args.steps - 1:
            result["trace_start"] = start
        opt.zero_grad(set_to_none=True)                     # the explicit step: forward, loss, backward,
        loss = accumulate(model, micro, args)
        if args.reference:                                  # (compared before clipping, which would hide a
            grads = [q.grad.clone() for q in model.parameters()]                # gradient scaled by a constant)
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)          # clip,
        opt.step()                                                              # step
        result["seconds"].append(time.perf_counter() - start)
        result["calls"].append(stats.calls)
        result["bytes"].append(stats.bytes)
        result["losses"].append(loss)
        if args.reference:
            opt_ref.zero_grad(set_to_none=True)
            _, ref_loss = reference(x, y)
            ref_loss.backward()
            result["grad_diff"] = max(result["grad_diff"], max_diff(grads, [q.grad for q in reference.parameters()]))
            torch.nn.utils.clip_grad_norm_(reference.parameters(), args.clip)
            opt_ref.step()
            result["reference_losses"].append(ref_loss.item())
    timed = result["seconds"][args.warmup:]
    result["seconds_per_step"] = statistics.median(timed)
    result["tokens_per_s"] = args.batch * args.seq_len / result["seconds_per_step"]
    if args.reference:
        result["param_diff"] = max_diff(list(model.parameters()), list(reference.parameters()))
        result["adam_state_diff"] = max_diff(adam_state(model, opt), adam_state(reference, opt_ref))
    result["replicas_identical"] = replicas_identical(model, ctx)
    if args.trace and hasattr(model, "timeline"):
        result["timeline"] = model.timeline
        result["bucket_bytes"] = [b.nbytes for b in model.buckets]
    del model, opt                          # before the group goes (BOOK.md pitfalls: exit crash)
    return result


def launch(nproc: int, *args: str, timeout: float = 300) -> dict:
    """Run this script on nproc gloo ranks under torchrun (from a notebook, a test or a benchmark) and return rank
    0's results (shared.parallel.runtime.run_torchrun_json)."""
    return run_torchrun_json(Path(__file__).resolve(), *args, nproc=nproc, timeout=timeout)


@record
def main(argv=None) -> None:
    args = parse_args(argv)
    with distributed("cpu", timeout_s=120) as ctx:
        if args.impl != "none" and not ctx.distributed:
            raise SystemExit(f"--impl {args.impl} needs ranks: run me under torchrun, e.g. python -m "
                             f"torch.distributed.run --nproc-per-node 2 {sys.argv[0]} --impl {args.impl}")
        if args.impl == "none" and ctx.world_size > 1:
            raise SystemExit("--impl none trains one process; run it without torchrun")
        try:
            result = run(args, ctx)
        except ValueError as e:
            raise SystemExit(f"ddp_demo.py: {e}") from None
        if ctx.is_main:
            write_result(result, args.out)


if __name__ == "__main__":
    main()
