"""Chapter 4's training script: train a GPT on chapter 2's token shards, in one process or under torchrun.

    python ch04_distributed/train.py --data runs/data/shakespeare-gpt2 --out-dir runs/train          # laptop
    python -m torch.distributed.run --nproc-per-node 2 ch04_distributed/train.py --data ... --out-dir ...   # 2 CPU ranks
    torchrun --nproc-per-node 8 ch04_distributed/train.py --preset gpt2-124m-8gpu --data DATA --out-dir OUT
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id JOB \\
        ch04_distributed/train.py --preset gpt2-124m-8gpu --data DATA --out-dir OUT    # on each of 2 nodes
    ... --resume                                        # continue the run in --out-dir from its latest checkpoint

--preset picks a TrainConfig (shared.training.TRAIN_PRESETS: tiny-cpu, laptop-cpu, gpt2-124m-1gpu,
gpt2-124m-8gpu); every field has a flag that overrides it (--steps, --lr, --micro-batch-size, --compile, ...).
Rank 0 writes OUT/log.jsonl (one JSON record per step and per evaluation) and the checkpoints OUT/ckpt_*.pt with
OUT/latest.json. A rank that dies ends the whole job (torchrun stops the others; the survivors' collectives fail
within --dist-timeout seconds at most), never a hang. The library lives in shared/training.py and
shared/checkpoint.py (chapter 4, notebook 01); this file only parses arguments and sets up the ranks.
"""
from __future__ import annotations

import argparse
import os
import sys

from torch.distributed.elastic.multiprocessing.errors import record

STRATEGIES = ("single", "ddp", "ddp_naive", "ddp_bucketed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from shared.training import TRAIN_PRESETS, TrainConfig
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny-cpu", choices=list(TRAIN_PRESETS),
                   help="starting values of every TrainConfig field (default: tiny-cpu)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out-dir from latest.json (a fresh start if there is none yet)")
    p.add_argument("--strategy", default=None, choices=STRATEGIES,
                   help="data parallelism: torch's DistributedDataParallel (ddp, the default under torchrun), "
                        "notebook 03's from-scratch versions (ddp_naive, ddp_bucketed), or single (one process)")
    p.add_argument("--bucket-cap-mb", type=float, default=25.0, help="bucket size of --strategy ddp_bucketed")
    p.add_argument("--dist-timeout", type=float, default=300.0,
                   help="seconds a rank waits for the others in a collective before the job fails (default 300)")
    TrainConfig.add_arguments(p.add_argument_group("training config (override the preset)"))
    return p.parse_args(argv)


def make_wrap(strategy: str, ctx, bucket_cap_mb: float):
    """model -> its data-parallel wrapper for this strategy (None: train the bare model)."""
    if strategy == "single":
        return None
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return lambda model: DistributedDataParallel(model, device_ids=ids, process_group=ctx.group)
    from shared.parallel.data import BucketedDataParallel, NaiveDataParallel
    if strategy == "ddp_naive":
        return lambda model: NaiveDataParallel(model, ctx.group)
    return lambda model: BucketedDataParallel(model, ctx.group, bucket_cap_mb=bucket_cap_mb)


def preflight(args, world_size: int):
    """Everything that can be checked before any process group starts: the config, the strategy, the data and
    the output folder. Returns (config, strategy); raises ValueError with one line."""
    from pathlib import Path

    from shared.batches import read_manifest
    from shared.training import ConfigError, TrainConfig
    config = TrainConfig.from_args(args, args.preset, world_size)
    strategy = args.strategy or ("ddp" if world_size > 1 else "single")
    if strategy != "single" and world_size == 1:
        raise ConfigError(f"--strategy {strategy} needs several ranks: launch with torchrun --nproc-per-node N")
    if strategy == "single" and world_size > 1:
        raise ConfigError(f"--strategy single under torchrun with {world_size} ranks would train {world_size} "
                          f"unrelated models: use ddp, ddp_naive or ddp_bucketed")
    if config.data is None:
        raise ConfigError("--data is required: a folder written by ch02_data/prepare_data.py")
    read_manifest(config.data)
    if config.out_dir and (Path(config.out_dir) / "latest.json").exists() and not args.resume:
        raise ConfigError(f"--out-dir {config.out_dir} already holds a run: add --resume to continue it, or "
                          f"choose another --out-dir")
    return config, strategy


@record
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        config, strategy = preflight(args, world_size)
    except ValueError as e:                  # ConfigError, ShardError, CheckpointError: one line, no traceback
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        return 2

    from shared.parallel.runtime import init_distributed, shutdown_distributed
    from shared.training import train
    from shared.files import FileFormatError
    try:
        ctx = init_distributed(config.device, timeout_s=args.dist_timeout)
    except ValueError as e:                  # e.g. --device cuda on a machine without CUDA
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        try:
            run = train(config, ctx=ctx, wrap=make_wrap(strategy, ctx, args.bucket_cap_mb), resume=args.resume)
        except FileFormatError as e:         # --resume from a checkpoint of another model or run (every rank)
            if ctx.is_main:
                print(f"error: {e}", file=sys.stderr)
            return 2
        if ctx.is_main:
            last = next(r for r in reversed(run.history) if r["kind"] == "train") if run.history else None
            evals = [r for r in run.history if r["kind"] == "eval"]
            summary = f"step {run.step}/{config.steps}"
            if last:
                summary += f", train loss {last['loss']:.4f}"
            if evals:
                summary += f", val loss {evals[-1]['val_loss']:.4f} (perplexity {evals[-1]['val_ppl']:.2f})"
            print(f"done: {summary}; {world_size} rank(s), strategy {strategy}"
                  + (f"; log and checkpoints in {config.out_dir}" if config.out_dir else ""))
    finally:
        shutdown_distributed(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
