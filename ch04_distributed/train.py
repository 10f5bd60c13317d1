"""Chapter 4's training script: train a GPT on chapter 2's token shards, in one process or under torchrun.

    python ch04_distributed/train.py --data runs/data/shakespeare-gpt2 --out-dir runs/train          # laptop
    python -m torch.distributed.run --nproc-per-node 2 ch04_distributed/train.py --data ... --out-dir ...   # 2 CPU ranks
    torchrun --nproc-per-node 8 ch04_distributed/train.py --preset gpt2-124m-8gpu --data DATA --out-dir OUT
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id JOB \\
        ch04_distributed/train.py --preset gpt2-124m-8gpu --data DATA --out-dir OUT    # on each of 2 nodes
    ... --strategy tp                                   # tensor parallelism over all ranks (notebook 05)
    ... --strategy tp --tp-degree 2                     # 8 ranks: 4 data-parallel replicas x 2 tensor-parallel ranks
    ... --strategy fsdp                                 # FSDP2, every parameter sharded (ZeRO-3, notebook 06)
    ... --resume                                        # continue the run in --out-dir from its latest checkpoint

--preset picks a TrainConfig (shared.training.TRAIN_PRESETS: tiny-cpu, laptop-cpu, gpt2-124m-1gpu,
gpt2-124m-8gpu); every field has a flag that overrides it (--steps, --lr, --micro-batch-size, --compile, ...).
Rank 0 writes OUT/log.jsonl (one JSON record per step and per evaluation) and the checkpoints OUT/ckpt_*.pt with
OUT/latest.json. Every strategy's checkpoint file holds the whole, unsharded model (ch03_model/gpt.py and chapter 5
load it in one process); fsdp also writes each rank's shards of model and optimizer as OUT/ckpt_*.dcp (DCP), which
--resume reads. A rank that dies ends the whole job (torchrun stops the others; the survivors' collectives fail
within --dist-timeout seconds at most), never a hang. The library lives in shared/training.py,
shared/checkpoint.py and shared/parallel/; this file parses arguments, checks them, sets up the ranks, and says
which library pieces each --strategy combines.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel

from shared.batches import read_manifest
from shared.checkpoint import CheckpointError, sharded_folder
from shared.device import pick_device
from shared.files import FileFormatError
from shared.parallel import sharded, tensor
from shared.parallel.data import BucketedDataParallel, NaiveDataParallel
from shared.parallel.runtime import init_distributed, shutdown_distributed
from shared.training import TRAIN_PRESETS, ConfigError, Parallelism, TrainConfig, model_config, train

STRATEGIES = ("single", "ddp", "ddp_naive", "ddp_bucketed", "tp", "fsdp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny-cpu", choices=list(TRAIN_PRESETS),
                   help="starting values of every TrainConfig field (default: tiny-cpu)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out-dir from latest.json (a fresh start if there is none yet)")
    p.add_argument("--strategy", default=None, choices=STRATEGIES,
                   help="single (one process); data parallelism: torch's DistributedDataParallel (ddp, the default "
                        "under torchrun) or notebook 03's from-scratch versions (ddp_naive, ddp_bucketed); tensor "
                        "parallelism (tp, notebook 05); FSDP2, every parameter sharded (fsdp, notebook 06)")
    p.add_argument("--tp-degree", type=int, default=None,
                   help="ranks that split one model, for --strategy tp (default: all of them); the world size must "
                        "be a multiple: the other factor is the number of data-parallel replicas")
    p.add_argument("--bucket-cap-mb", type=float, default=25.0, help="bucket size of --strategy ddp_bucketed")
    p.add_argument("--dist-timeout", type=float, default=300.0,
                   help="seconds a rank waits for the others in a collective before the job fails (default 300)")
    TrainConfig.add_arguments(p.add_argument_group("training config (override the preset)"))
    return p.parse_args(argv)


def check_strategy(strategy: str, tp_degree: int | None, world_size: int) -> int:
    """The combinations that cannot work, in one line each, before anything starts. Returns the number of
    data-parallel ranks (tensor-parallel ranks that split one model count once)."""
    if strategy != "single" and world_size == 1:
        raise ConfigError(f"--strategy {strategy} needs several ranks: launch with torchrun --nproc-per-node N")
    if strategy == "single" and world_size > 1:
        raise ConfigError(f"--strategy single under torchrun with {world_size} ranks would train {world_size} "
                          f"unrelated models: use ddp, ddp_naive, ddp_bucketed, tp or fsdp")
    if tp_degree is not None and strategy != "tp":
        raise ConfigError(f"--tp-degree is the degree of --strategy tp; --strategy {strategy} does not split the "
                          f"model's matrices")
    if strategy != "tp":
        return world_size
    tp = world_size if tp_degree is None else tp_degree
    if isinstance(tp, bool) or tp < 1 or world_size % tp:
        raise ConfigError(f"--tp-degree {tp} does not divide the {world_size} ranks: the world size must be "
                          f"data-parallel replicas x tensor-parallel degree")
    return world_size // tp


def preflight(args, world_size: int):
    """Everything that can be checked before any process group starts: the config, the strategy, the data and
    the output folder. Returns (config, strategy, tp degree or None); raises ValueError with one line."""
    strategy = args.strategy or ("ddp" if world_size > 1 else "single")
    data_world = check_strategy(strategy, args.tp_degree, world_size)
    config = TrainConfig.from_args(args, args.preset, data_world)
    tp = world_size // data_world if strategy == "tp" else None
    if tp is not None:
        try:                                   # every rank needs whole heads
            tensor.check_tensor_parallel_degree(model_config(config, None), tp)
        except ValueError as e:
            raise ConfigError(f"--strategy tp: {e}") from None
    if world_size > 1 and pick_device(config.device).type == "mps":
        raise ConfigError("torch.distributed has no backend for MPS tensors: run several ranks with --device cpu "
                          "(gloo) or on CUDA GPUs (NCCL)")
    if config.data is None:
        raise ConfigError("--data is required: a folder written by ch02_data/prepare_data.py")
    read_manifest(config.data)
    if config.out_dir and (Path(config.out_dir) / "latest.json").exists() and not args.resume:
        raise ConfigError(f"--out-dir {config.out_dir} already holds a run: add --resume to continue it, or "
                          f"choose another --out-dir")
    return config, strategy, tp


def make_wrap(strategy: str, ctx, bucket_cap_mb: float, group=None):
    """model -> its data-parallel wrapper for this strategy (None: train the bare model). group: the
    data-parallel ranks (default: all of them)."""
    group = group or ctx.group
    if strategy == "single":
        return None
    if strategy == "ddp":
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return lambda model: DistributedDataParallel(model, device_ids=ids, process_group=group)
    if strategy == "ddp_naive":
        return lambda model: NaiveDataParallel(model, group)
    return lambda model: BucketedDataParallel(model, group, bucket_cap_mb=bucket_cap_mb)


def make_parallelism(strategy: str, ctx, args, tp: int | None):
    """The shared.training.Parallelism hooks of a strategy."""
    if strategy == "tp":
        return TensorParallel(ctx, tp)
    if strategy == "fsdp":
        return FullyShardedParallel(ctx)
    return Parallelism.replicated(ctx, make_wrap(strategy, ctx, args.bucket_cap_mb), strategy)


class TensorParallel(Parallelism):
    """--strategy tp: every block split across `tp` ranks (notebook 05: attention by heads, the MLP column then
    row), and with world = dp x tp ranks, DDP over the dp replicas as well. Ranks r*tp .. r*tp+tp-1 split one model
    (on a GPU node: neighbours, on the fast links) and read the same batches.

    Checkpoints hold the whole model and the whole optimizer state, in the layout of a one-process run: each split
    tensor (a weight and Adam's two moments of it) is all-gathered from its slices, and a resume slices them again."""

    def __init__(self, ctx, tp: int):
        dp = ctx.world_size // tp
        mesh = init_device_mesh(ctx.device.type, (dp, tp), mesh_dim_names=("dp", "tp"))
        dp_group = mesh.get_group("dp") if dp > 1 else None
        wrap = make_wrap("ddp", ctx, 0, dp_group) if dp > 1 else None
        super().__init__("tp", wrap, mesh.get_local_rank("dp"), dp, dp_group)
        self.tp, self.tp_group = tp, mesh.get_group("tp")

    def parallelize(self, model):
        return tensor.apply_tensor_parallel(model, self.tp_group)

    def clip_grad_norm_(self, model, max_norm):
        return tensor.clip_grad_norm_(model, max_norm, self.tp_group)

    def checkpoint_state(self, model, optimizer, folder):
        state = optimizer.state_dict()        # shares tensors with the optimizer: replace them, never edit
        split = self._split_parameters(model, optimizer)
        for i, (layer, dim) in split.items():
            state["state"][i] = {k: tensor.all_gather_shards(v, dim, layer.group, layer.chunks) if v.dim() else v
                                 for k, v in state["state"][i].items()}
        return tensor.gather_full_state_dict(model), state

    def restore_state(self, payload, model, optimizer):
        tensor.load_full_state_dict(model, payload["model"])
        state = payload["optimizer"]
        for i, (layer, dim) in self._split_parameters(model, optimizer).items():
            state["state"][i] = {k: tensor.shard(v, dim, layer.rank, layer.world_size, layer.chunks) if v.dim() else v
                                 for k, v in state["state"][i].items()}
        optimizer.load_state_dict(state)

    @staticmethod
    def _split_parameters(model, optimizer) -> dict:
        """{index of a parameter in the optimizer's state dict: (its tensor-parallel layer, the split dimension)}
        for the parameters that are split. apply_tensor_parallel keeps the parameters' order, so the indices are
        those of the unsplit model's optimizer."""
        split = {id(getattr(layer, name)): (layer, dim) for layer in model.modules()
                 if isinstance(layer, tensor.TensorParallelLinear)
                 for name, dim in layer.shard_dims.items() if dim is not None and getattr(layer, name) is not None}
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return {i: split[id(p)] for i, p in enumerate(params) if id(p) in split}


class AccumulateWithoutSync(torch.nn.Module):
    """An FSDP2 model (possibly compiled) with DDP's `no_sync()`, which shared.training.accumulate_gradients uses
    for every micro-batch but the last: FSDP2 calls it set_requires_gradient_sync."""

    def __init__(self, model: torch.nn.Module, root: torch.nn.Module):
        super().__init__()
        self.model, self.root = model, [root]          # a list: the root is already registered inside `model`

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        self.root[0].set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.root[0].set_requires_gradient_sync(True)


class FullyShardedParallel(Parallelism):
    """--strategy fsdp: FSDP2 (notebook 06's shard_fsdp): every block's parameters, gradients and Adam moments
    sharded over all ranks, which read their own shares of the data as in DDP.

    Gradient accumulation: the reduce-scatter runs after the last micro-batch only (like DDP's no_sync), so the
    blocks keep whole gradients between micro-batches. Checkpoints: the file holds the whole model (gathered:
    chapter 5 loads it in one process) and no optimizer state; model and optimizer are also written with DCP, each
    rank its shards, to ckpt_*.dcp, which a resume reads."""
    checkpoint_kind = "dcp"

    def __init__(self, ctx):
        super().__init__("fsdp", lambda model: AccumulateWithoutSync(model, self.root), ctx.rank, ctx.world_size,
                         ctx.group)
        self.root = None

    def parallelize(self, model):
        self.root = sharded.shard_fsdp(model)
        return self.root

    def clip_grad_norm_(self, model, max_norm):
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)   # DTensors: the global norm
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def checkpoint_state(self, model, optimizer, folder):
        if self.data_rank == 0:         # left by a run killed after writing them, before pointing latest.json there
            for stale in (folder, folder.with_name(folder.name + ".partial")):
                shutil.rmtree(stale, ignore_errors=True)
        dist.barrier(group=self.data_group)
        sharded.save_sharded_checkpoint(folder, model, optimizer)
        return sharded.full_model_state_dict(model), None

    def restore_state(self, payload, model, optimizer):
        try:
            sharded.load_sharded_checkpoint(sharded_folder(Path(payload["path"])), model, optimizer)
        except FileNotFoundError as e:
            raise CheckpointError(str(e)) from None


@record
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        config, strategy, tp = preflight(args, world_size)
    except ValueError as e:                  # ConfigError, ShardError, CheckpointError: one line, no traceback
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        return 2

    try:
        ctx = init_distributed(config.device, timeout_s=args.dist_timeout)
    except ValueError as e:                  # e.g. --device cuda on a machine without CUDA
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        parallelism = make_parallelism(strategy, ctx, args, tp)
        try:
            run = train(config, ctx=ctx, parallelism=parallelism, resume=args.resume)
        except FileFormatError as e:         # --resume from a checkpoint of another model, run or strategy
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
            layout = f" (tensor-parallel degree {tp}, {world_size // tp} data-parallel)" if tp else ""
            print(f"done: {summary}; {world_size} rank(s), strategy {strategy}{layout}"
                  + (f"; log and checkpoints in {config.out_dir}" if config.out_dir else ""))
    finally:
        shutdown_distributed(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
